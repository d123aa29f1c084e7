"""The embedded local environment, end to end through the CLI, on a real PostgreSQL."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.errors import ToolMissing
from ptool_ops.pg import bundled_bin_dir, find_tool, tool_invocation

from .conftest import HARNESS, Cli


def superuser(cli: Cli) -> psycopg.Connection[tuple[object, ...]]:
    """The harness's own superuser session, to inspect the server a test brought up."""
    url = cli("local url postgres -o json").json()["url"]
    return psycopg.connect(url, autocommit=True, application_name=HARNESS)


def test_up_seed_status_down_up_keeps_data(cli: Cli) -> None:
    up = cli("local up -o json")
    assert up.exit_code == 0, up.output
    first = up.json()
    assert first["started"] is True
    assert first["schema_version"] is not None
    assert first["applied_migrations"]

    again = cli("local up -o json")  # idempotent: nothing to do the second time
    assert again.exit_code == 0
    assert again.json()["started"] is False
    assert again.json()["applied_migrations"] == []
    assert again.json()["port"] == first["port"]

    seeded = cli("local seed --tenants 3 --bookings 2000 -o json")
    assert seeded.exit_code == 0, seeded.output

    # a fresh environment has no backup yet: status names both missing kinds
    bare = cli("status -o json")
    assert bare.exit_code == 1, bare.output
    assert {p.split(":")[0] for p in bare.json()["problems"]} == {
        "backup.age",
        "pitr.window",
        "drill.age",
    }
    assert cli("backup create").exit_code == 0
    assert cli("pitr base-backup").exit_code == 0
    assert cli("drill run").exit_code == 0
    prom = cli.cwd / "metrics.prom"
    status = cli(f"status --invariants -o json --prometheus {prom}")
    assert status.exit_code == 0, status.output
    assert 'ptool_status_ok{environment="local"} 1' in prom.read_text()
    assert 'ptool_bookings{environment="local",status="confirmed"}' in prom.read_text()
    report = status.json()
    assert report["ok"] is True
    assert report["database"]["reachable"] is True
    assert report["database"]["server_version"].startswith("18")
    assert report["database"]["schema_version"] == first["schema_version"]
    assert report["invariants"]["violation_count"] == 0
    assert {c["name"] for c in report["invariants"]["checks"]} >= {
        "no_overlapping_bookings",
        "tenant_rows_exist",
        "rls_enabled",
        "event_streams_contiguous",
        "no_invalid_objects",
    }

    with superuser(cli) as conn:
        before = conn.execute("SELECT count(*) FROM booking.bookings").fetchone()
    assert before == (2000,)

    assert cli("local down").exit_code == 0
    assert cli("local down -o json").json()["stopped"] is False  # already stopped: fine
    stopped = cli("status -o json")
    assert stopped.exit_code == 4
    assert "not running" in stopped.json()["database"]["error"]

    assert cli("local up").exit_code == 0
    with superuser(cli) as conn:
        assert conn.execute("SELECT count(*) FROM booking.bookings").fetchone() == before
    cli("local down")


def test_overlap_is_rejected_and_disabled_rls_is_reported(cli: Cli) -> None:
    assert cli("local up").exit_code == 0
    assert cli("local seed --tenants 2 --bookings 200").exit_code == 0
    with superuser(cli) as conn:
        tenant, artist, project, period = conn.execute(
            "SELECT tenant_id, artist_id, project_id, period FROM booking.bookings "
            "WHERE status = 'confirmed' LIMIT 1"
        ).fetchone() or (None, None, None, None)
        with pytest.raises(psycopg.errors.ExclusionViolation):
            conn.execute(
                "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period, status)"
                " VALUES (%s, %s, %s, %s, 'confirmed')",
                (tenant, artist, project, period),
            )
        conn.execute("ALTER TABLE booking.projects DISABLE ROW LEVEL SECURITY")
    result = cli("status -o json")
    assert result.exit_code == 1
    checks = {c["name"]: c for c in result.json()["invariants"]["checks"]}
    assert checks["rls_enabled"]["total"] == 1
    assert "projects" in checks["rls_enabled"]["violations"][0]["detail"]
    text = cli("status")
    assert "unhealthy" in text.stdout
    assert "rls_enabled" in text.stdout


