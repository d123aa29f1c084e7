"""Restore drills: prove the newest backup restores, and measure how long it takes.

``ptool-ops drill run`` restores the newest logical backup into a scratch database (its
objects checksummed, then restored, the booking invariants run and every table's row count
checked against the manifest; the scratch database dropped) and -- where the environment
archives its WAL -- restores the newest point the archive holds into a scratch copy beside
live (invariants run, the copy dropped). Each part's RTO is the time to a checked copy; the
RPO is the age of the newest archived WAL at the start.

The evidence is written to the environment's repository (``drills/<id>.json``), where every
operator and CI run sees it and ``status`` finds the newest successful drill, and audited as
``drill.run``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from ptool_ops import tracing
from ptool_ops.audit import audited
from ptool_ops.errors import PtoolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ptool_ops.environment import Environment
    from ptool_ops.repo.repository import Repository

PREFIX = "drills"

log = logging.getLogger(__name__)


class _Part(BaseModel):
    """What the history's readers (``status``, ``drill list``, ``report``) use of a part."""

    model_config = ConfigDict(extra="allow", strict=True)
    kind: str
    ok: bool
    rto_s: float | None = None


class _Record(BaseModel):
    """... and of a record."""

    model_config = ConfigDict(extra="allow")
    id: str
    started_at: AwareDatetime
    ok: bool
    rpo_s: float | None = None
    parts: list[_Part] = []


@dataclass
class DrillPart:
    kind: str  # logical | point-in-time
    ok: bool
    rto_s: float | None = None
    source: str | None = None  # the backup id / the restore target
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DrillResult:
    id: str
    started_at: str
    environment: str
    parts: list[DrillPart] = field(default_factory=list)
    rpo_s: float | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.parts) and all(p.ok for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ok": self.ok,
            "started_at": self.started_at,
            "environment": self.environment,
            "rpo_s": self.rpo_s,
            "parts": [vars(p) for p in self.parts],
            "skipped": self.skipped,
        }


@tracing.span("logical")
def _logical(env: Environment, progress: Callable[[str], None]) -> DrillPart:
    from ptool_ops.backup.verify import verify

    progress("logical: restoring the newest backup into a scratch database")
    clock = time.monotonic()
    try:
        checked = verify(env, "latest", restore=True)
    except PtoolError as err:
        return DrillPart("logical", False, problems=[err.message.rstrip(".")])
    rto = round(time.monotonic() - clock, 3)
    restored = checked.restore or {}
    return DrillPart(
        "logical",
        checked.ok,
        rto,
        checked.id,
        list(checked.problems),
        {
            "scratch_database": restored.get("scratch_database"),
            "invariants_ok": (restored.get("invariants") or {}).get("ok"),
            "row_count_mismatches": restored.get("row_count_mismatches", []),
        },
    )


@tracing.span("point-in-time")
def _point_in_time(
    env: Environment, result: DrillResult, progress: Callable[[str], None]
) -> DrillPart | None:
    """The newest archived moment restored beside live; None when there is nothing to
    drill here (said in ``result.skipped``)."""
    from ptool_ops.pitr import restore, window
    from ptool_ops.pitr.target import Target, parse_lsn

    if env.kind == "neon":
        result.skipped.append("point-in-time: Neon restores through branches, not an archive")
        return None
    try:
        found = window.window(env.repository())
    except PtoolError as err:
        return DrillPart("point-in-time", False, problems=[err.message.rstrip(".")])
    if found.base_backups == 0:
        result.skipped.append("point-in-time: the repository holds no base backup")
        return None
    result.rpo_s = found.newest_wal_age_s
    current = found.current
    if current is None or current.newest_archived_at is None:
        return DrillPart(
            "point-in-time", False, problems=["the current timeline has no archived WAL"]
        )
    # the newest moment the archive surely holds: just before its newest segment was stored,
    # and never before the oldest base backup's end (a restore would refuse it)
    newest_at = datetime.fromisoformat(current.newest_archived_at)
    moment = newest_at - timedelta(seconds=1)
    target = Target("time", time=moment.astimezone(UTC))
    if current.earliest_time is not None and current.earliest_lsn is not None:
        floor = datetime.fromisoformat(current.earliest_time) + timedelta(milliseconds=1)
        if floor >= newest_at:
            # nothing was archived after that backup ended (its last segment is archived
            # before it ends): its end is the newest point the archive proves
            target = Target("lsn", lsn=parse_lsn(current.earliest_lsn))
        elif floor > moment:
            target = Target("time", time=floor.astimezone(UTC))
    progress(f"point-in-time: restoring {target.describe()} beside live")
    from ptool_ops.backup.listing import new_id

    restore_id = new_id()
    problems: list[str] = []
    clock = time.monotonic()
    restored = None
    try:
        restored = restore.restore(env, target, compare_live=False, restore_id=restore_id)
    except PtoolError as err:
        problems.append(err.message.rstrip("."))
    rto = round(time.monotonic() - clock, 3) if restored is not None else None
    if restored is not None and not restored.ok:
        problems.append("invariant violation(s) in the restored copy")
    # the scratch copy goes, also when the restore failed after making it (a copy that
    # stopped short, or one still running that missed its target)
    dropped: bool | None = None
    if (restore.restores_dir(env) / restore_id).exists():
        try:
            restore.drop(env, restore_id)
            dropped = True
        except PtoolError as err:
            dropped = False
            problems.append(f"the scratch copy {restore_id} could not be dropped: {err.message}")
    return DrillPart(
        "point-in-time",
        not problems,
        rto,
        target.describe(),
        problems,
        {
            "restore_id": restore_id,
            "elapsed_s": restored.elapsed_s if restored is not None else None,
            "dropped": dropped,
        },
    )


