"""The client against the real stand-in over HTTP: smoke, maintenance, retries, errors."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from pydantic import SecretStr

from ptool_ops.booking.api import ApiError, BookingApi
from ptool_ops.errors import ManualActionRequired, OperationFailed, ServiceUnavailable

from .conftest import Standin


def test_smoke_with_writes_creates_and_cancels(standin: Standin) -> None:
    with standin.client() as api:
        report = api.smoke(write=True)
    assert report.ok, report.to_dict()
    assert [s.name for s in report.steps] == ["health", "ready", "version", "read", "create+cancel"]
    with standin.db.connect() as conn:
        statuses = conn.execute("SELECT status FROM booking.bookings").fetchall()
        events = conn.execute(
            "SELECT type FROM booking.events ORDER BY stream_id, version"
        ).fetchall()
    assert statuses == [("cancelled",)]
    assert [e[0] for e in events] == ["booking.created", "booking.confirmed", "booking.cancelled"]


def test_read_only_smoke_writes_nothing(standin: Standin) -> None:
    with standin.client() as api:
        report = api.smoke(write=False)
    assert report.ok and not report.wrote
    with standin.db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM booking.tenants").fetchone() == (0,)


def test_maintenance_context_turns_off_even_when_the_block_fails(standin: Standin) -> None:
    with standin.client() as api:
        fixture = api.smoke_fixture()
        tenant, token = fixture["tenant_id"], fixture["tenant_token"]
        with pytest.raises(RuntimeError, match="migration failed"), api.maintenance("migrating"):
            assert api.maintenance_state()["enabled"] is True
            assert api.list_bookings(tenant, token) == []  # reads work
            with pytest.raises(ApiError) as err:
                api.cancel_booking(tenant, token, fixture["artist_id"])
            assert err.value.status == 503
            assert "maintenance" in err.value.message
            raise RuntimeError("migration failed")
        assert api.maintenance_state()["enabled"] is False


def test_maintenance_left_on_is_reported_as_manual_action(standin: Standin) -> None:
    with (
        standin.client(attempts=1) as api,
        pytest.raises(ManualActionRequired) as err,
        api.maintenance("migrating"),
    ):
        standin.proc.terminate()
        standin.proc.wait(10)
    assert "maintenance mode is still ON" in err.value.message
    assert standin.url in err.value.message


def test_stopped_api_is_one_sentence_naming_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with (
        BookingApi(url, SecretStr("x" * 20), attempts=2) as api,
        pytest.raises(ServiceUnavailable) as err,
    ):
        api.health()
    assert err.value.message == f"GET {url}/health failed: connection refused."


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 1) twice, then 200 — a service coming back."""

    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        if type(self).calls <= 2:
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(
                b'{"status":"unavailable","reason":"starting","checks":{"database":"failed"}}'
            )
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args: object) -> None:
        pass


def test_retries_503_with_retry_after_then_succeeds() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with BookingApi(f"http://127.0.0.1:{server.server_port}", attempts=4) as api:
            assert api.health() == {"status": "ok"}
        assert _Flaky.calls == 3
        assert time.monotonic() - start >= 2  # honoured Retry-After twice
    finally:
        server.shutdown()


def test_wait_ready_times_out_with_the_reason(standin: Standin) -> None:
    with standin.db.connect() as conn:
        conn.execute("ALTER ROLE booking_app_a PASSWORD 'changed-behind-its-back'")
    with standin.client() as api, pytest.raises(ServiceUnavailable) as err:
        api.wait_ready(2, interval=0.2)
    assert "was not ready within 2 s" in err.value.message
    assert "password authentication failed" in err.value.message


class _NotJson(BaseHTTPRequestHandler):
    """Answers readiness with an HTML page: 503 (a proxy with no API behind it), or 200."""

    status = 503

    def do_GET(self) -> None:
        body = b"<html><body>Service Unavailable</body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [503, 200])
def test_readiness_answered_with_a_page_not_json(status: int) -> None:
    handler = type("Handler", (_NotJson,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with BookingApi(url, attempts=1) as api:
            if status == 503:  # not ready, with the reason: no ValueError
                state = api.ready()
                assert not state.ready
                assert state.reason == "it answered 503 without a readiness document"
                with pytest.raises(ServiceUnavailable) as err:
                    api.wait_ready(0.3, interval=0.1)
                assert err.value.message == (
                    f"{url} was not ready within 0.3 s: it answered 503 without a readiness"
                    " document."
                )
            else:  # "ready" without the contract's document: the contract is broken
                with pytest.raises(OperationFailed, match="answered no JSON object"):
                    api.ready()
                with pytest.raises(ServiceUnavailable, match="answered no JSON object"):
                    api.wait_ready(0.3, interval=0.1)
    finally:
        server.shutdown()
        server.server_close()
