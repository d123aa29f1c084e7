"""The compatibility gate end to end: the stand-in API serves a test database, its
statements are captured from pg_stat_statements, and migrations are held to them in
``migrate test`` (scratch copy) and ``migrate up`` (before commit)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from ptool_ops.booking.api import BookingApi
from ptool_ops.errors import OperationFailed, PermissionDenied, ToolMissing
from ptool_ops.local.env import LocalEnvironment
from ptool_ops.migrate import queryset
from ptool_ops.migrate.capture import app_roles, capture, read_statistics, version_string
from ptool_ops.migrate.compat import Gate
from ptool_ops.migrate.runner import Runner
from ptool_ops.migrate.scaffold import scaffold_rename
from ptool_ops.migrate.testing import run_migration_tests
from ptool_ops.repo.file import FileStorage
from ptool_ops.repo.repository import Repository
from tests.conftest import MIGRATOR, OWNER, TestDatabase
from tests.migrate.runner_support import FAST, add_migration, migrations_copy, state

DROP_NOTE = (
    "-- ptool: allow ban-drop-column -- reason: the test of the gate\n"
    "ALTER TABLE booking.bookings DROP COLUMN note;\n"
)
ADD_NOTE_BACK = "ALTER TABLE booking.bookings ADD COLUMN note text;\n"
ADD_SOURCE = "ALTER TABLE booking.bookings ADD COLUMN source text;\n"
DROP_SOURCE = "ALTER TABLE booking.bookings DROP COLUMN source;\n"


@dataclass
class Api:
    url: str
    proc: subprocess.Popen[bytes]
    client: BookingApi

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(15)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(server: LocalEnvironment, db: TestDatabase, secrets: Path, build: str) -> Api:
    port = _free_port()
    log = secrets.parent / f"api-{build}.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
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
                "--build",
                build,
            ],
            stdout=handle,
            stderr=handle,
        )
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
    token = json.loads(secrets.read_text())["api_token"]
    return Api(url, proc, BookingApi(url, SecretStr(token)))


@pytest.fixture
def api_v1(
    booking_db: TestDatabase, pg_server: LocalEnvironment, tmp_path: Path
) -> Iterator[tuple[Api, Path]]:
    secrets = tmp_path / "secrets.json"
    shutil.copy(pg_server.paths.secrets, secrets)
    api = _start(pg_server, booking_db, secrets, "v1")
    yield api, secrets
    if api.proc.poll() is None:
        api.stop()


def _traffic(api: Api) -> None:
    """What release v1 does: it writes and reads bookings, note included."""
    fixture = api.client.smoke_fixture()
    tenant, token = fixture["tenant_id"], fixture["tenant_token"]
    start = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=time.time_ns() % 100_000)
    for n in range(2):
        api.client.create_booking(
            tenant,
            token,
            artist_id=fixture["artist_id"],
            project_id=fixture["project_id"],
            starts_at=start + timedelta(hours=3 * n),
            ends_at=start + timedelta(hours=3 * n + 1),
            status="tentative",
            note=f"note {n}",
        )
    assert len(api.client.list_bookings(tenant, token)) >= 2


def _repo(tmp_path: Path) -> Repository:
    return Repository(FileStorage(tmp_path / "repo"))


def _capture(repo: Repository, db: TestDatabase, api: Api) -> None:
    capture(repo, url=db.url(OWNER), app_version=version_string(api.client.version()))


def _gate(repo: Repository) -> Gate:
    return Gate(queryset.load(repo))


def test_capture_keeps_the_api_statements(
    api_v1: tuple[Api, Path], booking_db: TestDatabase, tmp_path: Path
) -> None:
    api, _ = api_v1
    _traffic(api)
    repo = _repo(tmp_path)
    _capture(repo, booking_db, api)
    qs = queryset.load(repo)
    assert qs is not None
    texts = [s.text for s in qs.statements.values()]
    assert any("INSERT INTO booking.bookings" in t and "$1" in t for t in texts), texts
    assert all(set(s.roles) <= set(app_roles()) for s in qs.statements.values())
    assert not any(t.upper().startswith(("BEGIN", "COMMIT")) for t in texts)
    [window] = qs.windows()
    assert window.app_version is not None and window.app_version.endswith("+v1")
    # a second capture without traffic adds no calls; with traffic it does
    before = {k: s.calls for k, s in qs.statements.items()}
    _capture(repo, booking_db, api)
    again = queryset.load(repo)
    assert again is not None
    listed = next(k for k, s in again.statements.items() if "ORDER BY lower(period)" in s.text)
    assert again.statements[listed].calls == before[listed]
    _traffic(api)
    _capture(repo, booking_db, api)
    third = queryset.load(repo)
    assert third is not None and third.statements[listed].calls > before[listed]
    # --from FILE: one statement per line, comments skipped
    extra = tmp_path / "statements.sql"
    extra.write_text("-- from the API's test run\nSELECT id FROM booking.tenants WHERE slug = $1\n")
    result = capture(repo, url=None, from_file=extra)
    assert result.captures[0]["kind"] == "file" and result.captures[0]["new"] == 1


def test_a_drop_the_api_reads_fails_test_and_up_changes_nothing(
    api_v1: tuple[Api, Path], booking_db: TestDatabase, tmp_path: Path
) -> None:
    api, _ = api_v1
    _traffic(api)
    repo = _repo(tmp_path)
    _capture(repo, booking_db, api)
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "drop_booking_note", DROP_NOTE, ADD_NOTE_BACK)

    report = run_migration_tests(
        booking_db.url(OWNER), directory=directory, options=FAST, gate=_gate(repo)
    )
    assert not report.ok
    error = report.migrations[0].error or ""
    assert "0006_drop_booking_note" in error and "compatibility" in error
    assert 'column "note"' in error and "does not exist" in error
    assert "booking.bookings" in error and "statement `" in error
    assert "last seen" in error and "SQLSTATE 42703" in error

    with booking_db.connect() as conn:
        before = state(conn)
    with pytest.raises(OperationFailed) as failed:
        Runner(booking_db.url(MIGRATOR), directory=directory, options=FAST, gate=_gate(repo)).up()
    assert "0006_drop_booking_note (up) failed" in failed.value.message
    assert 'column "note"' in failed.value.message
    assert "nothing of it changed" in failed.value.message
    with booking_db.connect() as conn:
        assert state(conn) == before
    _traffic(api)  # the API still works


def test_additive_passes_expand_passes_contract_waits_for_a_capture_without_the_column(
    api_v1: tuple[Api, Path],
    booking_db: TestDatabase,
    pg_server: LocalEnvironment,
    tmp_path: Path,
) -> None:
    api, secrets = api_v1
    _traffic(api)
    repo = _repo(tmp_path)
    _capture(repo, booking_db, api)
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "booking_source", ADD_SOURCE, DROP_SOURCE)
    scaffold_rename(directory, "booking_note_remark", "booking.bookings.note=remark")

    # an additive migration passes migrate test and up, the gate having checked everything
    tested = run_migration_tests(
        booking_db.url(OWNER), directory=directory, options=FAST, gate=_gate(repo)
    )
    assert tested.migrations[0].ok, tested.migrations[0].error
    assert tested.migrations[0].compatibility is not None
    assert tested.migrations[0].compatibility["checked"] >= 5
    runner = Runner(booking_db.url(MIGRATOR), directory=directory, options=FAST, gate=_gate(repo))
    done = runner.up(to="0006")
    gate = done.migrations[0].compatibility
    assert gate is not None and gate["ok"] and gate["role"] == "booking_app"

    # the expand half of the rename passes; the API (still v1, using note) keeps serving
    runner = Runner(booking_db.url(MIGRATOR), directory=directory, options=FAST, gate=_gate(repo))
    expanded = runner.up(to="0007")
    assert expanded.migrations[0].compatibility["phase"] == "expand"  # type: ignore[index]
    _traffic(api)
    with booking_db.connect() as conn:
        rows = conn.execute("SELECT count(*) FROM booking.bookings WHERE remark = note").fetchone()
    assert rows is not None and rows[0] >= 4

    # contract: no capture window since the expand was applied
    def contract() -> None:
        Runner(booking_db.url(MIGRATOR), directory=directory, options=FAST, gate=_gate(repo)).up()

    with pytest.raises(OperationFailed, match="window began after the last deploy"):
        contract()
    _capture(repo, booking_db, api)  # its window began before the expand
    with pytest.raises(OperationFailed, match="window began after the last deploy"):
        contract()
    _traffic(api)
    _capture(repo, booking_db, api)  # v1 still reads note: a reference
    with booking_db.connect() as conn:
        before = state(conn)
    with pytest.raises(OperationFailed) as refused:
        contract()
    # the contract runs outside a transaction: the gate rehearsed it and nothing ran
    assert "removes what the deployed API still uses" in refused.value.message
    assert 'column "note"' in refused.value.message
    assert "nothing of it ran" in refused.value.message
    with booking_db.connect() as conn:
        assert state(conn) == before
    _traffic(api)

    # release v2 is deployed (it no longer reads note) and a capture sees it
    api.stop()
    v2 = _start(pg_server, booking_db, secrets, "v2")
    try:
        assert v2.client.version()["build"] == "v2"
        v2.client.wait_ready(10)
        _capture(repo, booking_db, v2)
        # v1's last requests ran in this window too (the one that saw the new version):
        # until a window wholly after it, the contract stays refused
        with pytest.raises(OperationFailed, match="removes what the deployed API still uses"):
            contract()
        assert v2.client.version()["build"] == "v2"
        _capture(repo, booking_db, v2)  # a window of v2 alone: note is in none of it
        done = Runner(
            booking_db.url(MIGRATOR), directory=directory, options=FAST, gate=_gate(repo)
        ).up()
        assert [m.version for m in done.migrations] == ["0008"]
        assert done.migrations[0].compatibility["ok"]  # type: ignore[index]
        v2.client.wait_ready(10)
    finally:
        v2.stop()
    with booking_db.connect() as conn:
        gone = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'booking.bookings'::regclass"
            " AND attname = 'note' AND NOT attisdropped"
        ).fetchone()
    assert gone == (0,)


def test_missing_extension_or_grant_is_one_sentence(booking_db: TestDatabase) -> None:
    with pytest.raises(ToolMissing) as missing:
        read_statistics(booking_db.url(OWNER), roles=app_roles(), databases=(booking_db.name,))
    message = missing.value.message
    assert "CREATE EXTENSION pg_stat_statements" in message and message.count(". ") == 0
    with pytest.raises(PermissionDenied) as denied:
        read_statistics(booking_db.url("booking_readonly"), roles=app_roles())
    assert "pg_read_all_stats" in denied.value.message
    assert "GRANT pg_read_all_stats TO booking_readonly" in (denied.value.hint or "")
