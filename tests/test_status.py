"""``ptool-ops status`` against its thresholds on a local environment: healthy exits 0; each
fault planted on purpose makes it exit 1 naming the cause, and the Prometheus file says the
same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.booking.invariants import CATALOG_CHECKS
from ptool_ops.local import api as local_api
from ptool_ops.local.env import LocalEnvironment
from tests.conftest import Cli, local_server


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with local_server(tmp_path_factory.mktemp("status") / "local") as env:
        yield env


def configure(cli: Cli, local: LocalEnvironment) -> Path:
    cli.write_config(f'[environments.local]\nlocal_dir = "{local.paths.root}"\n')
    return cli.cwd / "status.prom"


def status(cli: Cli, prom: Path) -> tuple[int, list[str], str]:
    result = cli(f"status -o json --prometheus {prom}")
    return result.exit_code, result.json()["problems"], prom.read_text()


def owner(local: LocalEnvironment) -> psycopg.Connection[object]:
    return psycopg.connect(local.facts.role_url(privileges.OWNER), autocommit=True)


def test_healthy_then_each_fault_is_named(cli: Cli, local: LocalEnvironment) -> None:
    prom = configure(cli, local)
    assert cli("local seed --tenants 2 --bookings 300").exit_code == 0
    assert cli("backup create").exit_code == 0
    assert cli("pitr base-backup").exit_code == 0
    drilled = cli("drill run -o json")
    assert drilled.exit_code == 0, drilled.output
    parts = {p["kind"]: p for p in drilled.json()["parts"]}
    assert parts.keys() == {"logical", "point-in-time"}
    assert all(p["ok"] and p["rto_s"] > 0 for p in parts.values())
    assert [d["id"] for d in cli("drill list -o json").json()] == [drilled.json()["id"]]
    code, problems, text = status(cli, prom)
    assert (code, problems) == (0, []), problems
    assert 'ptool_status_ok{environment="local"} 1' in text
    assert 'ptool_check_ok{environment="local",check="backup.age"} 1' in text
    assert 'ptool_check_ok{environment="local",check="drill.age"} 1' in text

    # a migration left 'running' (a no-transaction run killed half-way)
    with owner(local) as conn:
        conn.execute("SET ROLE booking_migrator")
        newest = conn.execute("SELECT max(version) FROM ptool_ops.migration_history").fetchone()
        assert newest is not None
        conn.execute(
            "UPDATE ptool_ops.migration_history SET outcome = 'running' WHERE version = %s",
            (newest[0],),
        )
    try:
        code, problems, text = status(cli, prom)
        assert code == 1 and any(p.startswith("migrations.interrupted") for p in problems)
        assert 'check="migrations.interrupted"} 0' in text
    finally:
        with owner(local) as conn:
            conn.execute("SET ROLE booking_migrator")
            conn.execute(
                "UPDATE ptool_ops.migration_history SET outcome = 'applied' WHERE version = %s",
                (newest[0],),
            )

    # an invariant violation: row-level security switched off
    with owner(local) as conn:
        conn.execute("SET ROLE booking_migrator")
        conn.execute("ALTER TABLE booking.bookings DISABLE ROW LEVEL SECURITY")
    try:
        code, problems, text = status(cli, prom)
        assert code == 1 and any("invariant violation" in p for p in problems), problems
        assert 'ptool_invariant_violations{environment="local",invariant="rls_enabled"} 1' in text
    finally:
        with owner(local) as conn:
            conn.execute("SET ROLE booking_migrator")
            conn.execute("ALTER TABLE booking.bookings ENABLE ROW LEVEL SECURITY")

    # the API stopped
    local_api.stop(local.paths)
    try:
        code, problems, text = status(cli, prom)
        assert code != 0 and any("API" in p for p in problems), problems
    finally:
        local_api.start(local.paths, local.facts.require_running().port)

    # the newest (only) backup deleted
    backups = sorted((local.paths.repo / "backups").iterdir())
    manifest = backups[-1] / "manifest.json"
    kept = manifest.read_bytes()
    manifest.unlink()
    try:
        code, problems, text = status(cli, prom)
        assert code == 1 and any(p.startswith("backup.age") for p in problems), problems
        assert 'check="backup.age"} 0' in text and 'ptool_status_ok{environment="local"} 0' in text
    finally:
        manifest.write_bytes(kept)
    code, problems, _ = status(cli, prom)
    assert (code, problems) == (0, [])

    # a violation only a check that reads every row finds: a gap in an event stream (events
    # are append-only, so it stays; only --invariants reads it)
    with owner(local) as conn:
        conn.execute(
            "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
            " SELECT tenant_id, stream_id, max(version) + 5, 'booking.noted', '{}'"
            " FROM booking.events GROUP BY tenant_id, stream_id LIMIT 1"
        )
    quick = cli("status -o json")
    assert quick.exit_code == 0 and quick.json()["invariants"]["scope"] == "catalog"
    assert {c["name"] for c in quick.json()["invariants"]["checks"]} == set(CATALOG_CHECKS)
    full = cli("status --invariants -o json")
    assert full.exit_code == 1 and full.json()["invariants"]["scope"] == "all"
    assert any("invariant violation" in p for p in full.json()["problems"])
    (gap,) = [c for c in full.json()["invariants"]["checks"] if c["total"]]
    assert gap["name"] == "event_streams_contiguous"


def test_a_drill_record_that_is_not_one_is_left_out_with_a_warning(
    cli: Cli, local: LocalEnvironment
) -> None:
    """Hand-edited or damaged evidence in drills/ (a key missing, a time without a zone, a
    part without its kind, not JSON) is named and left out by status, drill list and the
    report alike -- never a traceback."""
    configure(cli, local)
    drills = local.paths.repo / "drills"
    drills.mkdir(exist_ok=True)
    bad = {
        "no-id.json": '{"started_at": "2026-01-01T00:00:00+00:00", "ok": true, "parts": []}',
        "naive.json": '{"id": "x", "started_at": "2026-01-01T00:00:00", "ok": true}',
        "part.json": '{"id": "y", "started_at": "2026-01-01T00:00:00+00:00", "ok": true,'
        ' "parts": [{"ok": true, "rto_s": 1.5}]}',
        "text.json": "not json",
    }
    for name, text in bad.items():
        (drills / name).write_text(text)
    # older than any drill a test ran: status stops reading at the newest that passed
    old = drills / "20000101T000000Z-0000.json"
    old.write_text('{"id": "old", "ok": true}')
    try:
        before = cli("drill list -o json")
        assert before.exit_code == 0, before.output
        assert not {d["id"] for d in before.json()} & {"x", "y"}
        for name in bad:
            assert f"drills/{name} is not a drill record" in before.stderr, before.stderr
        assert "drills/no-id.json is not a drill record (id: field required)" in before.stderr
        assert "(started_at: input should have timezone info)" in before.stderr
        assert "(parts.0.kind: field required)" in before.stderr
        assert f"drills/{old.name} is not a drill record" in before.stderr
        checked = cli("status -o json")
        assert checked.exit_code in (0, 1), checked.output
        assert "Traceback" not in checked.output and "is not a drill record" in checked.stderr
        passed = any(d["ok"] for d in before.json())  # the first test's drill, when it ran
        assert (old.name in checked.stderr) is not passed, checked.stderr
        page = cli.cwd / "report.html"
        made = cli(f"report --html {page} -o json")
        assert made.exit_code in (0, 1) and page.exists(), made.output
        assert "Traceback" not in made.output
    finally:
        for name in bad:
            (drills / name).unlink()
        old.unlink()
