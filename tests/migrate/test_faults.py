"""The migration fault matrix: real ``ptool-ops migrate`` processes, killed (SIGKILL) at a
step, and what is left. A migration pauses on ``pg_sleep`` for as long as the test's
``public.ptool_test_pause`` says, so the test can see the step in ``pg_stat_activity`` and
kill the process there; killing the client leaves its backend running, so the test ends
that session as the server would once it noticed (``pg_terminate_backend``).

The cases, and what each leaves, are the table in docs/migrations.md ("Killed runs").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops.migrate.run_lock import CLASSID, OBJID
from tests.conftest import MIGRATOR, OWNER, TestDatabase
from tests.migrate.runner_support import add_migration, migrations_copy

NO_TX = "-- ptool: no-transaction\n"
PAUSE = "SELECT pg_sleep((SELECT seconds FROM public.ptool_test_pause));\n"
ADD_NOTE = "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
DROP_NOTE = "ALTER TABLE booking.tenants DROP COLUMN note;\n"
INDEX = "CREATE INDEX CONCURRENTLY tenants_note_idx ON booking.tenants (note);\n"
DROP_INDEX = "DROP INDEX CONCURRENTLY booking.tenants_note_idx;\n"
PTOOL = str(Path(sys.executable).with_name("ptool-ops"))


@dataclass
class Site:
    db: TestDatabase
    cwd: Path
    directory: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PTOOL, "--env", "t", *args],
            cwd=self.cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PTOOL, "--env", "t", *args],
            cwd=self.cwd,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def pause(self, seconds: float) -> None:
        with self.db.connect() as conn:
            conn.execute("UPDATE public.ptool_test_pause SET seconds = %s", (seconds,))

    def kill_at_pause(self, proc: subprocess.Popen[str]) -> None:
        """SIGKILL the process once its migration sleeps, then end its backend."""
        pid = self.wait_for("pg_sleep((SELECT seconds FROM public.ptool_test_pause))")
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
        with self.db.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            _wait_gone(conn, pid)

    def wait_for(self, query: str, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        with self.db.connect() as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'active' AND position(%s in query) > 0",
                    (query,),
                ).fetchone()
                if row:
                    return int(row[0])
                time.sleep(0.05)
        raise AssertionError(f"no session ran {query!r} within {timeout_s} s")

    def history(self) -> dict[str, str]:
        with self.db.connect() as conn:
            rows = conn.execute(
                "SELECT version, outcome FROM ptool_ops.migration_history ORDER BY version"
            ).fetchall()
        return {str(v): str(o) for v, o in rows}

    def column(self) -> bool:
        with self.db.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'booking.tenants'::regclass"
                " AND attname = 'note' AND NOT attisdropped"
            ).fetchone()
        return row == (1,)

    def index(self) -> bool:
        with self.db.connect() as conn:
            row = conn.execute("SELECT to_regclass('booking.tenants_note_idx')").fetchone()
        return row is not None and row[0] is not None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
    env["PTOOL_ACTOR"] = "fault-tests"
    return env


def _wait_gone(conn: Any, pid: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            return
        time.sleep(0.05)


@pytest.fixture
def site(booking_db: TestDatabase, tmp_path: Path) -> Iterator[Site]:
    with booking_db.connect() as conn:
        conn.execute("CREATE TABLE public.ptool_test_pause (seconds float NOT NULL)")
        conn.execute("INSERT INTO public.ptool_test_pause VALUES (0)")
        conn.execute("GRANT SELECT ON public.ptool_test_pause TO booking_migrator")
    cwd = tmp_path / "work"
    cwd.mkdir()
    directory = migrations_copy(tmp_path)
    (cwd / "ptool-ops.toml").write_text(
        "[environments.t]\n"
        'kind = "postgres"\n'
        f'database_url = "{booking_db.url(OWNER)}"\n'
        f'migrator_url = "{booking_db.url(MIGRATOR)}"\n'
        f'repo_url = "file://{tmp_path / "repo"}"\n'
        f'migrations_dir = "{directory}"\n'
        f'audit_dir = "{tmp_path / "audit"}"\n'
        "lock_timeout_ms = 1000\n"
        "migrate_lock_wait_s = 2\n"
    )
    yield Site(booking_db, cwd, directory)


def test_a_transactional_up_killed_mid_transaction_leaves_nothing(site: Site) -> None:
    add_migration(site.directory, "0006", "tenant_note", ADD_NOTE + PAUSE, DROP_NOTE)
    site.pause(60)
    proc = site.start("migrate", "up", "--no-backup-point")
    site.kill_at_pause(proc)
    assert "0006" not in site.history() and not site.column()
    site.pause(0)
    again = site.run("migrate", "up", "--no-backup-point")
    assert again.returncode == 0, again.stderr
    assert site.history()["0006"] == "applied" and site.column()


def test_a_no_transaction_up_killed_between_statements_leaves_a_running_row(
    site: Site,
) -> None:
    add_migration(
        site.directory,
        "0006",
        "tenant_note",
        NO_TX + ADD_NOTE + PAUSE + INDEX,
        NO_TX + DROP_INDEX + DROP_NOTE,
    )
    site.pause(60)
    proc = site.start("migrate", "up", "--no-backup-point")
    site.kill_at_pause(proc)
    assert site.history()["0006"] == "running"
    assert site.column() and not site.index()  # half-applied, and the row says so

    status = site.run("migrate", "status", "-o", "json")
    assert status.returncode == 1

    states = {m["version"]: m["state"] for m in json.loads(status.stdout)["migrations"]}
    assert states["0006"] == "interrupted"
    refused = site.run("migrate", "up", "--no-backup-point")
    assert refused.returncode == 7
    assert "0006_tenant_note was interrupted" in refused.stderr
    assert "ptool-ops migrate repair 0006 --accept" in refused.stderr

    # the operator undoes what ran, records it, and the next run applies it whole
    with psycopg.connect(site.db.url(MIGRATOR), autocommit=True) as conn:
        conn.execute(DROP_NOTE)
    repaired = site.run(
        "migrate", "repair", "0006", "--forget", "--reason", "dropped the half-added column"
    )
    assert repaired.returncode == 0, repaired.stderr
    site.pause(0)
    again = site.run("migrate", "up", "--no-backup-point")
    assert again.returncode == 0, again.stderr
    assert site.history()["0006"] == "applied" and site.column() and site.index()
    trail = site.cwd.parent / "repo" / "audit" / "t"
    events = [json.loads(p.read_text()) for p in sorted(trail.glob("0*.json"))]
    started = {e["op"] for e in events if e["outcome"] == "started"}
    finished = {e["op"] for e in events if e["outcome"] != "started"}
    assert started - finished  # the killed run left its start on record, and no end


def test_a_no_transaction_down_killed_between_statements_leaves_a_reverting_row(
    site: Site,
) -> None:
    add_migration(
        site.directory,
        "0006",
        "tenant_note",
        NO_TX + ADD_NOTE + INDEX,
        NO_TX + DROP_INDEX + PAUSE + DROP_NOTE,
    )
    assert site.run("migrate", "up", "--no-backup-point").returncode == 0
    site.pause(60)
    proc = site.start("--yes", "migrate", "down", "--no-backup-point")
    site.kill_at_pause(proc)
    assert site.history()["0006"] == "reverting"
    assert site.column() and not site.index()
    refused = site.run("--yes", "migrate", "down", "--no-backup-point")
    assert refused.returncode == 7 and "interrupted" in refused.stderr
    with psycopg.connect(site.db.url(MIGRATOR), autocommit=True) as conn:
        conn.execute(DROP_NOTE)  # the operator finishes the down by hand
    repaired = site.run("migrate", "repair", "0006", "--forget", "--reason", "finished the down")
    assert repaired.returncode == 0, repaired.stderr
    site.pause(0)
    assert site.run("migrate", "up", "--no-backup-point").returncode == 0
    assert site.history()["0006"] == "applied" and site.index()


def test_a_transactional_down_killed_mid_transaction_changes_nothing(site: Site) -> None:
    add_migration(site.directory, "0006", "tenant_note", ADD_NOTE, PAUSE + DROP_NOTE)
    assert site.run("migrate", "up", "--no-backup-point").returncode == 0
    site.pause(60)
    proc = site.start("--yes", "migrate", "down", "--no-backup-point")
    site.kill_at_pause(proc)
    assert site.history()["0006"] == "applied" and site.column()
    site.pause(0)
    again = site.run("--yes", "migrate", "down", "--no-backup-point")
    assert again.returncode == 0, again.stderr
    assert site.history()["0006"] == "reverted" and not site.column()


def test_ending_the_lock_holders_session_stops_the_run(site: Site) -> None:
    add_migration(site.directory, "0006", "tenant_note", ADD_NOTE + PAUSE, DROP_NOTE)
    site.pause(60)
    first = site.start("migrate", "up", "--no-backup-point")
    working = site.wait_for("pg_sleep((SELECT seconds FROM public.ptool_test_pause))")
    with site.db.connect() as conn:
        holder = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid::bigint = %s AND objid::bigint = %s",
            (CLASSID, OBJID),
        ).fetchone()
    assert holder == (working,)  # the lock is held by the session doing the work
    second = site.run("migrate", "up", "--no-backup-point")
    assert second.returncode == 6  # never two runners at once
    assert f"pid {working}" in second.stderr and "ptool-ops migrate up" in second.stderr
    with site.db.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (working,))
    _, err = first.communicate(timeout=60)
    assert first.returncode == 9, err
    assert "session of this run ended while it ran 0006_tenant_note" in err
    assert "migrate status" in err
    assert "Traceback" not in err
    assert "0006" not in site.history()  # rolled back with its session
    site.pause(0)
    assert site.run("migrate", "up", "--no-backup-point").returncode == 0
