"""Honest runs: versions checked, confirmed lists held to, downs that must do what they say,
every script checked before the first statement, partial runs told as such, interrupted
migrations refused until repaired."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ptool_ops.errors import ManualActionRequired, OperationFailed, Refused, UsageError
from ptool_ops.migrate.history import MigrationState
from ptool_ops.migrate.runner import Runner
from tests.conftest import MIGRATOR, TestDatabase
from tests.migrate.runner_support import FAST, add_migration, migrations_copy, state

ADD_NOTE = "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
DROP_NOTE = "ALTER TABLE booking.tenants DROP COLUMN note;\n"
NO_TX = "-- ptool: no-transaction\n"


def runner(db: TestDatabase, directory: Path) -> Runner:
    return Runner(db.url(MIGRATOR), directory=directory, options=FAST)


def _transactional(db: TestDatabase, version: str) -> bool | None:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT transactional FROM ptool_ops.migration_history WHERE version = %s",
            (version,),
        ).fetchone()
    assert row is not None
    return None if row[0] is None else bool(row[0])


def test_to_names_a_known_version(booking_db: TestDatabase, tmp_path: Path) -> None:
    run = runner(booking_db, migrations_copy(tmp_path))
    with pytest.raises(UsageError, match=r"no migration '99'.*0001, 0002, 0003, 0004, 0005") as e:
        run.up(to="99")
    assert e.value.exit_code == 2
    # "3" means 0003: down --to 3 reverts what came after it, newest first
    assert run.would_revert(to="3") == ["0005", "0004"]
    reverted = run.down(to="3")
    assert [m.version for m in reverted.migrations] == ["0005", "0004"]
    assert run.status().current == "0003"
    assert [m.version for m in run.up(to="0004").migrations] == ["0004"]
    # 0 (or --all): every migration
    assert run.would_revert(to="0") == ["0004", "0003", "0002", "0001"]


def test_the_confirmed_list_is_what_runs(booking_db: TestDatabase, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    run = runner(booking_db, directory)
    with booking_db.connect() as conn:
        before = state(conn)
    with pytest.raises(Refused, match="you confirmed 0007, the database now needs 0006"):
        run.up(expect=["0007"])
    run.up(expect=["0006"])
    with pytest.raises(Refused, match="nothing was changed"):
        run.down(steps=2, expect=["0006"])  # someone confirmed one, two would go
    assert run.status().current == "0006"
    run.down(expect=["0006"])
    with booking_db.connect() as conn:
        assert state(conn)[0] == before[0]


def test_a_deliberate_down_must_find_what_it_drops(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    """A no-transaction down whose DROP INDEX names an index that does not exist fails --
    "never created" is skipped only when undoing a failed up -- and the migration stays
    applied, with its index."""
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "tenant_name_idx",
        NO_TX + "CREATE INDEX CONCURRENTLY tenants_name_idx ON booking.tenants (name);\n",
        NO_TX + "DROP INDEX CONCURRENTLY booking.tenants_nmae_idx;\n",
    )
    run = runner(booking_db, directory)
    run.up()
    with pytest.raises(OperationFailed, match=r"failed at its first statement.*stays applied") as e:
        run.down()
    assert e.value.exit_code == 8
    status = run.status()
    assert {m.version: m.state for m in status.migrations}["0006"] is MigrationState.applied
    with booking_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('booking.tenants_name_idx')").fetchone() == (
            "booking.tenants_name_idx",
        )


def test_a_down_with_no_statement_is_refused_and_irreversible_ones_say_so(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, "-- nothing to undo?\n")
    run = runner(booking_db, directory)
    # lint blocks the up: the empty down is an error
    with pytest.raises(Refused, match="empty-down"):
        run.up()
    (directory / "0006_tenant_note.down.sql").write_text(
        "-- ptool: irreversible -- reason: the notes typed meanwhile cannot come back\n"
    )
    run.up()
    with pytest.raises(Refused, match="0006_tenant_note is irreversible") as e:
        run.down()
    assert e.value.exit_code == 7
    assert run.status().current == "0006"


def test_every_script_is_checked_before_the_first_statement(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    add_migration(
        directory,
        "0007",
        "tenant_name_idx",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_idx ON booking.tenants (name);\n",
        "DROP INDEX CONCURRENTLY IF EXISTS booking.t_idx;\n",
    )
    run = runner(booking_db, directory)
    with booking_db.connect() as conn:
        before = state(conn)
    with pytest.raises(Refused) as e:
        run.up()
    # lint reports the transactional CONCURRENTLY first; either way nothing ran
    assert "0007" in e.value.message
    (directory / "0007_tenant_name_idx.up.sql").write_text("SELECT 1;\n")
    (directory / "0007_tenant_name_idx.down.sql").write_text("SELEC 1;\n")
    with pytest.raises(Refused, match=r"0007_tenant_name_idx.down.sql:1: .*nothing of this run"):
        run.up()
    # the plan names what up refuses for, and only for what up(to=...) would run
    assert run.plan().blocked == [
        '0007_tenant_name_idx.down.sql:1: syntax error at or near "SELEC"'
    ]
    assert [p.version for p in run.plan(to="0006").pending] == ["0006"]
    assert run.plan(to="0006").blocked == []
    with booking_db.connect() as conn:
        assert state(conn) == before


def test_a_run_that_stops_part_way_says_what_it_committed(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    for n in range(10):
        version = f"{6 + n:04d}"
        up = f"ALTER TABLE booking.tenants ADD COLUMN c{n} int;\n"
        if n == 6:  # the seventh fails
            up += "SELECT 1 / 0;\n"
        add_migration(
            directory,
            version,
            f"column_{n}",
            up,
            f"ALTER TABLE booking.tenants DROP COLUMN c{n};\n",
        )
    run = runner(booking_db, directory)
    with pytest.raises(OperationFailed) as e:
        run.up()
    err = e.value
    assert "0012_column_6 (up) failed" in err.message
    assert "this run applied and committed 6 migration(s): 0006_column_0" in err.message
    assert err.message.endswith("the database is at 0011.")
    assert err.details["committed"] == [f"{v:04d}" for v in range(6, 12)]
    assert err.details["stopped_at"] == "0012" and err.details["current"] == "0011"
    assert err.to_dict()["details"] == err.details
    assert "blocking session" not in (err.hint or "")
    assert run.status().current == "0011"


def test_an_interrupted_migration_is_refused_until_repaired(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    """What a run killed in the middle of a no-transaction migration leaves: a 'running'
    row (written here as the killed run wrote it; the fault tests kill real runs)."""
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", NO_TX + ADD_NOTE, NO_TX + DROP_NOTE)
    run = runner(booking_db, directory)
    with psycopg.connect(booking_db.url(MIGRATOR), autocommit=True) as conn:
        conn.execute(ADD_NOTE)  # the statement that ran before the kill
        conn.execute(
            "INSERT INTO ptool_ops.migration_history (version, name, checksum, outcome, run_id)"
            " VALUES ('0006', 'tenant_note', 'x', 'running', 'killedrun')"
        )
    status = run.status()
    assert {m.version: m.state for m in status.migrations}["0006"] is MigrationState.interrupted
    assert not status.ok
    with pytest.raises(Refused, match="0006_tenant_note was interrupted") as e:
        run.up()
    assert "ptool-ops migrate repair 0006 --accept" in (e.value.hint or "")
    with pytest.raises(Refused, match="interrupted"):
        run.down()
    repaired = run.repair("0006", action="accept", reason="the column is there: it ran")
    assert repaired.state is MigrationState.applied
    assert _transactional(booking_db, "0006") is False  # recorded as it runs: no-transaction
    assert run.up().migrations == []
    reverted = run.down()
    assert [m.outcome for m in reverted.migrations] == ["reverted"]


def test_a_killed_session_stops_the_run_with_exit_9(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "slow",
        NO_TX + ADD_NOTE + "SELECT pg_terminate_backend(pg_backend_pid());\n",
        NO_TX + DROP_NOTE,
    )
    with pytest.raises(ManualActionRequired, match="session of this run ended while it ran 0006"):
        runner(booking_db, directory).up()
    status = runner(booking_db, directory).status()
    assert {m.version: m.state for m in status.migrations}["0006"] is MigrationState.interrupted
