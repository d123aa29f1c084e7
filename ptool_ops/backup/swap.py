"""The databases a restore makes, and the in-place swap.

**Marks and leftovers.** A database a restore creates carries the comment
``ptool-ops: restore of backup <id> in progress`` until the restore is done, and the
restore holds an advisory lock named after it (:func:`target_lock`) for its whole run. A
database with that comment whose lock nobody holds is the leftover of a killed restore:
the next restore into the same name drops it and starts again (:func:`clear_leftover`);
any other database of that name is refused.

**The swap** (:func:`swap_in_place`), after the restored copy passed validation:

1. carry over, onto the restored copy (not yet live): the current database's
   ``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ... SET`` settings
   (``pg_db_role_setting``) and its owner (the database-level grants were copied when it
   was created);
2. take the migration run lock (:func:`ptool_ops.migrate.run_lock.run_lock`, the key
   every migration takes), so no migration runs during the swap;
3. put the API in maintenance mode (skipped, with a note, when the environment has no
   API or it cannot be reached);
4. in **one transaction** on the ``postgres`` database: rename the current database to
   ``<db>_before_<id>`` -- which takes the database's lock, so no new session can connect
   -- while a second session ends the current database's sessions and ours lets go of the
   run lock; then rename the restored copy to ``<db>`` and give it the old comment;
   commit. Killed at any moment before the commit, PostgreSQL rolls it all back: the
   current database is untouched. After it, the swap is whole.
5. maintenance mode off.

A failure before the commit leaves the current database as it was (the caller drops the
restored copy) and says so.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ptool_ops import pg
from ptool_ops.errors import Conflict, OperationFailed, ServiceUnavailable

if TYPE_CHECKING:
    import psycopg

    from ptool_ops.environment import Environment

INCOMPLETE = "ptool-ops: restore of backup {id} in progress"
FAILED = "ptool-ops: restored from backup {id}; failed validation, kept for inspection"
#: application_name of the sessions the swap opens (what a conflict message shows)
SWAP_APPLICATION = "ptool-ops backup restore --in-place: swap"
#: how long the rename waits for the database's sessions to end, at most, per attempt
#: (PostgreSQL's own wait in RENAME is 5 s)
RENAME_TIMEOUT_S = 15.0

#: settings whose value is a list of quoted names (pg_dump's variable_is_guc_list_quote)
_LIST_QUOTE = {
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
}


def _lock_key(target: str) -> int:
    digest = hashlib.sha256(f"ptool_ops.restore:{target}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def target_lock(url: SecretStr, target: str, *, in_place_of: str | None = None) -> Iterator[None]:
    """Hold the restore locks for the block, on one session of their own: ``target``'s
    (one restore into a name at a time) and, in place, the database ``in_place_of``'s (one
    in-place restore of a database at a time, whichever backup -- both then on
    ``postgres``, since the swap ends every session of that database). A killed restore's
    session ends, and its locks with it."""
    wanted = [(f"restore into {target}", _lock_key(target))]
    if in_place_of:
        wanted.insert(
            0, (f"restore in place of {in_place_of}", _lock_key(f"in-place:{in_place_of}"))
        )
    conn = pg.connect(url, dbname="postgres" if in_place_of else None)
    try:
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            (f"ptool-ops backup {wanted[0][0]}"[:63],),
        )
        for what, key in wanted:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (row and row[0]):
                raise Conflict(
                    f"another {what} is running: {_lock_holder(conn, key)}.",
                    hint="Wait for it to finish; if it is stuck, end it with "
                    "SELECT pg_terminate_backend(<pid>) and run the restore again.",
                )
        yield
    finally:
        conn.close()


def _lock_holder(conn: psycopg.Connection[Any], key: int) -> str:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF  # a bigint key is held as two oids
    holder = conn.execute(
        "SELECT a.pid, a.usename, a.client_addr::text, a.backend_start"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname ="
        " current_database()) AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
        (unsigned >> 32, unsigned & 0xFFFF_FFFF),
    ).fetchone()
    if holder is None:
        return "a session that just let go"
    return (
        f"pid {holder[0]} (user {holder[1]}, from {holder[2] or 'a local socket'}, "
        f"since {holder[3]:%Y-%m-%d %H:%M:%S})"
    )


def comment_of(conn: psycopg.Connection[Any], name: str) -> tuple[bool, str | None]:
    """Whether database ``name`` exists, and its comment."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    return (row is not None, row[0] if row else None)


