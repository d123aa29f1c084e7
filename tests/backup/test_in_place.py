"""In-place restore: the migration run lock and maintenance mode around the swap, the
settings, owner, comment and grants of the replaced database carried over, failures that
leave the current database as it was -- and the operator errors around restores."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from pydantic import SecretStr

from ptool_ops.backup import swap
from ptool_ops.backup.swap import INCOMPLETE
from ptool_ops.booking.seed import seed
from ptool_ops.migrate.run_lock import run_lock
from tests.api.conftest import Standin
from tests.backup.conftest import Env, table_checksums
from tests.conftest import MIGRATOR, OWNER, admin_url, block_next_finish


def _create(env: Env) -> str:
    created = env.run("backup create -o json")
    assert created.exit_code == 0, created.output
    return str(created.json()["id"])


def _databases(env: Env) -> set[str]:
    with env.db.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def _settings(env: Env, database: str) -> list[tuple[Any, ...]]:
    with env.db.connect() as conn:
        return conn.execute(
            "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s"
            " JOIN pg_database d ON d.oid = s.setdatabase"
            " LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = %s"
            " ORDER BY 1 NULLS FIRST",
            (database,),
        ).fetchall()


def _facts(env: Env, database: str) -> tuple[Any, ...]:
    with env.db.connect() as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), datacl::text[], shobj_description(oid, 'pg_database')"
            " FROM pg_database WHERE datname = %s",
            (database,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_in_place_and_target_db_is_a_usage_error(file_env: Env) -> None:
    result = file_env.run("backup restore latest --in-place --target-db x")
    assert result.exit_code == 2, result.output
    assert "--in-place and --target-db exclude each other" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.output


def test_settings_owner_comment_and_grants_follow_the_database(file_env: Env) -> None:
    name = file_env.db.name
    with file_env.db.connect() as conn:
        conn.execute(f"ALTER DATABASE {name} SET work_mem = '8MB'")
        conn.execute(f"""ALTER DATABASE {name} SET search_path = "$user", public, booking""")
        conn.execute(f"ALTER ROLE booking_app IN DATABASE {name} SET statement_timeout = '5s'")
        conn.execute(f"COMMENT ON DATABASE {name} IS 'the booking database'")
        conn.execute(f"ALTER DATABASE {name} OWNER TO {MIGRATOR}")
    settings, facts = _settings(file_env, name), _facts(file_env, name)
    assert len(settings) == 2 and facts[0] == MIGRATOR
    backup_id = _create(file_env)
    done = file_env.run(f"backup restore {backup_id} --in-place -o json")
    assert done.exit_code == 0, done.output
    result = done.json()
    kept = result["previous_database"]
    assert _settings(file_env, name) == settings
    assert _facts(file_env, name) == facts
    assert any(
        n.startswith("carried over: ALTER DATABASE ... SET work_mem=8MB") for n in result["notes"]
    )
    assert "the environment has no API: maintenance mode was not switched" in result["notes"]
    # the kept copy is the old database, settings and all
    assert _settings(file_env, kept) == settings
    with psycopg.connect(admin_url(file_env.db.server, name), autocommit=True) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)


def test_a_running_migration_keeps_the_swap_from_happening(file_env: Env) -> None:
    with file_env.db.connect() as conn:
        before = table_checksums(conn)
    backup_id = _create(file_env)
    with file_env.db.connect() as conn:
        seed(conn, tenants=1, bookings=10, seed=8)
        changed = table_checksums(conn)
    databases = _databases(file_env)
    with run_lock(file_env.db.url(MIGRATOR), wait_s=0, application_name="migration 0042"):
        result = file_env.run(f"backup restore {backup_id} --in-place --lock-wait 0")
    assert result.exit_code == 6, result.output
    assert f"restoring backup {backup_id} failed at swap" in result.stderr
    assert "another migration run holds the migration lock" in result.stderr
    assert "migration 0042" in result.stderr and "nothing was changed" in result.stderr
    assert _databases(file_env) == databases  # the restored copy is gone again
    with file_env.db.connect() as conn:
        assert table_checksums(conn) == changed
    again = file_env.run(f"backup restore {backup_id} --in-place")
    assert again.exit_code == 0, again.output
    with file_env.db.connect() as conn:
        assert table_checksums(conn) == before


def _api_env(env: Env, standin: Standin) -> None:
    env.configure(api_url=standin.url)
    env.cli.env["PTOOL_API_TOKEN"] = standin.ops_token


def _watch_maintenance(standin: Standin, seen: list[Any], stop: threading.Event) -> None:
    with httpx.Client(timeout=2) as http:
        while not stop.is_set():
            try:
                state = http.get(
                    f"{standin.url}/ops/maintenance",
                    headers={"Authorization": f"Bearer {standin.ops_token}"},
                ).json()
            except httpx.HTTPError:
                continue
            if state.get("enabled"):
                seen.append(state.get("reason"))
            time.sleep(0.005)


def test_maintenance_mode_around_the_swap(file_env: Env, standin: Standin) -> None:
    _api_env(file_env, standin)
    backup_id = _create(file_env)
    seen: list[Any] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_maintenance, args=(standin, seen, stop))
    watcher.start()
    try:
        done = file_env.run(f"backup restore {backup_id} --in-place -o json")
    finally:
        stop.set()
        watcher.join()
    assert done.exit_code == 0, done.output
    assert "the API was in maintenance mode during the swap" in done.json()["notes"]
    assert f"restoring backup {backup_id} in place" in seen
    state = standin.client().maintenance_state()
    assert state["enabled"] is False
    ready = file_env.run("api ready --wait 20")  # the API serves the restored database
    assert ready.exit_code == 0, ready.output


def test_sessions_that_cannot_be_ended_fail_the_swap_and_change_nothing(
    file_env: Env, standin: Standin
) -> None:
    _api_env(file_env, standin)
    backup_id = _create(file_env)
    with file_env.db.connect() as conn:
        seed(conn, tenants=1, bookings=10, seed=8)
        changed = table_checksums(conn)
    databases = _databases(file_env)
    holder = file_env.db.connect()  # a superuser's session: the operator may not end it
    seen: list[Any] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_maintenance, args=(standin, seen, stop))
    watcher.start()
    try:
        result = file_env.run(f"backup restore {backup_id} --in-place")
    finally:
        stop.set()
        watcher.join()
        pid = holder.info.backend_pid
        holder.close()
    assert result.exit_code == 8, result.output
    assert "the swap was not done" in result.stderr
    assert f"still in use by sessions that would not end (pids {pid}" in result.stderr
    assert "nothing was changed" in result.stderr
    assert f"restoring backup {backup_id} in place" in seen  # on during the attempt
    assert standin.client().maintenance_state()["enabled"] is False  # and off again
    assert _databases(file_env) == databases
    with file_env.db.connect() as conn:
        assert table_checksums(conn) == changed


def test_a_leftover_of_a_killed_restore_is_dropped_and_anything_else_refused(
    file_env: Env,
) -> None:
    backup_id = _create(file_env)
    target = f"{file_env.db.name}_copy"
    with psycopg.connect(file_env.db.url(OWNER), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {target}")  # the operator's, as a restore's would be
    refused = file_env.run(f"backup restore {backup_id} --target-db {target}")
    assert refused.exit_code == 6 and f"database {target} already exists" in refused.stderr
    with file_env.db.connect() as conn:
        conn.execute(f"COMMENT ON DATABASE {target} IS '{INCOMPLETE.format(id=backup_id)}'")
    done = file_env.run(f"backup restore {backup_id} --target-db {target} -o json")
    assert done.exit_code == 0, done.output
    assert done.json()["notes"] == [
        f"dropped {target}, left by an interrupted restore of backup {backup_id}"
    ]
    with file_env.db.connect() as conn:
        comment = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (target,),
        ).fetchone()
    assert comment == (None,)  # done: no longer marked
    again = file_env.run(f"backup restore {backup_id} --target-db {target}")
    assert again.exit_code == 6  # a finished restore is never dropped


def test_an_audit_record_that_cannot_be_written_after_a_restore(file_env: Env) -> None:
    backup_id = _create(file_env)
    trail = Path(file_env.repo_url.removeprefix("file://")) / "audit" / "t"
    block_next_finish(trail)  # the restore's "started" is stored, its "ok" is not
    target = f"{file_env.db.name}_audited"
    result = file_env.run(f"backup restore {backup_id} --target-db {target} -o json")
    assert result.exit_code == 9, result.output
    error = result.json()
    assert error["error"] == "audit_not_recorded"
    assert error["message"] == (
        f"backup {backup_id} was restored into {target}, but its audit record could not be "
        f"written to file://{trail}/ (Is a directory)."
    )
    assert "The operation itself succeeded" in error["hint"]
    assert "Traceback" not in result.output
    assert target in _databases(file_env)
    with psycopg.connect(admin_url(file_env.db.server, target), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM booking.bookings").fetchone() == (1500,)


def test_one_in_place_restore_of_a_database_at_a_time(file_env: Env) -> None:
    first, second = _create(file_env), _create(file_env)
    with file_env.db.connect() as conn:
        before = table_checksums(conn)
    databases = _databases(file_env)
    # the first backup's in-place restore is running (its locks, held as it holds them)
    target = f"{file_env.db.name}_restoring_{first.lower().replace('-', '_')}"
    with swap.target_lock(SecretStr(file_env.db.url(OWNER)), target, in_place_of=file_env.db.name):
        refused = file_env.run(f"backup restore {second} --in-place")
    assert refused.exit_code == 6, refused.output
    assert f"another restore in place of {file_env.db.name} is running: pid" in refused.stderr
    assert _databases(file_env) == databases
    with file_env.db.connect() as conn:
        assert table_checksums(conn) == before


def test_an_api_without_an_ops_token_fails_before_the_restore(
    file_env: Env, standin: Standin
) -> None:
    file_env.configure(api_url=standin.url)  # and no api_token: maintenance cannot be switched
    file_env.cli.env.pop("PTOOL_API_TOKEN", None)
    backup_id = _create(file_env)
    databases = _databases(file_env)
    result = file_env.run(f"backup restore {backup_id} --in-place")
    assert result.exit_code == 3, result.output
    assert f"no ops token for {standin.url}" in result.stderr
    assert "Traceback" not in result.output
    assert _databases(file_env) == databases  # nothing restored, nothing to drop
    assert standin.client().maintenance_state()["enabled"] is False
