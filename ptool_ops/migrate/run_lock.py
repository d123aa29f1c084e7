"""One runner at a time: a session-level advisory lock, taken by polling.

The lock is :data:`MIGRATION_LOCK_KEY`, held by the session that does the work (the
connection :func:`run_lock` returns): it cannot be lost while the work goes on, and ending
that session (``pg_terminate_backend``, as the conflict message suggests for a stuck run)
stops the migration with it -- never two runners at once. It is a session lock taken with
``pg_try_advisory_lock`` on an autocommit connection: ``pg_advisory_lock`` (blocking) or a
transaction-level lock on another connection would make ``CREATE INDEX CONCURRENTLY`` on the work
connection wait for the lock holder's transaction -- the deadlock Flyway users keep
hitting. The runner polls ``pg_try_advisory_lock`` until ``wait_s`` passes, then names
the holder from ``pg_locks`` and ``pg_stat_activity``.

Neon's pooled endpoint (``-pooler`` host, PgBouncer in transaction mode) loses session
locks and settings between transactions: :func:`refuse_pooler` rejects it up front.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from pydantic import SecretStr

from ptool_ops import pg
from ptool_ops.errors import Conflict, Refused

__all__ = ["MIGRATION_LOCK_KEY", "LockHolder", "lock_holders", "refuse_pooler", "run_lock"]

#: Key of the session-level advisory lock every migration run takes
#: (first 8 bytes of sha256("ptool_ops.migrations"), as a signed bigint).
MIGRATION_LOCK_KEY: int = int.from_bytes(
    hashlib.sha256(b"ptool_ops.migrations").digest()[:8], "big", signed=True
)

_UNSIGNED = MIGRATION_LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF
CLASSID, OBJID = _UNSIGNED >> 32, _UNSIGNED & 0xFFFF_FFFF

_HOLDERS = """
SELECT a.pid, a.application_name, a.client_addr::text, a.usename,
       coalesce(a.xact_start, a.backend_start), a.state
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = %s AND l.objid::bigint = %s
"""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str | None
    client_addr: str | None
    user: str | None
    since: datetime | None
    state: str | None

    def describe(self) -> str:
        where = self.client_addr or "a local socket"
        since = self.since.isoformat(timespec="seconds") if self.since else "an unknown time"
        app = self.application_name or "no application_name"
        return f"pid {self.pid} ({app}, user {self.user or '?'}, from {where}, since {since})"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "since": self.since.isoformat() if self.since else None}


def lock_holders(conn: psycopg.Connection[Any]) -> list[LockHolder]:
    """Sessions holding the migration lock in this database."""
    rows = conn.execute(_HOLDERS, (CLASSID, OBJID)).fetchall()
    return [LockHolder(*row) for row in rows]


def refuse_pooler(url: SecretStr | str) -> None:
    """Refuse a Neon pooled (PgBouncer, transaction mode) host."""
    from psycopg.conninfo import conninfo_to_dict

    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        hosts = str(conninfo_to_dict(raw).get("host") or "").split(",")
    except psycopg.ProgrammingError:
        return  # pg.connect reports an unparsable URL in its own words
    pooled = [h for h in hosts if "-pooler" in h.split(".", 1)[0]]
    if pooled:
        direct = pooled[0].replace("-pooler", "", 1)
        raise Refused(
            f"migrations must not run through the pooled host {pooled[0]}: PgBouncer in"
            " transaction mode drops the runner's session lock and its lock_timeout.",
            hint=f"Use the direct host ({direct}) in this environment's database URL for"
            " migrations.",
        )


@contextmanager
def run_lock(
    url: SecretStr | str,
    *,
    wait_s: float,
    application_name: str,
    poll_s: float = 0.25,
) -> Iterator[psycopg.Connection[Any]]:
    """Hold the migration lock for the block, on the connection returned: do the work on it
    (a lock on another connection could be lost -- that session killed -- unnoticed)."""
    conn = pg.connect(url)
    try:
        conn.execute("SELECT set_config('application_name', %s, false)", (application_name,))
        deadline = time.monotonic() + wait_s
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,)).fetchone()
            if row and row[0]:
                break
            if time.monotonic() >= deadline:
                holders = lock_holders(conn)
                who = "; ".join(h.describe() for h in holders) or "a session that just let go"
                raise Conflict(
                    f"another migration run holds the migration lock: {who}; waited {wait_s:g} s.",
                    hint="Wait for it to finish and run the command again; if that session is"
                    " stuck, end it with SELECT pg_terminate_backend(<pid>).",
                )
            time.sleep(poll_s)
        try:
            yield conn
        finally:
            if not conn.closed and not conn.broken:
                with contextlib.suppress(psycopg.Error):  # closing the session frees it too
                    conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    finally:
        conn.close()