def set_comment(url: SecretStr, name: str, comment: str | None) -> None:
    from psycopg import sql

    with pg.connect(url) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(comment)
            )
        )


def clear_leftover(url: SecretStr, target: str, backup_id: str) -> str | None:
    """Drop ``target`` if it is the leftover of a killed restore of this backup (call
    while holding :func:`target_lock`); refuse any other database of that name."""
    from psycopg import sql

    with pg.connect(url) as conn:
        exists, comment = comment_of(conn, target)
        if not exists:
            return None
        if comment != INCOMPLETE.format(id=backup_id):
            raise Conflict(
                f"database {target} already exists.",
                hint="Choose another --target-db, or drop it first.",
            )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target))
        )
    return f"dropped {target}, left by an interrupted restore of backup {backup_id}"


# --- settings and owner -------------------------------------------------------------------


def _split_list(value: str) -> list[str]:
    """A GUC list value (``"$user", public``) as its elements (SplitGUCList)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(value) and value[i + 1] == '"':
                    current.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


def _set_clause(entry: str) -> Any:
    """``SET name TO value`` for one ``name=value`` of pg_db_role_setting.setconfig."""
    from psycopg import sql

    name, _, value = entry.partition("=")
    if name.lower() in _LIST_QUOTE:
        values: Any = sql.SQL(", ").join(sql.Literal(v) for v in _split_list(value))
    else:
        values = sql.Literal(value)
    return sql.SQL("SET {} TO {}").format(sql.Identifier(name), values)


def carry_over(url: SecretStr, current: str, restored: str) -> list[str]:
    """Give ``restored`` the settings and the owner of ``current``; returns what was done."""
    from psycopg import sql

    done: list[str] = []
    ident = sql.Identifier
    with pg.connect(url) as conn:
        rows = conn.execute(
            "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s"
            " JOIN pg_database d ON d.oid = s.setdatabase"
            " LEFT JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE d.datname = %s ORDER BY r.rolname NULLS FIRST",
            (current,),
        ).fetchall()
        for role, config in rows:
            for entry in config or []:
                clause = _set_clause(entry)
                if role is None:
                    conn.execute(sql.SQL("ALTER DATABASE {} {}").format(ident(restored), clause))
                    done.append(f"ALTER DATABASE ... SET {entry}")
                else:
                    conn.execute(
                        sql.SQL("ALTER ROLE {} IN DATABASE {} {}").format(
                            ident(role), ident(restored), clause
                        )
                    )
                    done.append(f"ALTER ROLE {role} IN DATABASE ... SET {entry}")
        owners = conn.execute(
            "SELECT d.datname, pg_get_userbyid(d.datdba) FROM pg_database d"
            " WHERE d.datname IN (%s, %s)",
            (current, restored),
        ).fetchall()
        owner = dict(owners)
        if owner.get(current) and owner.get(current) != owner.get(restored):
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    ident(restored), ident(owner[current])
                )
            )
            done.append(f"owner {owner[current]}")
    return done


# --- the swap -----------------------------------------------------------------------------


def check_maintenance(env: Environment) -> None:
    """Before an in-place restore's long work, ask the API's maintenance switch what the
    swap will ask it: a missing ops token or an API that answers wrongly fails now, with
    nothing done, not after the restore. An API that cannot be reached is let be (the swap
    tries again, and goes ahead with a note if it still cannot)."""
    if not env.has_api:
        return
    try:
        with env.api() as api:
            api.maintenance_state()
    except ServiceUnavailable:
        return


@contextmanager
def maintenance(env: Environment, reason: str, notes: list[str]) -> Iterator[None]:
    """The API in maintenance mode for the block, when the environment has one that
    answers; otherwise a note says why not."""
    if not env.has_api:
        notes.append("the environment has no API: maintenance mode was not switched")
        yield
        return
    try:
        api = env.api()
    except ServiceUnavailable as err:
        notes.append(f"maintenance mode was not switched: {err.message.rstrip('.')}")
        yield
        return
    with api, ExitStack() as stack:
        try:
            stack.enter_context(api.maintenance(reason))
        except ServiceUnavailable as err:
            notes.append(f"maintenance mode was not switched: {err.message.rstrip('.')}")
        else:
            notes.append("the API was in maintenance mode during the swap")
        yield


def _object_lock_held(conn: psycopg.Connection[Any], oid: int, pid: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_locks WHERE locktype = 'object'"
        " AND classid = 'pg_database'::regclass AND objid = %s AND pid = %s"
        " AND mode = 'AccessExclusiveLock' AND granted",
        (oid, pid),
    ).fetchone()
    return row is not None


def _end_sessions(conn: psycopg.Connection[Any], database: str, keep: set[int]) -> list[int]:
    """End every client session of ``database`` we may end; returns the pids left
    (superusers', which a non-superuser may not end, and ``keep``). Autovacuum workers
    are PostgreSQL's: the rename ends those itself."""
    import psycopg

    rows = conn.execute(
        "SELECT a.pid, coalesce(r.rolsuper, false) FROM pg_stat_activity a"
        " LEFT JOIN pg_roles r ON r.oid = a.usesysid"
        " WHERE a.datname = %s AND a.pid <> pg_backend_pid()"
        " AND a.backend_type = 'client backend'",
        (database,),
    ).fetchall()
    left = []
    for pid, superuser in rows:
        if pid in keep or superuser:
            left.append(int(pid))
            continue
        try:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.Error:  # not ours to end: the rename will say it is still in use
            left.append(int(pid))
    return left


def rename_pair(
    url: SecretStr,
    current: str,
    restored: str,
    keep_as: str,
    *,
    let_go: list[psycopg.Connection[Any]],
) -> None:
    """Steps 4 of the module docstring: ``current`` -> ``keep_as`` and ``restored`` ->
    ``current`` in one transaction. ``let_go`` are our own sessions on ``current`` (the run
    lock's), closed once no new session can connect."""
    import psycopg
    from psycopg import sql

    ident = sql.Identifier
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    swap = pg.connect(url, dbname="postgres", autocommit=False)
    helper = pg.connect(url, dbname="postgres")
    try:
        for conn in (swap, helper):
            conn.execute("SELECT set_config('application_name', %s, false)", (SWAP_APPLICATION,))
        swap.execute("SET LOCAL lock_timeout = '10s'")
        exists, comment = comment_of(helper, current)
        row = helper.execute(
            "SELECT oid FROM pg_database WHERE datname = %s", (current,)
        ).fetchone()
        if not exists or row is None:
            raise OperationFailed(f"database {current} is gone.")
        oid = int(row[0])
        failure: list[BaseException] = []

        def first_rename() -> None:
            try:
                swap.execute(rename.format(ident(current), ident(keep_as)))
            except BaseException as err:
                failure.append(err)

        ours = {c.info.backend_pid for c in let_go if not c.closed}
        worker = threading.Thread(target=first_rename, name="swap-rename", daemon=True)
        worker.start()
        deadline = time.monotonic() + RENAME_TIMEOUT_S
        # the rename holds the database's lock from its start: once it does, no session
        # can connect any more, and ending the ones there is final
        while worker.is_alive() and not _object_lock_held(helper, oid, swap.info.backend_pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        left: list[int] = []
        while worker.is_alive() and time.monotonic() < deadline:
            left = [p for p in _end_sessions(helper, current, ours) if p not in ours]
            for conn in let_go:
                conn.close()
            ours = set()
            worker.join(0.05)
        worker.join(max(deadline - time.monotonic(), 0) + 1)
        if worker.is_alive():
            helper.execute("SELECT pg_cancel_backend(%s)", (swap.info.backend_pid,))
            worker.join(10)
        if failure:
            err = failure[0]
            swap.rollback()
            if isinstance(err, psycopg.errors.ObjectInUse):
                who = f" (pids {', '.join(map(str, left))}, which this login may not end)"
                raise OperationFailed(
                    f"the swap was not done: database {current} is still in use by sessions "
                    f"that would not end{who if left else ''}.",
                    hint="End them (as their role, or a superuser) and run the restore again.",
                ) from None
            if isinstance(err, psycopg.Error):
                raise OperationFailed(
                    f"the swap was not done: renaming {current} failed: {pg._first_line(str(err))}."
                ) from None
            raise err
        swap.execute(rename.format(ident(restored), ident(current)))
        swap.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(current), sql.Literal(comment))
        )
        swap.commit()
    except BaseException:
        if not swap.closed:
            swap.rollback()
        raise
    finally:
        for conn in let_go:
            conn.close()
        swap.close()
        helper.close()


def database_exists(url: SecretStr, name: str) -> bool:
    with pg.connect(url) as conn:
        return comment_of(conn, name)[0]
