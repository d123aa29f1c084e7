"""The audit trail: an append-only, hash-chained record of every mutating command.

One JSON object per line in ``<audit_dir>/<environment>.jsonl``. Each record carries the
SHA-256 of the record before it (``prev``) and of itself (``hash``, over its canonical JSON
without ``hash``), so an edited, removed or reordered line breaks the chain and
:func:`verify` names the first bad line. Appends take an exclusive ``flock`` so two
operators on one machine never interleave.

Usage in library code (the environment holds the sink: ``env.audit(...)`` is the same)::

    with audit.record(env.audit_sink, "backup.create", {"backup_id": ...}) as entry:
        ...                      # do the work
        entry.details["bytes"] = n

The record is written when the block ends, with ``outcome`` ``ok`` or ``failed`` (and the
error's one-sentence message), so a failure is recorded as faithfully as a success.

A command records its work with :func:`audited`, which also says what happens when the
record cannot be written (a full disk, a read-only audit directory)::

    with audit.audited(env, "migrate.up", {...}, done=lambda: "migrate up applied 0006"):
        ...

After the work succeeded, the work is done and must not be reported as failed -- but CI
must learn that the record is missing: :class:`AuditNotRecorded` (exit 9) says both, with
``done()``, the state the work left. If the work failed and its record could not be
written either, the work's own error is raised, with a note.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ptool_ops.errors import ManualActionRequired, ProblemsFound, PtoolError

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditSink:
    """Where an environment's audit records go: ``<audit_dir>/<environment>.jsonl``."""

    directory: Path
    environment: str

    @property
    def path(self) -> Path:
        return self.directory / f"{self.environment}.jsonl"


@dataclass
class Entry:
    action: str
    details: dict[str, Any] = field(default_factory=dict)


def actor() -> str:
    """Who is acting: PTOOL_ACTOR (CI sets it), else the OS user."""
    explicit = os.environ.get("PTOOL_ACTOR")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _digest(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def append(path: Path, action: str, outcome: str, details: dict[str, Any], env: str) -> str:
    """Append one record; returns its hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            prev = GENESIS
            for line in handle:
                if line.strip():
                    prev = json.loads(line)["hash"]
            record: dict[str, Any] = {
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "environment": env,
                "actor": actor(),
                "action": action,
                "outcome": outcome,
                "details": details,
                "prev": prev,
            }
            record["hash"] = _digest(record)
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            return str(record["hash"])
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def record(sink: AuditSink, action: str, details: dict[str, Any] | None = None) -> Iterator[Entry]:
    """Record ``action`` when the block ends, as ok or failed."""
    entry = Entry(action, dict(details or {}))
    try:
        yield entry
    except PtoolError as err:
        entry.details["error"] = err.message
        append(sink.path, action, "failed", entry.details, sink.environment)
        raise
    except BaseException as err:
        entry.details["error"] = type(err).__name__
        append(sink.path, action, "failed", entry.details, sink.environment)
        raise
    append(sink.path, action, "ok", entry.details, sink.environment)


class AuditNotRecorded(ManualActionRequired):
    """The operation succeeded; its audit record could not be written."""

    kind = "audit_not_recorded"


class Audits(Protocol):
    """What :func:`audited` needs of the environment: where its records go."""

    @property
    def audit_sink(self) -> AuditSink: ...


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


@contextmanager
def audited(
    env: Audits, action: str, details: dict[str, Any], *, done: Callable[[], str]
) -> Iterator[Entry]:
    """:func:`record` ``action`` in the environment's trail; ``done()`` describes what
    succeeded (one clause), for the error when the record cannot be written after it."""
    sink = env.audit_sink
    succeeded = False
    try:
        with record(sink, action, details) as entry:
            yield entry
            succeeded = True
    except OSError as err:
        if succeeded:
            raise AuditNotRecorded(
                f"{done()}, but its audit record could not be written to {sink.path}"
                f" ({_reason(err)}).",
                hint=f"The operation itself succeeded. Fix the audit directory and record "
                f"'{action}' by hand; 'ptool-ops audit verify' checks the chain.",
            ) from None
        original = err.__context__
        if isinstance(original, PtoolError):
            # the work's own error (its class, exit code, hint and details), with a note
            original.message = (
                f"{original.message.rstrip('.')} (and its audit record could not be written "
                f"to {sink.path}: {_reason(err)})."
            )
            original.args = (original.message,)
            raise original from None
        raise


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class VerifyResult:
    path: str
    records: int
    ok: bool
    first_bad_line: int | None = None
    reason: str | None = None


def verify(path: Path) -> VerifyResult:
    """Walk the chain; the first line whose hash or link is wrong ends it."""
    prev = GENESIS
    count = 0
    if not path.exists():
        return VerifyResult(str(path), 0, True)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        count += 1
        try:
            record = json.loads(line)
            claimed = record.pop("hash")
        except (ValueError, KeyError):
            return VerifyResult(str(path), count, False, number, "not a JSON audit record")
        if record.get("prev") != prev:
            return VerifyResult(str(path), count, False, number, "chain broken: prev mismatch")
        if _digest(record) != claimed:
            return VerifyResult(str(path), count, False, number, "record altered: hash mismatch")
        prev = claimed
    return VerifyResult(str(path), count, True)


def require_intact(path: Path) -> VerifyResult:
    result = verify(path)
    if not result.ok:
        raise ProblemsFound(
            f"the audit log {path} is not intact at line {result.first_bad_line}: {result.reason}.",
            hint="Someone edited or truncated it; keep the file for investigation.",
        )
    return result
