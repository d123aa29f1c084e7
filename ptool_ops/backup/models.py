"""What a logical backup records about itself, and what the operations return."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ptool_ops.repo.manifest import Manifest

KIND = "logical"
PREFIX = "backups"


def backup_dir(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}"


def manifest_key(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}/manifest.json"


def verified_key(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}/verified.json"


def lease_key(backup_id: str) -> str:
    """The lease a running 'backup create' holds (see :mod:`ptool_ops.repo.lease`)."""
    return f"{PREFIX}/{backup_id}/lease.json"


#: the prune lock: one 'backup prune' at a time per repository
PRUNE_LOCK = "locks/prune.json"


class TableInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")  # optional fields may be added

    schema_name: str
    name: str
    row_estimate: int
    rows: int | None = None  # exact, counted in the dump's snapshot
    bytes: int = 0  # pg_table_size (heap + TOAST) when the backup started


class BackupManifest(Manifest):
    kind: str = KIND
    database: str
    server_version: str
    server_version_num: int
    pg_dump_version: str
    dump_format: str = "custom"
    schema_version: str | None
    start_lsn: str | None
    size_bytes: int  # pg_database_size when the backup started
    tables: list[TableInfo]
    #: data objects holding one table's rows each (object key -> "schema.table"); the
    #: ``data`` object holds the schema and every other table
    table_objects: dict[str, str] = Field(default_factory=dict)


#: what 'backup list' says of a backup: readable and complete, written by a newer
#: ptool-ops (a higher format_version), or holding a manifest that cannot be read
Status = Literal["complete", "newer-format", "unreadable"]


@dataclass
class BackupSummary:
    """One line of 'backup list'. A backup whose manifest this ptool-ops cannot read is
    listed too (``status`` says why, ``problem`` in a sentence; what could not be read is
    None): it is never silently left out."""

    id: str
    started_at: datetime | None
    finished_at: datetime | None
    database: str | None
    schema_version: str | None
    stored_bytes: int | None
    raw_bytes: int | None
    encrypted: bool | None
    verified_at: str | None
    status: Status = "complete"
    problem: str | None = None

    @classmethod
    def of(cls, manifest: BackupManifest, verified_at: str | None) -> BackupSummary:
        return cls(
            id=manifest.id,
            started_at=manifest.started_at,
            finished_at=manifest.finished_at,
            database=manifest.database,
            schema_version=manifest.schema_version,
            stored_bytes=manifest.stored_bytes,
            raw_bytes=sum(o.raw_size for o in manifest.objects),
            encrypted=manifest.encrypted,
            verified_at=verified_at,
        )


@dataclass
class CreateResult:
    id: str
    repository: str
    database: str
    raw_bytes: int
    stored_bytes: int
    elapsed_s: float
    encrypted: bool
    pg_dump: str
    manifest: str

    @property
    def rate_mb_s(self) -> float:
        return round(self.raw_bytes / 2**20 / self.elapsed_s, 1) if self.elapsed_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "rate_mb_s": self.rate_mb_s}


@dataclass
class ObjectCheck:
    key: str
    ok: bool
    size: int
    error: str | None = None


@dataclass
class VerifyResult:
    id: str
    ok: bool
    objects: list[ObjectCheck]
    restore: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class Step:
    name: str
    description: str
    status: Literal["planned", "done", "failed", "skipped"] = "planned"
    detail: str | None = None
    elapsed_s: float | None = None


@dataclass
class RestoreResult:
    id: str
    target_database: str
    in_place: bool
    dry_run: bool
    steps: list[Step]
    invariants: dict[str, Any] | None = None
    row_counts_match: bool | None = None
    row_count_mismatches: list[str] = field(default_factory=list)
    previous_database: str | None = None
    elapsed_s: float = 0.0
    ok: bool = True
    #: what the restore did beside the plan (a leftover dropped, settings carried over,
    #: maintenance mode switched or why not)
    notes: list[str] = field(default_factory=list)


@dataclass
class PruneDecision:
    id: str
    started_at: datetime
    keep: bool
    reasons: list[str]


@dataclass
class PruneResult:
    dry_run: bool
    kept: list[PruneDecision]
    deleted: list[PruneDecision]
    orphans: list[str]
    partial_uploads: list[str]
    #: backups being written right now (a live lease): id -> who holds it; never touched
    running: dict[str, str] = field(default_factory=dict)
    #: unreadable backups deleted because the operator named them (--forget-unreadable)
    forgotten: list[str] = field(default_factory=list)
    #: leftovers younger than the orphan age, left for a later prune
    young: list[str] = field(default_factory=list)
    #: the abandoned prune lock this run took over (who held it), if any
    took_over_lock: str | None = None
