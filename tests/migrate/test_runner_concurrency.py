"""Concurrency: the run lock, lock timeouts with retries, pooled hosts, API readiness."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops.environment import Environment
from ptool_ops.errors import Conflict, ManualActionRequired, OperationFailed, Refused
from ptool_ops.migrate.run_lock import MIGRATION_LOCK_KEY
from ptool_ops.migrate.runner import Runner, RunResult
from ptool_ops.migrate.service import api_readiness
from ptool_ops.settings import EnvironmentSettings
from tests.conftest import MIGRATOR, TestDatabase
from tests.migrate.runner_support import FAST, add_migration, migrations_copy, state

ADD_NOTE = "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
DROP_NOTE = "ALTER TABLE booking.tenants DROP COLUMN note;\n"


def test_two_concurrent_ups_apply_each_migration_once(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "slow_marker",
        "CREATE TABLE booking.run_marker (at timestamptz NOT NULL DEFAULT clock_timestamp());\n"
        "INSERT INTO booking.run_marker DEFAULT VALUES;\n"
        "SELECT pg_sleep(1);\n",
        "DROP TABLE booking.run_marker;\n",
    )
    add_migration(
        directory,
        "0007",
        "second_marker",
        "INSERT INTO booking.run_marker DEFAULT VALUES;\n",
        "DELETE FROM booking.run_marker WHERE at = (SELECT max(at) FROM booking.run_marker);\n",
    )
    results: list[RunResult] = []
    failures: list[BaseException] = []

    def go() -> None:
        try:
            results.append(Runner(booking_db.url(MIGRATOR), directory=directory, options=FAST).up())
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    applied = sorted(m.version for r in results for m in r.migrations)
    assert applied == ["0006", "0007"]
    assert sorted(len(r.migrations) for r in results) == [0, 2]
    with booking_db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM booking.run_marker").fetchone()
        assert row == (2,)


def test_a_held_run_lock_names_its_holder(booking_db: TestDatabase, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    with psycopg.connect(
        booking_db.url(MIGRATOR), autocommit=True, application_name="other-runner"
    ) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        pid = holder.info.backend_pid
        options = type(FAST)(**{**FAST.__dict__, "run_lock_wait_s": 0.5})
        started = time.monotonic()
        with pytest.raises(Conflict) as err:
            Runner(booking_db.url(MIGRATOR), directory=directory, options=options).up()
        assert time.monotonic() - started < 3
    assert f"pid {pid}" in err.value.message and "other-runner" in err.value.message
    assert err.value.exit_code == 6


def test_a_pooled_neon_host_is_refused(tmp_path: Path) -> None:
    url = "postgresql://u:pw@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/neondb"
    with pytest.raises(Refused, match="pooled host") as err:
        Runner(url, directory=migrations_copy(tmp_path), options=FAST).up()
    assert "ep-cool-darkness-123456.us-east-2" in (err.value.hint or "")
    assert "pw" not in err.value.message


def test_lock_wait_retries_then_fails_without_stalling_writers(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    """A reader holds ACCESS SHARE on tenants; the migration's ALTER waits lock_timeout,
    retries, and gives up; a writer queued behind it never waits much longer."""
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    with booking_db.connect() as conn:
        before = state(conn)
    stop = threading.Event()
    waits: list[float] = []
    errors: list[BaseException] = []

    def writer() -> None:
        n = 0
        with psycopg.connect(booking_db.url(MIGRATOR), autocommit=True) as conn:
            while not stop.is_set():
                n += 1
                began = time.monotonic()
                try:
                    conn.execute(
                        "INSERT INTO booking.tenants (slug, name) VALUES (%s, 'W')", (f"w-{n}",)
                    )
                except psycopg.Error as err:
                    errors.append(err)
                waits.append(time.monotonic() - began)
                time.sleep(0.01)

    with booking_db.connect() as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM booking.tenants")  # ACCESS SHARE until commit
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            started = time.monotonic()
            with pytest.raises(OperationFailed, match="lock was not available") as err:
                Runner(booking_db.url(MIGRATOR), directory=directory, options=FAST).up()
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            thread.join(10)
            reader.execute("ROLLBACK")
    assert err.value.exit_code == 8
    assert elapsed >= 3 * FAST.lock_timeout_ms / 1000  # three attempts
    assert errors == []
    assert len(waits) > 10
    # a writer queued behind the ALTER waits at most about one lock_timeout
    # (slack for a loaded 2-core machine; the run itself took several lock timeouts)
    assert max(waits) < FAST.lock_timeout_ms / 1000 + 0.4, max(waits)
    assert max(waits) < elapsed / 2
    with booking_db.connect() as conn:
        schema, history = state(conn)
        assert (schema, history) == before


class _ReadyWithoutNote(http.server.BaseHTTPRequestHandler):
    """A stand-in API that is not ready while booking.tenants has a note column (as if
    the new release could not cope with it), or never when ``always_down``."""

    conninfo = ""
    always_down = False

    def do_GET(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'booking.tenants'::regclass"
                " AND attname = 'note' AND NOT attisdropped"
            ).fetchone()
        ready = row == (0,) and not self.always_down
        status = "ready" if ready else "not_ready"
        body = (
            f'{{"status": "{status}", "reason": "schema not understood",'
            ' "checks": {"database_role": "booking_app_a", "latency_ms": 1}}'
        ).encode()
        self.send_response(200 if ready else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _api(conninfo: str, always_down: bool) -> Iterator[str]:
    handler = type(
        "Handler", (_ReadyWithoutNote,), {"conninfo": conninfo, "always_down": always_down}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _readiness(api_url: str) -> Callable[[], str | None]:
    env = Environment(EnvironmentSettings(name="t", kind="postgres", api_url=api_url))
    return api_readiness(env, FAST.api_ready_timeout_s, lambda message: None)


@pytest.mark.parametrize("always_down", [False, True])
def test_an_unready_api_after_commit_rolls_the_migration_back(
    booking_db: TestDatabase, tmp_path: Path, always_down: bool
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    with booking_db.connect() as conn:
        before, _ = state(conn)
    api = _api(booking_db.url(MIGRATOR), always_down)
    url = next(api)
    try:
        runner = Runner(
            booking_db.url(MIGRATOR), directory=directory, options=FAST, api_ready=_readiness(url)
        )
        if always_down:
            with pytest.raises(ManualActionRequired, match="still not ready") as err:
                runner.up()
            assert err.value.exit_code == 9
        else:
            with pytest.raises(OperationFailed, match="API was not ready after 0006") as err:
                runner.up()
            assert "API is ready again" in err.value.message
    finally:
        next(api, None)
    with booking_db.connect() as conn:
        after, rows = state(conn)
    assert after == before
    assert [r[3] for r in rows if r[0] == "0006"] == ["reverted"]
