"""``ptool-ops migrate ...`` end to end: exit codes, JSON, audit, backup point, test."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import (
    MIGRATOR,
    OWNER,
    Cli,
    TestDatabase,
    block_audit_event,
    block_next_finish,
)
from tests.migrate.runner_support import add_migration, invalid_indexes, migrations_copy, state

ADD_NOTE = "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
DROP_NOTE = "ALTER TABLE booking.tenants DROP COLUMN note;\n"
NO_TX = "-- ptool: no-transaction\n"


def configure(cli: Cli, db: TestDatabase, directory: Path, tmp_path: Path) -> None:
    cli.write_config(
        "[environments.t]\n"
        f'database_url = "{db.url(OWNER)}"\n'
        f'migrator_url = "{db.url(MIGRATOR)}"\n'
        f'repo_url = "file://{tmp_path / "repo"}"\n'
        f'migrations_dir = "{directory}"\n'
        "lock_timeout_ms = 500\n"
    )


def test_status_plan_up_down_verify(cli: Cli, booking_db: TestDatabase, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    configure(cli, booking_db, directory, tmp_path)

    status = cli("migrate status -e t -o json")
    assert status.exit_code == 0, status.output
    assert status.json()["counts"]["pending"] == 1

    plan = cli("migrate plan -e t -o json")
    assert plan.exit_code == 0, plan.output
    body = plan.json()
    assert body["backup_point"]["kind"] == "logical-backup"  # archive_mode is off in tests
    (pending,) = body["pending"]
    assert pending["version"] == "0006" and pending["transactional"]
    (lock,) = pending["statements"][0]["locks"]
    assert lock["table"] == "booking.tenants" and lock["mode"] == "ACCESS EXCLUSIVE"
    assert cli("migrate up -e t --dry-run -o json").json()["dry_run"] is True
    assert cli("migrate status -e t -o json").json()["counts"]["pending"] == 1

    up = cli("migrate up -e t -o json")
    assert up.exit_code == 0, up.output
    result = up.json()
    assert [m["version"] for m in result["migrations"]] == ["0006"]
    point = result["backup_point"]
    assert point["kind"] == "logical-backup"
    assert point["restore_command"] == f"ptool-ops --env t backup restore {point['ref']} --in-place"
    assert cli("backup list -e t -o json").exit_code == 0

    assert cli("migrate verify -e t").exit_code == 0
    refused = cli("migrate down -e t")
    assert refused.exit_code == 7  # destructive: needs --yes without a terminal
    down = cli("migrate down -e t --yes -o json")
    assert down.exit_code == 0, down.output
    assert [m["outcome"] for m in down.json()["migrations"]] == ["reverted"]

    actions = [e["action"] for e in cli.audit_events("t")]
    assert actions.count("migrate.up") == 1 and actions.count("migrate.down") == 1


def test_drift_repair_through_the_cli(cli: Cli, booking_db: TestDatabase, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    configure(cli, booking_db, directory, tmp_path)
    up = directory / "0003_bookings.up.sql"
    up.write_text(up.read_text() + "\n-- a comment added later\n")
    status = cli("migrate status -e t -o json")
    assert status.exit_code == 1
    assert [m["state"] for m in status.json()["migrations"]].count("drifted") == 1
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    refused = cli("migrate up -e t --no-backup-point")
    assert refused.exit_code == 7 and "0003_bookings is drifted" in refused.output
    repaired = cli("migrate repair 0003 --accept --reason 'comment only' -e t -o json")
    assert repaired.exit_code == 0, repaired.output
    assert repaired.json()["state"] == "applied"
    assert cli("migrate up -e t --no-backup-point").exit_code == 0


def test_new_scaffolds_the_next_version(cli: Cli, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    made = cli(f"migrate new bookings_status_index --no-transaction --dir {directory} -o json")
    assert made.exit_code == 0, made.output
    names = sorted(Path(p).name for p in made.json()["created"])
    assert names == [
        "0006_bookings_status_index.down.sql",
        "0006_bookings_status_index.up.sql",
        "0006_bookings_status_index.verify.sql",
    ]
    assert "-- ptool: no-transaction" in (directory / names[1]).read_text()
    assert cli(f"migrate new Bad-Name --dir {directory}").exit_code == 3
    # until the author writes the down script, lint says so: a revert must revert something
    unwritten = cli(f"migrate lint {directory} -o json")
    assert unwritten.exit_code == 1
    assert [f["rule"] for f in unwritten.json()["findings"]] == ["empty-down"]
    down = directory / names[0]
    down.write_text(down.read_text() + "DROP INDEX CONCURRENTLY booking.x_idx;\n")
    assert cli(f"migrate lint {directory}").exit_code == 0


def test_migrate_test_proves_reversibility(
    cli: Cli, booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "status_index",
        "-- ptool: no-transaction\n"
        "CREATE INDEX CONCURRENTLY bookings_status_idx ON booking.bookings (status);\n",
        "-- ptool: no-transaction\nDROP INDEX CONCURRENTLY booking.bookings_status_idx;\n",
    )
    add_migration(directory, "0007", "tenant_note", ADD_NOTE, DROP_NOTE)
    configure(cli, booking_db, directory, tmp_path)
    tested = cli("migrate test -e t -o json")
    assert tested.exit_code == 0, tested.output
    report = tested.json()
    assert [m["version"] for m in report["migrations"]] == ["0006", "0007"]
    assert all(m["ok"] for m in report["migrations"])
    assert {"indexes", "relations"} <= set(report["migrations"][0]["changed"])
    # the real database is untouched, the scratch database is gone
    assert cli("migrate status -e t -o json").json()["counts"]["pending"] == 2
    with booking_db.connect() as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%ptool_mtest%'"
        ).fetchone()
        assert left == (0,)

    (directory / "0007_tenant_note.down.sql").write_text("SELECT 1;\n")  # forgets the column
    broken = cli("migrate test -e t --source dump -o json")
    assert broken.exit_code == 1, broken.output
    report = broken.json()
    assert report["source"] == "dump"
    bad = report["migrations"][-1]
    assert not bad["reversible"] and "columns" in bad["diff"]
    assert bad["diff"]["columns"]["added"][0][:3] == ["booking", "tenants", "note"]


def test_unrecoverable_failure_prints_the_way_back(
    cli: Cli, booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "half_done",
        "-- ptool: no-transaction\n"
        "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
        "CREATE UNIQUE INDEX CONCURRENTLY tenants_name_key ON booking.tenants (name);\n",
        "-- ptool: no-transaction\nSELECT 1;\n",
    )
    with booking_db.connect() as conn:
        conn.execute(
            "INSERT INTO booking.tenants (slug, name) VALUES ('alpha', 'Same'), ('beta', 'Same')"
        )
    configure(cli, booking_db, directory, tmp_path)
    failed = cli("migrate up -e t")
    assert failed.exit_code == 9, failed.output
    assert "ptool-ops --env t backup restore" in failed.output
    with booking_db.connect() as conn:
        assert invalid_indexes(conn) == []


def test_to_is_checked_and_all_reverts_everything(
    cli: Cli, booking_db: TestDatabase, tmp_path: Path
) -> None:
    configure(cli, booking_db, migrations_copy(tmp_path), tmp_path)
    bad = cli("migrate up -e t --to 99 --no-backup-point")
    assert bad.exit_code == 2
    assert "no migration '99'" in bad.stderr and "0001, 0002" in bad.stderr
    plan = cli("migrate down -e t --all --dry-run -o json")
    assert plan.exit_code == 0, plan.output
    assert plan.json()["would_revert"] == ["0005", "0004", "0003", "0002", "0001"]
    assert cli("migrate down -e t --to 3 --dry-run -o json").json()["would_revert"] == [
        "0005",
        "0004",
    ]
    both = cli("migrate down -e t --all --to 3")
    assert both.exit_code == 2 and "exclude each other" in both.stderr


def _trail(tmp_path: Path) -> Path:
    return tmp_path / "repo" / "audit" / "t"


def test_an_audit_record_that_cannot_be_written_after_a_successful_run(
    cli: Cli, booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    configure(cli, booking_db, directory, tmp_path)
    trail = _trail(tmp_path)
    block_next_finish(trail)
    not_written = (
        f", but its audit record could not be written to file://{trail}/ (Is a directory)."
    )

    up = cli("migrate up -e t --no-backup-point -o json")
    assert up.exit_code == 9, up.output
    error = up.json()
    assert error["error"] == "audit_not_recorded"
    assert re.fullmatch(
        r"migrate up \(run [0-9a-f]{12}\) applied 0006 on 't'" + re.escape(not_written),
        error["message"],
    ), error["message"]
    assert "The operation itself succeeded" in error["hint"]
    assert "Traceback" not in up.output
    assert cli("migrate status -e t -o json").json()["counts"]["pending"] == 0  # it stays

    block_next_finish(trail)
    down = cli("migrate down -e t --yes --no-backup-point")
    assert down.exit_code == 9, down.output
    first = next(line for line in down.stderr.splitlines() if line.startswith("error:"))
    assert re.fullmatch(
        r"error: migrate down \(run [0-9a-f]{12}\) reverted 0006 on 't'" + re.escape(not_written),
        first,
    ), down.stderr
    assert "Traceback" not in down.output
    assert cli("migrate status -e t -o json").json()["counts"]["pending"] == 1

    block_next_finish(trail)
    repair = cli("migrate repair 0003 --accept --reason 'checked by hand' -e t -o json")
    assert repair.exit_code == 9, repair.output
    assert repair.json()["message"] == (
        f"the repair --accept of migration 0003 was recorded in the history of 't'{not_written}"
    )


def test_an_unwritable_audit_log_stops_a_no_transaction_migration_before_it_starts(
    cli: Cli, booking_db: TestDatabase, tmp_path: Path
) -> None:
    """Its ``started`` record comes before its ``running`` row: failing to write it leaves
    nothing to repair."""
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", NO_TX + ADD_NOTE, NO_TX + DROP_NOTE)
    configure(cli, booking_db, directory, tmp_path)
    trail = _trail(tmp_path)
    # the command's own "started" (event 1) is stored; the migration's (event 2) is not
    blocked = block_audit_event(trail, 2)
    with booking_db.connect() as conn:
        before = state(conn)
    up = cli("migrate up -e t --no-backup-point -o json")
    assert up.exit_code == 8, up.output
    assert up.json()["message"].startswith(
        f"the audit event of starting 0006_tenant_note (migrate.up) could not be written to"
        f" file://{trail}/ (Is a directory); nothing of it was run"
    )
    assert "Traceback" not in up.output
    with booking_db.connect() as conn:
        assert state(conn) == before  # no 'running' row, no column
    blocked.rmdir()
    status = cli("migrate status -e t -o json")
    assert status.exit_code == 0, status.output  # pending, not interrupted
    assert status.json()["counts"]["pending"] == 1
    assert cli("migrate up -e t --no-backup-point").exit_code == 0


def test_a_dry_run_plans_what_up_to_would_apply_and_what_it_would_refuse(
    cli: Cli, booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    add_migration(
        directory,
        "0007",
        "tenant_name_idx",
        "CREATE INDEX tenants_name_idx ON booking.tenants (name);\n",  # a lint error
        "DROP INDEX booking.tenants_name_idx;\n",
    )
    configure(cli, booking_db, directory, tmp_path)
    everything = cli("migrate up -e t --dry-run -o json")
    assert everything.exit_code == 7
    assert any("require-concurrent-index-creation" in b for b in everything.json()["blocked"])

    to_0006 = cli("migrate up -e t --dry-run --to 6 -o json")
    assert to_0006.exit_code == 0, to_0006.output
    plan = to_0006.json()
    assert [p["version"] for p in plan["pending"]] == ["0006"] and plan["blocked"] == []

    # a down script up would refuse to start with (its way back) is a reason of the plan too
    (directory / "0006_tenant_note.down.sql").write_text(
        "DROP INDEX CONCURRENTLY booking.tenants_note_idx;\n"
    )
    refused = cli("migrate up -e t --dry-run --to 6 -o json")
    assert refused.exit_code == 7
    assert refused.json()["blocked"] == [
        "0006_tenant_note.down.sql:1: DROP INDEX CONCURRENTLY cannot run inside a transaction"
        " block, but the file runs in one transaction"
    ]
    real = cli("migrate up -e t --to 6 --no-backup-point")
    assert real.exit_code == 7 and "0006_tenant_note.down.sql:1" in real.stderr
    assert cli("migrate status -e t -o json").json()["counts"]["pending"] == 2