def test_server_is_configured_for_wal_archiving_and_password_auth(cli: Cli) -> None:
    assert cli("local up").exit_code == 0
    root = cli.cwd / ".ptool" / "local"
    secrets = json.loads((root / "secrets.json").read_text())
    assert stat.S_IMODE((root / "secrets.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "pgpass").stat().st_mode) == 0o600
    port = cli("local status -o json").json()["server"]["port"]
    with superuser(cli) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["wal_level", "archive_mode", "listen_addresses", "password_encryption"],),
            ).fetchall()
        )
        assert settings == {
            "wal_level": "replica",
            "archive_mode": "on",
            "listen_addresses": "127.0.0.1",
            "password_encryption": "scram-sha-256",
        }
        conn.execute("SELECT pg_switch_wal()")  # the archiver copies the finished segment
        rules = conn.execute(
            "SELECT type, user_name, auth_method FROM pg_hba_file_rules"
        ).fetchall()
    assert ("host", ["all"], "trust") not in rules
    assert all(method == "scram-sha-256" for kind, _, method in rules if kind == "host")

    # every login role: the right password works over TCP, a wrong one does not
    for role in privileges.login_roles():
        password = secrets["passwords"][role]
        with psycopg.connect(
            host="127.0.0.1", port=port, user=role, password=password, dbname="booking"
        ) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                host="127.0.0.1", port=port, user=role, password="wrong", dbname="booking"
            )
    # no password at all is refused too (no trust over TCP, even for the superuser)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="booking")

    # Neon's model: a NOLOGIN neon_superuser, the owner role a member of it, no superuser
    with superuser(cli) as conn:
        platform = conn.execute(
            "SELECT rolname, rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication,"
            " rolbypassrls FROM pg_roles WHERE rolname IN ('neon_superuser', 'booking_owner')"
            " ORDER BY 1"
        ).fetchall()
        groups = conn.execute(
            "SELECT roleid::regrole::text, admin_option FROM pg_auth_members"
            " WHERE member = 'neon_superuser'::regrole ORDER BY 1"
        ).fetchall()
        owner = conn.execute(
            "SELECT datdba::regrole::text, pg_has_role('booking_owner', 'neon_superuser',"
            " 'MEMBER') FROM pg_database WHERE datname = 'booking'"
        ).fetchone()
        superusers = conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper").fetchall()
    assert platform == [
        ("booking_owner", False, True, True, True, True, True),
        ("neon_superuser", False, False, True, True, True, True),
    ]
    assert groups == [
        ("pg_create_subscription", False),
        ("pg_monitor", True),
        ("pg_read_all_data", False),
        ("pg_signal_backend", True),
        ("pg_write_all_data", False),
    ]
    assert owner == ("booking_owner", True)
    assert superusers == [("postgres",)]

    # the archiver runs 'ptool-ops wal push' into the local repository's WAL archive
    archive = root / "repo" / "pitr" / "wal" / "00000001"
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list(archive.glob("*.zst")):
        time.sleep(0.2)
    assert list(archive.glob("*.zst")), "no WAL segment was archived"
    identity = json.loads((archive.parent / "archive.json").read_text())
    assert identity["major"] == 18 and int(identity["system_identifier"]) > 0
    cli("local down")


def test_port_taken_is_a_clear_conflict(cli: Cli) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli(f"local up --port {port}")
    assert result.exit_code == 6
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr
    assert "Traceback" not in result.output
    assert cli("local status -o json").json()["server"]["running"] is False


def test_reset_with_yes_deletes_everything(cli: Cli) -> None:
    assert cli("local up").exit_code == 0
    assert cli("local reset --dry-run -o json").json()["dry_run"] is True
    assert cli("local status -o json").json()["server"]["running"] is True
    result = cli("local reset --yes")
    assert result.exit_code == 0, result.output
    state = cli("local status -o json").json()["server"]
    assert state == {**state, "running": False, "initialised": False}
    assert not (cli.cwd / ".ptool" / "local" / "secrets.json").exists()


def test_url_has_no_password_and_pgpass_supplies_it(cli: Cli) -> None:
    assert cli("local up").exit_code == 0
    secrets = json.loads((cli.cwd / ".ptool/local/secrets.json").read_text())
    url = cli("local url booking_app_a -o json").json()
    assert secrets["passwords"]["booking_app_a"] not in url["url"]
    psql = bundled_bin_dir()
    assert psql is not None
    out = subprocess.run(
        [str(psql / "psql"), url["url"], "-Atc", "select current_user"],
        env={"PGPASSFILE": url["pgpassfile"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "booking_app_a"
    bad = cli("local url nobody")
    assert bad.exit_code == 3
    cli("local down")


def test_tool_discovery_prefers_new_enough_tools_and_explains_failures(tmp_path: Path) -> None:
    bundled = find_tool("pg_dump", server_major=18)
    assert bundled.major >= 18
    with pytest.raises(ToolMissing) as err:
        find_tool("pg_dump", server_major=99)
    assert "older than the server's 99" in err.value.message
    with pytest.raises(ToolMissing) as err:
        find_tool("pg_dump", server_major=18, need_tls=True)
    assert "without TLS" in err.value.message or "older than" in err.value.message


def test_tool_invocation_keeps_the_password_out_of_argv() -> None:
    conninfo, env = tool_invocation("postgresql://u:s3cr3t-value@db.example:5432/booking")
    assert "s3cr3t-value" not in conninfo
    assert env["PGPASSWORD"] == "s3cr3t-value"
