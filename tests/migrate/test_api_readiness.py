"""The API readiness check after each migration, as ``runner_for`` wires it from an
environment: it needs no ops token (``/health/ready`` takes none), so a token secret that
is missing or cannot be fetched neither skips the check nor rolls a good migration back;
and a proxy's non-JSON 503 is "not ready", rolled back like any other."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops.environment import Environment
from ptool_ops.errors import OperationFailed
from ptool_ops.migrate.service import api_readiness, runner_for
from ptool_ops.settings import EnvironmentSettings
from tests.conftest import MIGRATOR, TestDatabase
from tests.migrate.runner_support import add_migration, migrations_copy, state

ADD_NOTE = "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
DROP_NOTE = "ALTER TABLE booking.tenants DROP COLUMN note;\n"
READY = b'{"status": "ready", "reason": null, "checks": {"database": "ok"}}'
NOT_READY = b'{"status": "unavailable", "reason": "schema not understood", "checks": {}}'
PROXY_PAGE = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"


class _Api(http.server.BaseHTTPRequestHandler):
    """A stand-in API that is not ready while booking.tenants has a note column (as if the
    release could not cope with it), answering as the contract says (``json``) or through
    a proxy's error page (``html``); ``ready``: always ready."""

    conninfo = ""
    mode = "json"

    def do_GET(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'booking.tenants'::regclass"
                " AND attname = 'note' AND NOT attisdropped"
            ).fetchone()
        if self.mode == "ready" or row == (0,):
            status, body, kind = 200, READY, "application/json"
        elif self.mode == "html":
            status, body, kind = 503, PROXY_PAGE, "text/html"
        else:
            status, body, kind = 503, NOT_READY, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def _serving(db: TestDatabase, mode: str) -> Iterator[str]:
    handler = type("Handler", (_Api,), {"conninfo": db.url(MIGRATOR), "mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: token secrets that cannot be had: missing (ConfigError), Secrets Manager unreachable
#: (ServiceUnavailable)
UNFETCHABLE = ["env:PTOOL_TEST_NO_SUCH_TOKEN", "aws-sm:ptool/t/booking/api-token"]


def _env(db: TestDatabase, directory: Path, tmp_path: Path, **settings: Any) -> Environment:
    return Environment(
        EnvironmentSettings(
            name="t",
            kind="postgres",
            migrator_url=db.url(MIGRATOR),
            migrations_dir=directory,
            audit_dir=tmp_path / "audit",
            api_ready_timeout_s=1,
            aws_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
            **settings,
        )
    )


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a secret fetched from Secrets Manager, it would fail fast, never reach AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("PTOOL_TEST_NO_SUCH_TOKEN", raising=False)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("json", "schema not understood"), ("html", "it answered 503 without a readiness document")],
)
@pytest.mark.parametrize("token_secret", UNFETCHABLE)
def test_an_unready_api_rolls_back_whatever_the_token_secret(
    booking_db: TestDatabase, tmp_path: Path, mode: str, reason: str, token_secret: str
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    with booking_db.connect() as conn:
        before, _ = state(conn)
    with _serving(booking_db, mode) as url:
        env = _env(booking_db, directory, tmp_path, api_url=url, api_token_secret=token_secret)
        with pytest.raises(OperationFailed, match="API was not ready after 0006") as err:
            runner_for(env, take_backup=False).up()
    assert f"was not ready within 1 s: {reason}" in err.value.message
    assert "API is ready again" in err.value.message
    with booking_db.connect() as conn:
        after, rows = state(conn)
    assert after == before
    assert [r[3] for r in rows if r[0] == "0006"] == ["reverted"]


@pytest.mark.parametrize("token_secret", UNFETCHABLE)
def test_a_ready_api_keeps_the_migration_though_its_token_secret_cannot_be_fetched(
    booking_db: TestDatabase, tmp_path: Path, token_secret: str
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    with _serving(booking_db, "ready") as url:
        env = _env(booking_db, directory, tmp_path, api_url=url, api_token_secret=token_secret)
        result = runner_for(env, take_backup=False).up()
    assert [(m.version, m.outcome) for m in result.migrations] == [("0006", "applied")]


def test_an_environment_without_an_api_has_nothing_to_wait_for(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    env = _env(booking_db, migrations_copy(tmp_path), tmp_path)
    assert not env.has_api
    assert api_readiness(env, 1, lambda message: None)() is None
