"""The audit trail of one environment: a hash chain of event objects in its repository.

Layout, under the trail's prefix (``audit/<environment>/`` of the backup repository, or of
``audit_dir`` for an environment without one)::

    0000000001.json     one event: seq, prev (the hash of event seq-1), hash, and the event
    0000000002.json     ...
    head.json           a hint: the newest seq and hash a writer saw (never trusted alone)

An event is written with :meth:`Storage.create_exclusive` (S3 ``If-None-Match: *``; on disk
a hard link) under the next sequence number, so two writers never fork the chain: the one
that loses the race reads the winner's event and chains after it. Nothing is rewritten and
nothing deleted; :func:`walk` names the first event that is altered, missing or does not
link to the one before, and :mod:`ptool_ops.audit.anchor` keeps the newest hash in a second
place (the environment's database), so a missing tail or a consistently rewritten chain is
found too.

Events are plain JSON (no compression, no encryption): auditors read them with any tool.
Their arguments and details pass the CLI's redactor before they are written.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import OperationFailed, PtoolError
from ptool_ops.repo.errors import ObjectMissing

if TYPE_CHECKING:
    from ptool_ops.audit.anchor import Anchor
    from ptool_ops.repo.storage import Storage

log = logging.getLogger(__name__)

GENESIS = "0" * 64
HEAD = "head.json"
#: how many events other writers may slip in before ours, in one append
MAX_RACE = 200
#: reads of event objects at a time (S3 answers each GET in tens of milliseconds)
READERS = 8


def actor() -> str:
    """Who is acting: PTOOL_ACTOR (CI sets it), else the OS user."""
    explicit = os.environ.get("PTOOL_ACTOR")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def digest(event: dict[str, Any]) -> str:
    """SHA-256 of the event's canonical JSON without its ``hash``."""
    body = {k: v for k, v in event.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seq_of(name: str) -> int | None:
    """The sequence number of an event object's file name, or None for anything else."""
    stem, dot, ext = name.partition(".")
    if dot and ext == "json" and len(stem) == 10 and stem.isdigit():
        return int(stem)
    return None


class AuditWriteFailed(OperationFailed):
    """An event could not be stored (the repository is unreachable, full or read-only)."""

    kind = "audit_write_failed"

    def __init__(self, location: str, reason: str, cause: PtoolError | None = None) -> None:
        self.location = location
        self.reason = reason.rstrip(".")
        #: the failure of the work whose ``failed`` event this was (set by ``record``)
        self.work_error: BaseException | None = None
        super().__init__(
            f"the audit trail at {location} could not be written: {self.reason}.",
            hint="Fix the repository (credentials, space, permissions) and run the command"
            " again; 'ptool-ops audit verify' checks the chain.",
        )
        if cause is not None:  # the repository's own error says best what is wrong
            self.exit_code = cause.exit_code
            self.hint = cause.hint or self.hint


@dataclass
class Walk:
    """What a walk over the stored events found (before the anchor is consulted)."""

    events: int = 0
    last_seq: int = 0
    hashes: dict[int, str] = field(default_factory=dict)
    first_bad: int | None = None
    problem: str | None = None  # altered | unlinked | missing | unreadable
    reason: str | None = None
    head_hint: int | None = None  # what head.json claims


class Trail:
    """Appends to and reads one environment's chain.

    ``storage`` opens the store on first use (``prepare`` runs once before the first write:
    the repository's marker); ``anchor`` is told the newest (seq, hash) after every finished
    command; ``redact`` masks secrets in everything an event carries.
    """

    def __init__(
        self,
        environment: str,
        *,
        storage: Callable[[], Storage],
        prefix: str,
        prepare: Callable[[], None] | None = None,
        anchor: Anchor | None = None,
        redact: Callable[[Any], Any] | None = None,
        invocation: dict[str, Any] | None = None,
    ) -> None:
        self.environment = environment
        self.prefix = prefix.rstrip("/")
        self._open = storage
        self._prepare = prepare
        #: the second place the newest hash is kept (None: nowhere, e.g. no database)
        self.anchor = anchor
        self._storage: Storage | None = None
        self.redact = redact or (lambda value: value)
        #: the command line that acts (the CLI sets it): recorded in every event
        self.invocation = invocation
        self._head: tuple[int, str] | None = None

    # --- where ---------------------------------------------------------------------------

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = self._open()
        return self._storage

    @property
    def location(self) -> str:
        try:
            return f"{self.storage.url.rstrip('/')}/{self.prefix}/"
        except PtoolError:
            return f"{self.prefix}/"

    def key(self, seq: int) -> str:
        return f"{self.prefix}/{seq:010d}.json"

    # --- writing -------------------------------------------------------------------------

    def append(
        self,
        action: str,
        outcome: str,
        details: dict[str, Any],
        *,
        op: str | None = None,
        at: str | None = None,
        by: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store one event after the newest; returns it (with its seq and hash)."""
        from ptool_ops.console import to_jsonable

        invocation = self.invocation or {}
        body: dict[str, Any] = {
            "at": at or datetime.now(UTC).isoformat(timespec="milliseconds"),
            "environment": self.environment,
            "actor": by or actor(),
            "command": invocation.get("command"),
            "arguments": invocation.get("arguments"),
            "action": action,
            "outcome": outcome,
            "op": op,
            "details": details,
            **(extra or {}),
        }
        body = self.redact(to_jsonable(body))
        try:
            prepare, self._prepare = self._prepare, None
            if prepare is not None:
                prepare()  # may append itself (the import of a local trail)
            return self._store(body)
        except AuditWriteFailed:
            raise
        except PtoolError as err:
            raise AuditWriteFailed(self.location, err.message, err) from None
        except OSError as err:
            raise AuditWriteFailed(self.location, err.strerror or type(err).__name__) from None

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        storage = self.storage
        seq, prev = self._newest(storage)
        for _ in range(MAX_RACE):
            event = {**body, "seq": seq + 1, "prev": prev}
            event["hash"] = digest(event)
            data = json.dumps(event, sort_keys=True, indent=1).encode() + b"\n"
            if storage.create_exclusive(self.key(seq + 1), data) is not None:
                self._head = (seq + 1, event["hash"])
                hint = json.dumps({"seq": seq + 1, "hash": event["hash"]}).encode()
                storage.put_bytes(f"{self.prefix}/{HEAD}", hint)
                return event
            seq, prev = seq + 1, self._hash_at(storage, seq + 1)  # someone else was first
        raise AuditWriteFailed(
            self.location, f"{MAX_RACE} other events were written while this one waited"
        )

    def _hash_at(self, storage: Storage, seq: int) -> str:
        """The hash event ``seq`` claims (a damaged one: the SHA-256 of its bytes, so the
        chain goes on and ``verify`` names the damage)."""
        raw = storage.get_bytes(self.key(seq))
        try:
            claimed = json.loads(raw).get("hash")
        except (ValueError, AttributeError):
            claimed = None
        return claimed if isinstance(claimed, str) else hashlib.sha256(raw).hexdigest()

    def _newest(self, storage: Storage) -> tuple[int, str]:
        """The newest stored event: from what this trail wrote, else the head hint checked
        against its event, else a listing; then forward while newer events exist."""
        seq, digest_ = self._head or (0, GENESIS)
        if self._head is None:
            hint = self._hint(storage)
            if hint is not None and self._exists_as(storage, *hint):
                seq, digest_ = hint
            else:
                listed = self._listed(storage)
                if listed:
                    seq, digest_ = listed[-1], self._hash_at(storage, listed[-1])
                if hint is not None and hint[0] > seq:
                    # the newest events are gone: write after them, never in their place,
                    # so their numbers stay missing and ``verify`` names them
                    log.warning(
                        "the audit trail's head names event %d but the newest stored event is"
                        " %d: events were deleted; this one follows %d. Run 'ptool-ops audit"
                        " verify'",
                        hint[0],
                        seq,
                        hint[0],
                    )
                    seq, digest_ = hint
        while True:
            try:
                digest_ = self._hash_at(storage, seq + 1)
            except ObjectMissing:
                return seq, digest_
            seq += 1

    def _hint(self, storage: Storage) -> tuple[int, str] | None:
        try:
            data = json.loads(storage.get_bytes(f"{self.prefix}/{HEAD}"))
            seq, value = data["seq"], data["hash"]
        except (ObjectMissing, ValueError, KeyError, TypeError):
            return None
        return (seq, value) if isinstance(seq, int) and isinstance(value, str) else None

    def _exists_as(self, storage: Storage, seq: int, value: str) -> bool:
        try:
            return self._hash_at(storage, seq) == value
        except ObjectMissing:
            return False

    def _listed(self, storage: Storage) -> list[int]:
        found = []
        for info in storage.list(f"{self.prefix}/"):
            seq = seq_of(info.key.rsplit("/", 1)[-1])
            if seq is not None:
                found.append(seq)
        return sorted(found)

    # --- reading -------------------------------------------------------------------------

    def read(self, seq: int) -> dict[str, Any]:
        """Event ``seq`` as stored; an unreadable one as ``{"seq", "unreadable": reason}``."""
        try:
            raw = self.storage.get_bytes(self.key(seq))
        except ObjectMissing:
            return {"seq": seq, "unreadable": "missing"}
        try:
            event = json.loads(raw)
        except ValueError:
            return {"seq": seq, "unreadable": "not JSON"}
        if not isinstance(event, dict):
            return {"seq": seq, "unreadable": "not a JSON object"}
        return event

    def events(self, *, newest_first: bool = False) -> Iterator[dict[str, Any]]:
        """Every stored event in sequence order (or newest first), read a few at a time."""
        for _seq, event in self._stored(newest_first=newest_first):
            yield event

    def _stored(self, *, newest_first: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """(the seq its object is stored under, the event) for every stored event."""
        seqs = self._listed(self.storage)
        if newest_first:
            seqs.reverse()
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            for start in range(0, len(seqs), READERS * 4):
                batch = seqs[start : start + READERS * 4]
                yield from zip(batch, pool.map(self.read, batch), strict=True)

    def walk(self) -> Walk:
        """Check every stored event: its own hash, its link to the one before, and that
        no sequence number is missing. The first problem ends the walk."""
        found = Walk(head_hint=(self._hint(self.storage) or (None, ""))[0])
        prev, expected = GENESIS, 1
        for seq, event in self._stored():
            if seq != expected:
                what = (
                    f"event {expected} is"
                    if seq == expected + 1
                    else (f"events {expected} to {seq - 1} are")
                )
                return self._bad(found, expected, "missing", f"{what} missing")
            expected += 1
            if "unreadable" in event:
                return self._bad(found, seq, "unreadable", f"event {seq} is {event['unreadable']}")
            claimed = event.get("hash")
            if event.get("seq") != seq or claimed != digest(event):
                return self._bad(
                    found, seq, "altered", f"event {seq} was altered after it was written"
                )
            if event.get("prev") != prev:
                return self._bad(
                    found, seq, "unlinked", f"event {seq} does not link to event {seq - 1}"
                )
            prev = str(claimed)
            found.events += 1
            found.last_seq = seq
            found.hashes[seq] = prev
        return found

    @staticmethod
    def _bad(found: Walk, seq: int, problem: str, reason: str) -> Walk:
        found.first_bad, found.problem, found.reason = seq, problem, reason
        return found
