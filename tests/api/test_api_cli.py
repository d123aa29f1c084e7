"""`ptool-ops api ...` and the API part of `ptool-ops status`, through the real CLI."""

from __future__ import annotations

import socket
import time

from ..conftest import CANARY, OWNER, Cli, block_next_finish
from .conftest import Standin


def _env_for(cli: Cli, standin: Standin, name: str = "staging") -> None:
    cli.write_config(
        f"[environments.{name}]\n"
        f'database_url = "{standin.db.url(OWNER)}"\n'
        f'api_url = "{standin.url}"\n'
    )
    cli.env["PTOOL_API_TOKEN"] = standin.ops_token


def test_local_up_starts_the_api_and_smoke_passes(cli: Cli) -> None:
    up = cli("local up -o json")
    assert up.exit_code == 0, up.output
    assert up.json()["api_url"].startswith("http://127.0.0.1:")
    smoke = cli("api smoke -o json")
    assert smoke.exit_code == 0, smoke.output
    assert smoke.json()["wrote"] is True
    assert [s["name"] for s in smoke.json()["steps"]][-1] == "create+cancel"
    status = cli("status -o json")
    # a fresh environment has no backups yet; nothing else may be wrong
    assert {p.split(":")[0] for p in status.json()["problems"]} == {
        "backup.age",
        "pitr.window",
        "drill.age",
    }, status.output
    api = status.json()["api"]
    assert api["alive"] and api["ready"] and api["maintenance"] is False
    assert api["role"] == "booking_app_a"
    url = up.json()["api_url"]

    assert cli("local down").exit_code == 0
    stopped = cli("--env local api smoke")
    assert stopped.exit_code == 5
    assert url in stopped.stderr
    assert stopped.stderr.count("error:") == 1
    assert "Traceback" not in stopped.output


def test_api_smoke_against_an_unreachable_url_names_it(cli: Cli) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cli.write_config(f'[environments.staging]\napi_url = "{url}"\n')
    result = cli("api smoke --env staging")
    assert result.exit_code == 5  # the API cannot be reached: README's code for that
    assert f"{url}/health failed: connection refused" in result.output
    assert CANARY not in result.output
    as_json = cli("api smoke --env staging -o json")
    assert as_json.exit_code == 5
    assert as_json.json()["steps"][0]["unreachable"] is True


def test_smoke_and_status_say_when_version_breaks_the_contract(cli: Cli) -> None:
    """/version without a field the contract promises: one sentence, no traceback."""
    import http.server
    import json
    import threading

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # health and readiness fine, /version short of fields
            body = {
                "/health": {"status": "ok"},
                "/health/ready": {
                    "status": "ready",
                    "checks": {"database_role": "booking_app_a", "latency_ms": 1},
                },
                "/version": {"version": "1.2.3"},
            }.get(self.path.split("?")[0], {})
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cli.write_config(f'[environments.staging]\napi_url = "{url}"\n')
        smoke = cli("api smoke --env staging --read-only")
        assert smoke.exit_code == 1, smoke.output
        assert "/version answered without build, schema_version_expected" in smoke.output
        assert "Traceback" not in smoke.output
        status = cli("status --env staging -o json")
        assert "Traceback" not in status.output
        assert any("without build" in p for p in status.json()["problems"])
    finally:
        server.shutdown()


def test_maintenance_commands_and_status(cli: Cli, standin: Standin) -> None:
    _env_for(cli, standin)
    on = cli("--env staging api maintenance on --reason 'migration 0007'")
    assert on.exit_code == 0, on.output
    state = cli("--env staging api maintenance status -o json").json()
    assert state["enabled"] is True and state["reason"] == "migration 0007"
    status = cli("--env staging status -o json").json()
    assert status["api"]["maintenance"] is True
    smoke = cli("--env staging api smoke --write -o json")
    assert smoke.exit_code == 1
    assert any("503" in s["detail"] for s in smoke.json()["steps"] if not s["ok"])
    assert cli("--env staging api maintenance off").exit_code == 0
    assert cli("--env staging api smoke --write").exit_code == 0
    audit = cli.audit_events("staging")
    assert [r["action"] for r in audit] == ["api.maintenance.on", "api.maintenance.off"]


def test_protected_environment_asks_before_maintenance_and_smokes_read_only(
    cli: Cli, standin: Standin
) -> None:
    _env_for(cli, standin, "prod")
    refused = cli("--env prod api maintenance on --reason x")
    assert refused.exit_code == 7
    smoke = cli("--env prod api smoke -o json")
    assert smoke.exit_code == 0, smoke.output
    assert smoke.json()["wrote"] is False
    with standin.db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM booking.bookings").fetchone() == (0,)


def test_api_ready_reports_a_broken_login(cli: Cli, standin: Standin) -> None:
    _env_for(cli, standin)
    assert cli("--env staging api ready").exit_code == 0
    with standin.db.connect() as conn:
        conn.execute("ALTER ROLE booking_app_a PASSWORD 'rotated-without-telling-the-api'")
    time.sleep(1.1)  # the stand-in caches a readiness result for one second
    result = cli("--env staging api ready --wait 2 -o json")
    assert result.exit_code == 5
    assert "password authentication failed" in result.output
    status = cli("--env staging status -o json")
    assert status.exit_code == 1
    assert any("not ready" in p for p in status.json()["problems"])


def test_api_ready_needs_no_ops_token(cli: Cli, standin: Standin) -> None:
    cli.write_config(
        "[environments.staging]\n"
        f'database_url = "{standin.db.url(OWNER)}"\n'
        f'api_url = "{standin.url}"\n'
        'api_token_secret = "env:PTOOL_TEST_NO_SUCH_TOKEN"\n'  # a secret that cannot be read
    )
    cli.env.pop("PTOOL_API_TOKEN", None)
    cli.env.pop("PTOOL_TEST_NO_SUCH_TOKEN", None)
    ready = cli("--env staging api ready -o json")
    assert ready.exit_code == 0, ready.output
    assert ready.json()["ready"] is True
    needs_it = cli("--env staging api maintenance on --reason x")  # this one needs it
    assert needs_it.exit_code == 3, needs_it.output
    assert "PTOOL_TEST_NO_SUCH_TOKEN" in needs_it.stderr


def test_maintenance_switched_but_not_recorded_is_exit_9(cli: Cli, standin: Standin) -> None:
    _env_for(cli, standin)
    trail = cli.cwd / ".ptool" / "audit" / "staging"  # no repository: the trail is here
    block_next_finish(trail)  # "started" is stored; the "ok" after the switch is not
    on = cli("--env staging api maintenance on --reason 'migration 0007' -o json")
    assert on.exit_code == 9, on.output
    error = on.json()
    assert error["error"] == "audit_not_recorded"
    assert error["message"] == (
        "maintenance mode was switched on in 'staging', but its audit record could not be"
        f" written to file://{trail}/ (Is a directory)."
    )
    assert "Traceback" not in on.output
    assert cli("--env staging api maintenance status -o json").json()["enabled"] is True
    block_next_finish(trail)
    off = cli("--env staging api maintenance off")
    assert off.exit_code == 9, off.output
    assert "maintenance mode was switched off in 'staging', but" in off.stderr
    assert cli("--env staging api maintenance status -o json").json()["enabled"] is False
