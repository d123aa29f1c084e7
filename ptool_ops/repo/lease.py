"""Leases: small objects in the repository that say "this is in use", refreshed while it is.

A running ``backup create`` holds ``backups/<id>/lease.json``; ``backup prune`` holds
``locks/prune.json``. Both are the same JSON document::

    {"purpose": "backup create", "token": "<random>", "actor": "...", "host": "...",
     "pid": 1234, "machine": "...", "process_start": "...",
     "started_at": "...", "refreshed_at": "...", "timeout_s": 1200}

The holder rewrites it every :data:`REFRESH_S` seconds on a thread, each time with a
conditional write against the tag it last wrote (``If-Match`` on S3, a compared SHA-256
under the guard on disk): if anyone replaced or removed it, the holder learns it has lost
the lease at the next refresh and stops. A lease is **dead** when

* it was not refreshed for longer than :data:`TIMEOUT_S` (20 minutes) -- judged by the
  later of its own ``refreshed_at`` and the store's modification time, against the
  reader's clock. A refresh every 30 s against a 20-minute timeout tolerates up to 19
  minutes of clock skew between the holder, the store and the reader (S3 itself refuses
  requests signed more than 15 minutes off its clock); or
* it names this machine (host name, boot id and PID namespace all equal) and its process
  is gone (or the PID now belongs to a process started at another time).

A dead lease can be taken over (the prune lock) or its backup's leftovers removed; a live
one is never touched. A holder gives its lease up (:attr:`Lease.lost`, ``on_lost``) when a
refresh finds it replaced or removed, when a refresh fails in a way it did not expect, and
when its last confirmed write is older than half the timeout -- failing refreshes, or one
that hangs. So, while clocks are less than half the timeout apart, it never works on under
a lease a reader may already count as dead. A conditional write that seems to fail is
checked against the stored token first: its answer may have been lost after it landed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ptool_ops.errors import Conflict, OperationFailed, PtoolError
from ptool_ops.repo.storage import Storage

log = logging.getLogger(__name__)

#: how often a holder rewrites its lease
REFRESH_S = 30.0
#: how long a lease that is not refreshed still counts as alive
TIMEOUT_S = 20 * 60.0


def _actor() -> str:
    from ptool_ops.audit import actor

    return actor()


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def machine_id() -> str | None:
    """Host name, boot id and PID namespace: equal only where our PIDs mean the same
    process. None where /proc does not tell (then only the timeout counts)."""
    boot = _read_proc("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    if boot is None:
        return None
    return f"{socket.gethostname()}|{boot}|{pidns}"


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = _read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    after = stat.rsplit(")", 1)[-1].split()
    return after[19] if len(after) > 19 else None


def _process_gone(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    if started is not None:
        now = process_start(pid)
        if now is not None and now != started:
            return True  # the PID was reused
    return False


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _age(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Holder:
    """What a lease object says about its holder (fields may be missing if damaged)."""

    key: str
    tag: str
    stored_at: datetime
    token: str | None
    purpose: str
    actor: str
    host: str
    pid: int | None
    machine: str | None
    process_start: str | None
    started_at: datetime | None
    refreshed_at: datetime | None
    timeout_s: float

    @classmethod
    def parse(cls, key: str, data: bytes, tag: str, stored_at: datetime) -> Holder:
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        pid = doc.get("pid")
        timeout = doc.get("timeout_s")
        return cls(
            key=key,
            tag=tag,
            stored_at=stored_at,
            token=doc.get("token") if isinstance(doc.get("token"), str) else None,
            purpose=str(doc.get("purpose") or "an unknown command"),
            actor=str(doc.get("actor") or "?"),
            host=str(doc.get("host") or "?"),
            pid=pid if isinstance(pid, int) else None,
            machine=doc.get("machine") if isinstance(doc.get("machine"), str) else None,
            process_start=doc.get("process_start")
            if isinstance(doc.get("process_start"), str)
            else None,
            started_at=_parse_time(doc.get("started_at")),
            refreshed_at=_parse_time(doc.get("refreshed_at")),
            timeout_s=float(timeout) if isinstance(timeout, int | float) else TIMEOUT_S,
        )

    @property
    def last_sign_of_life(self) -> datetime:
        """The later of the holder's own refresh time and the store's write time."""
        if self.refreshed_at is None:
            return self.stored_at
        return max(self.refreshed_at, self.stored_at)

    def dead_because(
        self, now: datetime | None = None, timeout_s: float | None = None
    ) -> str | None:
        """Why this lease no longer protects anything, or None while it does."""
        now = now or datetime.now(UTC)
        limit = max(timeout_s if timeout_s is not None else TIMEOUT_S, self.timeout_s)
        quiet = now - self.last_sign_of_life
        if quiet > timedelta(seconds=limit):
            return f"not refreshed for {_age(quiet)} (dead after {_age(timedelta(seconds=limit))})"
        here = machine_id()
        if (
            here is not None
            and self.machine == here
            and self.pid is not None
            and _process_gone(self.pid, self.process_start)
        ):
            return f"its process {self.pid} on this machine is gone"
        return None

    def describe(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        since = (
            self.started_at.isoformat(timespec="seconds") if self.started_at else "an unknown time"
        )
        quiet = _age(now - self.last_sign_of_life)
        return (
            f"{self.purpose} by {self.actor} (pid {self.pid or '?'} on {self.host}), "
            f"started {since}, last refreshed {quiet} ago"
        )


def read_holder(storage: Storage, key: str) -> Holder | None:
    found = storage.read_versioned(key)
    if found is None:
        return None
    return Holder.parse(key, found.data, found.tag, found.modified)


class Lease:
    """A lease this process holds, refreshed on a daemon thread until :meth:`release`."""

    def __init__(
        self,
        storage: Storage,
        key: str,
        purpose: str,
        *,
        refresh_s: float = REFRESH_S,
        timeout_s: float = TIMEOUT_S,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.storage = storage
        self.key = key
        self.purpose = purpose
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.token = secrets.token_hex(16)
        self.started_at = datetime.now(UTC)
        self._tag: str | None = None
        self._on_lost = on_lost
        self._lost: str | None = None
        self._lose_lock = threading.Lock()
        #: when (monotonic) the last write of ours that the store confirmed was sent
        self._last_ok = time.monotonic()
        #: why the refreshes since then failed, if they did
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._lock = threading.Lock()
        #: the holder this lease replaced, when it took over a dead one
        self.took_over: Holder | None = None

    def document(self) -> bytes:
        doc = {
            "purpose": self.purpose,
            "token": self.token,
            "actor": _actor(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "machine": machine_id(),
            "process_start": process_start(os.getpid()),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "refreshed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "timeout_s": self.timeout_s,
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    # --- taking it ------------------------------------------------------------------------

    def create(self) -> Lease:
        """Take a lease on a key nobody uses (a new backup's): exists = a conflict."""
        since = time.monotonic()
        tag = self.storage.create_exclusive(self.key, self.document())
        if tag is None:
            tag = self._ours()  # our own write, retried after a lost answer?
        if tag is None:
            raise Conflict(
                f"{self.key} already exists in {self.storage.url}.",
                hint="Run the command again (a new id is chosen).",
            )
        self._hold(tag, since)
        return self

    def _ours(self) -> str | None:
        """The stored lease's tag if it carries our token, else None.

        A conditional write whose answer was lost (a reset connection, a read timeout) is
        retried, and the retry finds its own write: S3 answers 412. Only this lease writes
        its token, so the token tells whether the write that "failed" was ours."""
        holder = read_holder(self.storage, self.key)
        if holder is not None and holder.token == self.token:
            return holder.tag
        return None

    def acquire(self, *, wait_s: float = 0.0, poll_s: float = 1.0) -> Lease:
        """Take an exclusive lease (the prune lock): create it, or take over a dead one;
        wait up to ``wait_s`` for a live holder, then raise :class:`Conflict` naming it."""
        deadline = time.monotonic() + wait_s
        since = time.monotonic()
        while True:
            # a write of ours lands in this round or, its answer lost, in the one before
            before, since = since, time.monotonic()
            tag = self.storage.create_exclusive(self.key, self.document())
            if tag is not None:
                self._hold(tag, since)
                return self
            holder = read_holder(self.storage, self.key)
            if holder is None:  # released meanwhile (or a write in flight): try again
                if time.monotonic() >= deadline + 10:
                    raise Conflict(f"{self.key} in {self.storage.url} keeps changing.")
                time.sleep(0.05)
                continue
            if holder.token == self.token:  # our own write, retried after a lost answer
                self._hold(holder.tag, before)
                return self
            dead = holder.dead_because(timeout_s=self.timeout_s)
            if dead is not None:
                tag = self.storage.replace_if(self.key, self.document(), holder.tag)
                if tag is not None:
                    log.warning("took over %s from %s: %s", self.key, holder.describe(), dead)
                    self.took_over = holder
                    self._hold(tag, since)
                    return self
                continue  # someone else changed it first: look again
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"{self.purpose} is already running on {self.storage.url}: "
                    f"{holder.describe()}" + (f"; waited {wait_s:g} s" if wait_s else "") + ".",
                    hint=f"Wait for it to finish. If it was killed, its lock ({self.key}) "
                    f"counts as abandoned once not refreshed for "
                    f"{_age(timedelta(seconds=max(self.timeout_s, holder.timeout_s)))}, or "
                    "at once when run again on the machine where it ran.",
                )
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.05)))

    def _hold(self, tag: str, since: float) -> None:
        """Hold ``tag``, written by a call that started at ``since`` (monotonic)."""
        self._tag = tag
        self._last_ok = since
        self._thread = threading.Thread(
            target=self._refresh_loop, name=f"lease {self.key}", daemon=True
        )
        self._watchdog = threading.Thread(
            target=self._watch, name=f"lease {self.key} watchdog", daemon=True
        )
        self._thread.start()
        self._watchdog.start()

    # --- keeping it -----------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        """Refresh until released or lost. Whatever goes wrong ends in :meth:`_lose`, never
        in a thread that stops quietly while its holder works on."""
        while not self._stop.wait(self.refresh_s):
            try:
                with self._lock:
                    if self._tag is None or self._lost is not None:
                        return
                    since = time.monotonic()  # the store's time of the write is later
                    tag = self.storage.replace_if(self.key, self.document(), self._tag)
                    if tag is None:
                        tag = self._ours()  # our own write, retried after a lost answer?
                    if tag is None:
                        self._lose(f"{self.key} was replaced or removed by someone else")
                        return
                    self._tag = tag
                    self._last_ok, self._last_error = since, None
            except PtoolError as err:  # the store failed this time: try again, a while
                log.warning("cannot refresh %s: %s", self.key, err.message)
                self._last_error = err.message.rstrip(".")
                if self._stale():
                    self._lose(self._stale_why())
                    return
            except Exception as err:  # a bug, or a store answering nonsense: stop now
                log.error("cannot refresh %s", self.key, exc_info=True)
                self._lose(f"{self.key} could not be refreshed ({type(err).__name__})")
                return

    def _watch(self) -> None:
        """Notice a refresh that hangs (the refresh thread cannot: it is stuck in it), so the
        holder is told (``on_lost``) without having to ask."""
        interval = max(min(self.refresh_s, self.timeout_s / 10), 0.01)
        while not self._stop.wait(interval):
            if self.lost is not None:
                return

    def _stale(self) -> bool:
        """Whether our last confirmed write is older than half the timeout: from then on a
        reader whose clock runs ahead may count the lease as dead, so it protects nothing."""
        return time.monotonic() - self._last_ok > self.timeout_s / 2

    def _stale_why(self) -> str:
        quiet = _age(timedelta(seconds=time.monotonic() - self._last_ok))
        if self._last_error is not None:
            return f"{self.key} could not be refreshed for {quiet}: {self._last_error}"
        return f"{self.key} was not refreshed for {quiet}: the store did not answer"

    def _lose(self, why: str) -> None:
        with self._lose_lock:
            if self._lost is not None:
                return
            self._lost = why
        log.error("lost the lease %s", why)
        if self._on_lost is not None:
            self._on_lost(why)

    @property
    def lost(self) -> str | None:
        """Why this lease no longer protects the holder's work, or None while it does.

        Also when the refresh thread is stuck in a call that does not return (a store that
        hangs): a lease not refreshed for half the timeout is lost (the watchdog asks)."""
        if self._lost is None and self._tag is not None and self._stale():
            self._lose(self._stale_why())
        return self._lost

    def check(self) -> None:
        """Raise unless the lease is still ours (and say why)."""
        lost = self.lost
        if lost is not None:
            raise OperationFailed(f"the lease {self.key} was lost: {lost.rstrip('.')}.")
        with self._lock:
            holder = read_holder(self.storage, self.key)
            if holder is None or holder.token != self.token:
                self._lost = f"{self.key} was replaced or removed by someone else"
                raise OperationFailed(f"the lease {self._lost}.")
            self._tag = holder.tag

    # --- giving it up ---------------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            tag, self._tag = self._tag, None
        if tag is None or self._lost is not None:
            return
        with contextlib.suppress(PtoolError):
            if self.storage.delete_if(self.key, tag):
                return
            # a retried delete whose first answer was lost finds nothing: released all the same
            holder = read_holder(self.storage, self.key)
            if holder is not None and holder.token != self.token:
                log.warning("%s was no longer ours to release", self.key)
            elif holder is not None and not self.storage.delete_if(self.key, holder.tag):
                log.warning("%s changed while it was released", self.key)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def holding(lease: Lease) -> Iterator[Lease]:
    try:
        yield lease
    finally:
        lease.release()
