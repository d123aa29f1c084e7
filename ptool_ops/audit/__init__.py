"""The audit trail: every mutating command's events, in the environment's repository.

Each command appends a ``started`` event (who, environment, command line with secrets
redacted, action, details) before its work and an ``ok`` or ``failed`` event after it (the
error's one sentence, the ids it produced), paired by ``op``. Events form one hash chain per
environment in its repository (:mod:`ptool_ops.audit.trail`), shared by every operator and
CI run; the newest hash is anchored in the environment's database
(:mod:`ptool_ops.audit.anchor`), so :func:`verify` finds an altered event, a missing one,
a missing tail and a chain rewritten with fresh hashes.

Usage in library code (the environment holds the trail: ``env.audit(...)`` is the same)::

    with audit.record(env.audit_trail, "backup.create", {"backup_id": ...}) as entry:
        ...                      # do the work
        entry.details["bytes"] = n

A command records its work with :func:`audited`, which also says what happens when an event
cannot be written: before the work, nothing is done (:class:`AuditWriteFailed`, exit 8);
after the work succeeded, the work is done and must not be reported as failed -- but CI
must learn that the record is missing: :class:`AuditNotRecorded` (exit 9) says both, with
``done()``, the state the work left. If the work failed and its record could not be
written either, the work's own error is raised, with a note::

    with audit.audited(env, "migrate.up", {...}, done=lambda: "migrate up applied 0006"):
        ...
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ptool_ops.audit.trail import GENESIS, AuditWriteFailed, Trail, actor
from ptool_ops.errors import ManualActionRequired, PtoolError

__all__ = [
    "GENESIS",
    "AuditNotRecorded",
    "AuditWriteFailed",
    "Audits",
    "Entry",
    "Trail",
    "Verification",
    "actor",
    "audited",
    "note",
    "record",
    "verify",
]


@dataclass
class Entry:
    action: str
    details: dict[str, Any] = field(default_factory=dict)
    op: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started: bool = False


@contextmanager
def record(trail: Trail, action: str, details: dict[str, Any] | None = None) -> Iterator[Entry]:
    """``started`` now; ``ok`` or ``failed`` when the block ends, then anchored."""
    entry = Entry(action, dict(details or {}))
    trail.append(action, "started", dict(entry.details), op=entry.op)
    try:
        yield entry
    except PtoolError as err:
        entry.details["error"] = err.message
        _finish(trail, entry, "failed", err)
        raise
    except BaseException as err:
        entry.details["error"] = type(err).__name__
        _finish(trail, entry, "failed", err)
        raise
    _finish(trail, entry, "ok")


def _finish(trail: Trail, entry: Entry, outcome: str, error: BaseException | None = None) -> None:
    try:
        event = trail.append(entry.action, outcome, entry.details, op=entry.op)
    except AuditWriteFailed as err:
        err.work_error = error  # the work's own failure, which the caller reports
        raise
    if trail.anchor is not None:
        # after a failure its own error is the one sentence to read: not anchoring is a detail
        trail.anchor.record(int(event["seq"]), str(event["hash"]), quiet=error is not None)


def note(trail: Trail, action: str, outcome: str, message: str) -> dict[str, Any]:
    """An event recorded by hand (``audit note``): an operation whose own event could not
    be written, or what an investigation found; anchored like any finished one."""
    event = trail.append(action, outcome, {"note": message, "by_hand": True})
    if trail.anchor is not None:
        trail.anchor.record(int(event["seq"]), str(event["hash"]))
    return event


class AuditNotRecorded(ManualActionRequired):
    """The operation succeeded; its audit record could not be written."""

    kind = "audit_not_recorded"


class Audits(Protocol):
    """What :func:`audited` needs of the environment: its trail."""

    @property
    def audit_trail(self) -> Trail: ...


@contextmanager
def audited(
    env: Audits, action: str, details: dict[str, Any], *, done: Callable[[], str]
) -> Iterator[Entry]:
    """:func:`record` ``action`` in the environment's trail; ``done()`` describes what
    succeeded (one clause), for the error when the record cannot be written after it."""
    trail = env.audit_trail
    succeeded = False
    entry: Entry | None = None
    try:
        with record(trail, action, details) as entry:
            yield entry
            succeeded = True
    except AuditWriteFailed as err:
        if entry is None:  # the ``started`` event: nothing was done
            err.message = f"{err.message.rstrip('.')}; nothing was done."
            err.args = (err.message,)
            raise
        if succeeded:
            raise AuditNotRecorded(
                f"{done()}, but its audit record could not be written to {err.location}"
                f" ({err.reason}).",
                hint=f"The operation itself succeeded. Fix the repository, then record it by"
                f" hand: ptool-ops audit note --action {action} 'WHAT WAS DONE'.",
            ) from None
        original = err.work_error
        if isinstance(original, PtoolError):
            # the work's own error (its class, exit code, hint and details), with a note
            original.message = (
                f"{original.message.rstrip('.')} (and its audit record could not be written "
                f"to {err.location}: {err.reason})."
            )
            original.args = (original.message,)
            raise original from None
        if original is not None:
            raise original from None
        raise


# --- verification ----------------------------------------------------------------------


@dataclass
class Verification:
    """The chain as stored, and as its anchor remembers it."""

    location: str
    events: int
    ok: bool
    newest: int = 0
    first_bad: int | None = None
    problem: str | None = None  # altered | unlinked | missing | unreadable | tail | rewritten
    reason: str | None = None
    anchored: int | None = None  # the newest anchored seq
    anchored_at: str | None = None
    #: why the chain was not compared with an anchor (no database, no table, unreachable)
    unanchored: str | None = None
    anchor_error: PtoolError | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if k != "anchor_error" and (v is not None or k in {"first_bad", "problem"})
        }


def verify(trail: Trail) -> Verification:
    """Walk the stored chain, then compare it with every anchor row; the first problem
    found is named (an altered or missing event before the anchor's view of it)."""
    from ptool_ops.audit.anchor import NoAnchorTable

    walk = trail.walk()
    result = Verification(
        trail.location,
        walk.events,
        walk.problem is None,
        newest=walk.last_seq,
        first_bad=walk.first_bad,
        problem=walk.problem,
        reason=walk.reason,
    )
    if trail.anchor is None:
        result.unanchored = "the environment has no database to anchor the trail in"
        return result
    try:
        rows = trail.anchor.read()
    except NoAnchorTable as err:
        result.unanchored = err.message
        return result
    except PtoolError as err:
        result.unanchored = err.message
        result.anchor_error = err
        return result
    if rows:
        result.anchored, result.anchored_at = rows[-1].seq, rows[-1].anchored_at
    if not result.ok:
        return result
    for row in rows:
        if row.seq <= walk.last_seq and walk.hashes.get(row.seq) != row.hash:
            result.ok, result.problem, result.first_bad = False, "rewritten", row.seq
            result.reason = (
                f"the chain was rewritten: event {row.seq} is not the one the database"
                f" anchored at {row.anchored_at}"
            )
            return result
    if rows and rows[-1].seq > walk.last_seq:
        row = rows[-1]
        result.ok, result.problem, result.first_bad = False, "tail", walk.last_seq + 1
        result.reason = (
            f"the newest events are missing: the database anchored event {row.seq}"
            f" ({row.anchored_at}, by {row.anchored_by}) but the trail ends at event"
            f" {walk.last_seq}"
        )
        return result
    if walk.head_hint is not None and walk.head_hint > walk.last_seq:
        result.ok, result.problem, result.first_bad = False, "tail", walk.last_seq + 1
        result.reason = (
            f"the newest events are missing: the trail's head names event {walk.head_hint}"
            f" but the trail ends at event {walk.last_seq}"
        )
    return result
