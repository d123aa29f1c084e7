"""``ptool-ops tour``, the README's first command: end to end as a subprocess in a fresh
directory, checked by querying what it left behind, not by its prose alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.local.facts import LocalFacts, local_secret_values

from .conftest import CANARY, Cli, _seen_output, add_canaries, superuser_logins


def _ptool(cwd: Path, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_") and k != "COLUMNS"}
    # a secret setting of the shell the tour runs in: its commands must not use it, and
    # nothing may print it
    env["PTOOL_API_TOKEN"] = CANARY
    return subprocess.run(
        [sys.executable, "-m", "ptool_ops", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_tour_brings_back_every_deleted_booking(tmp_path: Path) -> None:
    work = tmp_path / "tour"
    local = work / ".ptool" / "local"
    try:
        run = _ptool(
            tmp_path, "tour", "--dir", "tour", "--keep", "--tenants", "3", "--bookings", "300"
        )
        _seen_output.append(run.stdout + run.stderr)  # the suite's canary check reads it
        add_canaries(*local_secret_values(local))
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert "ignoring PTOOL_API_TOKEN" in run.stdout

        # what is in the database now, as the operator: the tenant whose bookings came back,
        # and every booking the event store says was created, there again
        with psycopg.connect(LocalFacts(local).role_url(privileges.OWNER)) as conn:
            recovered = conn.execute(
                "SELECT t.slug, count(*) FROM booking.events e"
                " JOIN booking.tenants t ON t.id = e.tenant_id"
                " WHERE e.type = 'booking.recovered' GROUP BY t.slug"
            ).fetchall()
            assert len(recovered) == 1, recovered
            slug, deleted = recovered[0]
            assert deleted > 0
            lost = conn.execute(
                "SELECT count(*) FROM booking.events e WHERE e.type = 'booking.created'"
                " AND NOT EXISTS (SELECT 1 FROM booking.bookings b WHERE b.id = e.stream_id)"
            ).fetchone()
            assert lost == (0,)
            back = conn.execute(
                "SELECT count(*) FROM booking.bookings b JOIN booking.events e"
                " ON e.stream_id = b.id AND e.type = 'booking.recovered'"
                " AND e.tenant_id = b.tenant_id"
            ).fetchone()
            assert back == (deleted,)
        # and what the tour said of it: the three counts, from the commands' results
        assert (
            f"every deleted booking is back -- {slug}: {deleted} bookings before the accident,"
            f" 0 after it, {deleted} after recovery"
        ) in run.stdout
        for typed in (
            "$ ptool-ops local up",
            f"$ ptool-ops recover tenant {slug} --as-of ",
            "$ ptool-ops secrets rotate app-db",
            "$ ptool-ops audit log",
            "$ ptool-ops report --html tour-report.html",
        ):
            assert typed in run.stdout
        assert "DELETE " + str(deleted) in run.stdout
        assert "during the rotation: none failed" in run.stdout
        assert (work / "tour-report.html").is_file()

        trail = _ptool(work, "audit", "log", "--action", "recover.tenant", "-o", "json")
        assert trail.returncode == 0, trail.stderr
        assert [e["outcome"] for e in json.loads(trail.stdout)] == ["started", "ok"]
        assert superuser_logins(local / "log" / "server.log") == []
    finally:
        if (local / "pgdata").exists():
            for copy in sorted((work / ".ptool" / "restores").glob("*")):
                _ptool(work, "pitr", "drop", copy.name, "--yes", timeout=60)
            _ptool(work, "local", "down", timeout=60)


@pytest.mark.parametrize(
    ("setup", "argv", "code", "says"),
    [
        ("file", "tour --dir mine", 6, "not empty and was not made by a tour"),
        ("local", "tour --dir .", 6, "not empty and was not made by a tour"),
        ("none", "--env staging tour", 3, "local environment of its own"),
    ],
)
def test_the_tour_leaves_other_environments_alone(
    cli: Cli, setup: str, argv: str, code: int, says: str
) -> None:
    cli.write_config("[environments.staging]\n")
    keep = cli.cwd / ("mine/notes.txt" if setup == "file" else ".ptool/local/keep")
    keep.parent.mkdir(parents=True)
    keep.write_text("data")
    result = cli(argv)
    assert result.exit_code == code, result.output
    assert says in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert "Traceback" not in result.output
    assert keep.read_text() == "data"
    assert not (cli.cwd / "ptool-tour").exists()


def test_the_tour_dry_run_lists_its_chapters(cli: Cli) -> None:
    result = cli("tour --dry-run -o json")
    assert result.exit_code == 0, result.output
    plan = result.json()
    assert plan["dry_run"] is True
    assert "Recover exactly those rows" in plan["chapters"]
    assert not (cli.cwd / "ptool-tour").exists()
