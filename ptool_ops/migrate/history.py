"""The migration history: what was applied, with which scripts, and how the files compare.

``ptool_ops.migration_history`` (schema ``ptool_ops``, owned by the schema owner role of
the privilege model): version, name, checksums of the up, down and verify scripts, applied
at/by, duration, outcome, the backup point taken before the run, the run's id and an
operator's note (``repair``). ``outcome`` is ``applied``, ``reverted`` (rolled back by
``down``) or ``forgotten`` (``repair --forget``); only ``applied`` rows count. A
``no-transaction`` migration commits ``running`` (``reverting`` for its down) before its first
statement: a run killed half-way leaves that row, the migration is **interrupted**, and
``up``/``down`` refuse until ``repair`` records what the operator found.

Checksums are over normalised text (:func:`ptool_ops.migrate.files.checksum`). A migration
without a verify script has the verify checksum ``none``. Rows written before the runner
recorded down/verify checksums have none; those are not compared until ``repair`` records
them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ptool_ops.migrate.files import MigrationFiles, checksum

__all__ = [
    "HISTORY_TABLE",
    "NO_VERIFY",
    "SCHEMA_VERSION_SQL",
    "FileChecksums",
    "HistoryRow",
    "MigrationState",
    "MigrationStatus",
    "StatusReport",
    "ensure_history",
    "file_checksums",
    "history_exists",
    "read_history",
    "schema_version",
    "status",
]

HISTORY_SCHEMA = "ptool_ops"
HISTORY_TABLE = "ptool_ops.migration_history"
#: the schema version: the highest version applied (a reverted one does not count). The
#: application role may run it too (migration 0005), for the API's ``/version``.
SCHEMA_VERSION_SQL = (
    "SELECT max(version) FROM ptool_ops.migration_history WHERE outcome = 'applied'"
)

_HISTORY_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {HISTORY_SCHEMA};
CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text        NOT NULL DEFAULT current_user,
    duration_ms integer,
    outcome     text        NOT NULL
);
"""

NO_VERIFY = "none"

_EXTEND = [
    "ADD COLUMN IF NOT EXISTS down_checksum text",
    "ADD COLUMN IF NOT EXISTS verify_checksum text",
    "ADD COLUMN IF NOT EXISTS backup_point text",
    "ADD COLUMN IF NOT EXISTS run_id text",
    "ADD COLUMN IF NOT EXISTS note text",
    "ADD COLUMN IF NOT EXISTS transactional boolean",
]

_COLUMNS = (
    "version, name, checksum, down_checksum, verify_checksum, applied_at, applied_by,"
    " duration_ms, outcome, backup_point, run_id, note"
)


#: from the catalog (readable by every role, unlike to_regclass, which needs USAGE on the
#: schema)
_HISTORY_EXISTS = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
    " ON n.oid = c.relnamespace WHERE n.nspname = 'ptool_ops' AND c.relname = 'migration_history')"
)
_EXTENDED = (
    "SELECT count(*) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c"
    " ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'ptool_ops' AND c.relname = 'migration_history'"
    " AND a.attname = 'transactional' AND NOT a.attisdropped"
)


def history_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(_HISTORY_EXISTS).fetchone()
    return bool(row and row[0])


def _extended(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(_EXTENDED).fetchone()
    return bool(row and row[0])


def ensure_history(conn: psycopg.Connection[Any]) -> None:
    """Create the history table if missing and add the runner's columns (idempotent; only
    takes a lock on the table when something is missing)."""
    with conn.transaction():
        if history_exists(conn) and _extended(conn):
            return
        conn.execute(_HISTORY_DDL)
        conn.execute(
            sql.SQL("ALTER TABLE {} {}").format(
                sql.SQL(HISTORY_TABLE), sql.SQL(", ").join(sql.SQL(c) for c in _EXTEND)
            )
        )


def schema_version(conn: psycopg.Connection[Any]) -> str | None:
    """The highest applied version, or None if nothing is applied or there is no
    history table."""
    if not history_exists(conn):
        return None
    row = conn.execute(SCHEMA_VERSION_SQL).fetchone()
    return None if row is None or row[0] is None else str(row[0])


@dataclass(frozen=True)
class FileChecksums:
    up: str
    down: str
    verify: str


def file_checksums(migration: MigrationFiles) -> FileChecksums:
    return FileChecksums(
        up=checksum(migration.up.read_text(encoding="utf-8")),
        down=checksum(migration.down.read_text(encoding="utf-8")),
        verify=(
            checksum(migration.verify.read_text(encoding="utf-8"))
            if migration.verify is not None
            else NO_VERIFY
        ),
    )


@dataclass(frozen=True)
class HistoryRow:
    version: str
    name: str
    checksum: str
    down_checksum: str | None
    verify_checksum: str | None
    applied_at: datetime
    applied_by: str
    duration_ms: int | None
    outcome: str
    backup_point: str | None
    run_id: str | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "applied_at": self.applied_at.isoformat()}


