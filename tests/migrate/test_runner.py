"""The runner against a real PostgreSQL: apply, validate, roll back, history."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptool_ops.errors import ManualActionRequired, OperationFailed, Refused
from ptool_ops.migrate.history import MigrationState
from ptool_ops.migrate.runner import Runner
from tests.conftest import MIGRATOR, TestDatabase
from tests.migrate.runner_support import (
    FAST,
    add_migration,
    invalid_indexes,
    migrations_copy,
    state,
)

ADD_NOTE = "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
DROP_NOTE = "ALTER TABLE booking.tenants DROP COLUMN note;\n"
NOTE_EXISTS = (
    "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'booking.tenants'::regclass"
    " AND attname = 'note' AND NOT attisdropped);\n"
)


def runner(db: TestDatabase, directory: Path) -> Runner:
    return Runner(db.url(MIGRATOR), directory=directory, options=FAST)


def test_up_status_down_round_trip(booking_db: TestDatabase, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE, NOTE_EXISTS)
    run = runner(booking_db, directory)
    with booking_db.connect() as conn:
        before, _ = state(conn)
    assert [s.version for s in run.status().pending] == ["0006"]

    result = run.up()
    assert [(m.version, m.outcome, m.transactional) for m in result.migrations] == [
        ("0006", "applied", True)
    ]
    report = run.status()
    assert report.ok and not report.pending and report.current == "0006"
    row = next(m for m in report.migrations if m.version == "0006").row
    assert row is not None and row.down_checksum and row.verify_checksum and row.run_id
    assert run.up().migrations == []  # idempotent
    assert run.verify().ok

    down = run.down()
    assert [(m.version, m.outcome) for m in down.migrations] == [("0006", "reverted")]
    assert [s.version for s in run.status().pending] == ["0006"]
    with booking_db.connect() as conn:
        after, _ = state(conn)
        from ptool_ops.migrate.history import schema_version

        assert schema_version(conn) == "0005"
    assert after == before


def test_failed_verify_leaves_schema_and_history_as_before(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE, "SELECT false;\n")
    with booking_db.connect() as conn:
        before = state(conn)
    with pytest.raises(OperationFailed, match=r"0006_tenant_note.*Verification"):
        runner(booking_db, directory).up()
    with booking_db.connect() as conn:
        assert state(conn) == before


def test_invariant_broken_by_a_migration_rolls_back(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "rls_off",
        "-- ptool: allow ban-disable-row-level-security -- reason: test\n"
        "ALTER TABLE booking.artists DISABLE ROW LEVEL SECURITY;\n",
        "ALTER TABLE booking.artists ENABLE ROW LEVEL SECURITY;\n",
    )
    with booking_db.connect() as conn:
        before = state(conn)
    with pytest.raises(OperationFailed, match="rls_enabled"):
        runner(booking_db, directory).up()
    with booking_db.connect() as conn:
        assert state(conn) == before


DUPLICATE_NAMES = """
INSERT INTO booking.tenants (slug, name) VALUES ('alpha', 'Same'), ('beta', 'Same');
"""


def test_failing_concurrent_index_build_leaves_no_invalid_index(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "tenant_name_unique",
        "-- ptool: no-transaction\n"
        "CREATE UNIQUE INDEX CONCURRENTLY tenants_name_key ON booking.tenants (name);\n",
        "-- ptool: no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS booking.tenants_name_key;\n",
    )
    with booking_db.connect() as conn:
        conn.execute(DUPLICATE_NAMES)
        before = state(conn)
    with pytest.raises(OperationFailed, match="rolled back with its down script"):
        runner(booking_db, directory).up()
    with booking_db.connect() as conn:
        assert invalid_indexes(conn) == []
        assert state(conn) == before


def test_unrecoverable_no_transaction_failure_needs_manual_action(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "half_done",
        "-- ptool: no-transaction\n"
        "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
        "CREATE UNIQUE INDEX CONCURRENTLY tenants_name_key ON booking.tenants (name);\n",
        "-- ptool: no-transaction\nSELECT 1;\n",  # forgets to drop the column
    )
    with booking_db.connect() as conn:
        conn.execute(DUPLICATE_NAMES)
    with pytest.raises(ManualActionRequired, match="neither state") as err:
        runner(booking_db, directory).up()
    assert err.value.exit_code == 9
    with booking_db.connect() as conn:
        assert invalid_indexes(conn) == []


def test_checksum_change_is_drift_but_line_endings_are_not(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    up = directory / "0004_events.up.sql"
    text = up.read_text()
    up.write_bytes(text.replace("\n", "  \r\n").encode())  # CRLF + trailing blanks
    run = runner(booking_db, directory)
    assert run.status().ok

    up.write_text(text.replace("append-only", "append only", 1))
    report = run.status()
    drifted = report.of(MigrationState.drifted)
    assert [(s.version, s.drift) for s in drifted] == [("0004", ["up"])]
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    with pytest.raises(Refused, match="0004_events is drifted"):
        run.up()

    repaired = run.repair("0004", action="accept", reason="comment typo fixed")
    assert repaired.state is MigrationState.applied
    assert repaired.row is not None and "comment typo fixed" in (repaired.row.note or "")
    assert [m.version for m in run.up().migrations] == ["0006"]


def test_missing_file_and_forget(booking_db: TestDatabase, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    run = runner(booking_db, directory)
    run.up()
    for path in directory.glob("0006_*"):
        path.unlink()
    assert [s.version for s in run.status().of(MigrationState.missing)] == ["0006"]
    forgotten = run.repair("0006", action="forget", reason="moved to another service")
    assert forgotten.row is not None and forgotten.row.outcome == "forgotten"
    assert run.status().ok


def test_lint_errors_block_up_unless_allowed(booking_db: TestDatabase, tmp_path: Path) -> None:
    directory = migrations_copy(tmp_path)
    index = "CREATE INDEX bookings_status_idx ON booking.bookings (status);\n"
    add_migration(
        directory, "0006", "status_index", index, "DROP INDEX booking.bookings_status_idx;\n"
    )
    run = runner(booking_db, directory)
    with pytest.raises(Refused, match="require-concurrent-index-creation"):
        run.up()
    (directory / "0006_status_index.up.sql").write_text(
        "-- ptool: allow require-concurrent-index-creation -- reason: empty in prod\n" + index
    )
    assert [m.version for m in run.up().migrations] == ["0006"]


def test_no_transaction_migration_failing_verify_is_undone_by_its_down(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "status_index",
        "-- ptool: no-transaction\n"
        "ALTER TABLE booking.bookings ADD COLUMN source text;\n"
        "CREATE INDEX CONCURRENTLY bookings_status_idx ON booking.bookings (status);\n",
        "-- ptool: no-transaction\n"
        "DROP INDEX CONCURRENTLY IF EXISTS booking.bookings_status_idx;\n"
        "ALTER TABLE booking.bookings DROP COLUMN IF EXISTS source;\n",
        "SELECT false;\n",
    )
    with booking_db.connect() as conn:
        before = state(conn)
    with pytest.raises(OperationFailed, match=r"Verification.*rolled back with its down script"):
        runner(booking_db, directory).up()
    with booking_db.connect() as conn:
        assert state(conn) == before
