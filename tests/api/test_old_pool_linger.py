"""``--old-pool-linger-s``: after a reload the stand-in keeps its old pool open, logged in as
the previous role, for that long -- a deployment whose old instances drain slowly -- while
requests go to the new pool; then (or when the stand-in stops) the old pool is closed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ptool_ops.local.env import LocalEnvironment

from ..conftest import TestDatabase, reset_passwords
from .conftest import Standin, _free_port
from .test_reload_under_load import rotate


@contextmanager
def lingering_standin(
    db: TestDatabase, server: LocalEnvironment, tmp_path: Path, linger_s: float
) -> Iterator[Standin]:
    secrets = tmp_path / "secrets.json"
    shutil.copy(server.paths.secrets, secrets)
    port, log = _free_port(), tmp_path / "api.log"
    argv = [
        sys.executable,
        "-m",
        "ptool_ops.booking.standin",
        "--secrets",
        str(secrets),
        "--db-port",
        str(server.state().port),
        "--db-name",
        db.name,
        "--port",
        str(port),
        "--old-pool-linger-s",
        str(linger_s),
    ]
    with log.open("wb") as handle:
        proc = subprocess.Popen(argv, stdout=handle, stderr=handle)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "stand-in did not start"
        time.sleep(0.1)
    ops_token = json.loads(secrets.read_text())["api_token"]
    try:
        yield Standin(url, ops_token, secrets, log, proc, db)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        reset_passwords(server)  # roles are cluster-wide


def sessions(standin: Standin, role: str) -> int:
    with standin.db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = %s"
            " AND application_name = 'booking-api-standin'",
            (role, standin.db.name),
        ).fetchone()
    return int(row[0]) if row else 0


def reload_to_b(standin: Standin) -> None:
    rotate(standin, "booking_app_b")
    deadline = time.monotonic() + 15
    with standin.client() as api:
        while api.ready().role != "booking_app_b":
            assert time.monotonic() < deadline, standin.log.read_text()
            time.sleep(0.2)


def test_the_old_pool_stays_logged_in_until_the_linger_ends(
    booking_db: TestDatabase, pg_server: LocalEnvironment, tmp_path: Path
) -> None:
    linger_s = 3.0
    with lingering_standin(booking_db, pg_server, tmp_path, linger_s) as standin:
        assert sessions(standin, "booking_app_a") >= 1
        began = time.monotonic()
        reload_to_b(standin)
        with standin.client() as api:
            assert api.smoke(write=True).ok  # served by the new pool
        assert sessions(standin, "booking_app_b") >= 1
        assert sessions(standin, "booking_app_a") >= 1, "the old pool closed at once"
        while sessions(standin, "booking_app_a"):
            assert time.monotonic() - began < linger_s + 10, "the old pool never closed"
            time.sleep(0.2)
        assert time.monotonic() - began >= linger_s * 0.9
        log = standin.log.read_text()
        assert "stays open for 3 s" in log and "is closed" in log, log


def test_stopping_closes_a_lingering_pool(
    booking_db: TestDatabase, pg_server: LocalEnvironment, tmp_path: Path
) -> None:
    with lingering_standin(booking_db, pg_server, tmp_path, 120.0) as standin:
        reload_to_b(standin)
        assert sessions(standin, "booking_app_a") >= 1
        standin.proc.terminate()
        standin.proc.wait(15)  # uvicorn ends by re-raising SIGTERM after its shutdown
        assert "booking_app_a-1 is closed" in standin.log.read_text(), standin.log.read_text()
        deadline = time.monotonic() + 5  # a backend leaves pg_stat_activity a moment later
        while sessions(standin, "booking_app_a"):
            assert time.monotonic() < deadline, "the lingering pool outlived the stand-in"
            time.sleep(0.1)
        assert "Traceback" not in standin.log.read_text()