def read_history(conn: psycopg.Connection[Any]) -> dict[str, HistoryRow]:
    """Every history row by version (empty without a history table). Works on a table the
    runner has not extended yet (the new columns read as NULL)."""
    if not history_exists(conn):
        return {}
    if _extended(conn):
        query = sql.SQL("SELECT {} FROM {} ORDER BY version").format(
            sql.SQL(_COLUMNS), sql.SQL(HISTORY_TABLE)
        )
    else:
        query = sql.SQL(
            "SELECT version, name, checksum, NULL, NULL, applied_at, applied_by, duration_ms,"
            " outcome, NULL, NULL, NULL FROM {} ORDER BY version"
        ).format(sql.SQL(HISTORY_TABLE))
    rows = conn.execute(query).fetchall()
    return {str(row[0]): HistoryRow(*row) for row in rows}


class MigrationState(enum.StrEnum):
    applied = "applied"
    pending = "pending"
    drifted = "drifted"  # applied, but a script changed since
    missing = "missing"  # applied, but its files are gone
    interrupted = "interrupted"  # a no-transaction run (up or down) stopped half-way


#: history outcomes of a no-transaction migration whose statements are running (or were,
#: when its run was killed): up and down respectively
RUNNING = "running"
REVERTING = "reverting"


@dataclass
class MigrationStatus:
    version: str
    name: str
    state: MigrationState
    migration: MigrationFiles | None = field(repr=False, default=None)
    row: HistoryRow | None = None
    drift: list[str] = field(default_factory=list)  # which scripts changed

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "state": self.state.value,
            "drift": self.drift,
            "applied_at": self.row.applied_at.isoformat() if self.row else None,
            "applied_by": self.row.applied_by if self.row else None,
            "duration_ms": self.row.duration_ms if self.row else None,
            "outcome": self.row.outcome if self.row else None,
            "backup_point": self.row.backup_point if self.row else None,
            "note": self.row.note if self.row else None,
        }


@dataclass
class StatusReport:
    directory: str
    migrations: list[MigrationStatus]

    def of(self, state: MigrationState) -> list[MigrationStatus]:
        return [m for m in self.migrations if m.state is state]

    @property
    def pending(self) -> list[MigrationStatus]:
        return self.of(MigrationState.pending)

    @property
    def problems(self) -> list[MigrationStatus]:
        return [
            m
            for m in self.migrations
            if m.state
            in (MigrationState.drifted, MigrationState.missing, MigrationState.interrupted)
        ]

    @property
    def current(self) -> str | None:
        applied = [
            m.version
            for m in self.migrations
            if m.state in (MigrationState.applied, MigrationState.drifted, MigrationState.missing)
        ]
        return max(applied) if applied else None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "ok": self.ok,
            "current": self.current,
            "counts": {s.value: len(self.of(s)) for s in MigrationState},
            "migrations": [m.to_dict() for m in self.migrations],
        }


def drift_of(row: HistoryRow, sums: FileChecksums) -> list[str]:
    """Which scripts differ from what was applied (only recorded checksums count)."""
    changed = []
    if row.checksum != sums.up:
        changed.append("up")
    if row.down_checksum is not None and row.down_checksum != sums.down:
        changed.append("down")
    if row.verify_checksum is not None and row.verify_checksum != sums.verify:
        changed.append("verify")
    return changed


def status(
    migrations: list[MigrationFiles], history: dict[str, HistoryRow], directory: str
) -> StatusReport:
    """Compare the files with the history: applied, pending, drifted, missing."""
    out: list[MigrationStatus] = []
    by_version = {m.version: m for m in migrations}
    for version in sorted(by_version.keys() | history.keys()):
        migration = by_version.get(version)
        row = history.get(version)
        active = row is not None and row.outcome == "applied"
        if row is not None and row.outcome in (RUNNING, REVERTING):
            name = migration.name if migration else row.name
            out.append(MigrationStatus(version, name, MigrationState.interrupted, migration, row))
            continue
        if migration is None:
            assert row is not None
            if active:
                out.append(MigrationStatus(version, row.name, MigrationState.missing, None, row))
            continue
        if not active:
            out.append(
                MigrationStatus(version, migration.name, MigrationState.pending, migration, row)
            )
            continue
        assert row is not None
        drift = drift_of(row, file_checksums(migration))
        if row.name != migration.name:
            drift.insert(0, "name")
        state = MigrationState.drifted if drift else MigrationState.applied
        out.append(MigrationStatus(version, migration.name, state, migration, row, drift))
    return StatusReport(directory, out)