def run(
    env: Environment, *, pitr: bool = True, progress: Callable[[str], None] | None = None
) -> DrillResult:
    """Run the drill, record its evidence, and return it (a failed drill is a result, not
    a raise: the evidence of a failure matters as much)."""
    from ptool_ops.backup.listing import new_id

    say = progress or (lambda line: None)
    result = DrillResult(new_id(), datetime.now(UTC).isoformat(timespec="seconds"), env.name)
    with audited(
        env, "drill.run", {"drill_id": result.id}, done=lambda: f"drill {result.id} ran"
    ) as entry:
        result.parts.append(_logical(env, say))
        if pitr:
            part = _point_in_time(env, result, say)
            if part is not None:
                result.parts.append(part)
        else:
            result.skipped.append("point-in-time: --no-pitr")
        with tracing.span("evidence"):
            env.repository().put_json(f"{PREFIX}/{result.id}.json", result.to_dict())
        entry.details.update(
            ok=result.ok,
            rpo_s=result.rpo_s,
            rto_s={p.kind: p.rto_s for p in result.parts},
            problems=[q for p in result.parts for q in p.problems][:5],
        )
    return result


def rto_text(doc: dict[str, Any]) -> str:
    """A recorded drill's RTO per part, for people: ``logical 2.1 s, point-in-time 5.0 s``."""
    return ", ".join(
        f"{p['kind']} {p['rto_s']:.1f} s" for p in doc.get("parts", []) if p.get("rto_s")
    )


def _read(repo: Repository, key: str) -> dict[str, Any] | None:
    """One drill record, or None (with a warning naming it) when it is not one."""
    doc = repo.get_json(key)
    try:
        _Record.model_validate(doc)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the record"
        log.warning(
            "%s/%s is not a drill record (%s: %s); it is left out",
            repo.url,
            key,
            where,
            first["msg"].lower(),
        )
        return None
    return doc


def _keys(repo: Repository) -> list[str]:
    return sorted(i.key for i in repo.storage.list(f"{PREFIX}/") if i.key.endswith(".json"))


def history(repo: Repository) -> list[dict[str, Any]]:
    """Every recorded drill, oldest first. A record that is not one -- unreadable JSON, or
    a hand-edited one lacking what the readers of the history use -- is left out with a
    warning naming it, never a traceback."""
    found = [doc for key in _keys(repo) if (doc := _read(repo, key)) is not None]
    return sorted(found, key=lambda d: datetime.fromisoformat(str(d["started_at"])))


def newest_passed(repo: Repository) -> tuple[dict[str, Any] | None, int]:
    """The newest drill that passed, and how many failed ones were read before it: records
    are read newest first by name (a drill's id starts with the time it ran) and the
    reading stops at the first that passed, so ``status`` does not read a year of nightly
    evidence on every run."""
    failed = 0
    for key in reversed(_keys(repo)):
        doc = _read(repo, key)
        if doc is None:
            continue
        if doc["ok"]:
            return doc, failed
        failed += 1
    return None, failed
