"""The booking migrations and the minimal runner, against a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops.booking.schema import (
    HISTORY_TABLE,
    MigrationError,
    MigrationFiles,
    apply_pending,
    checksum,
    ensure_history_table,
    load_migrations,
    run_verify,
    schema_version,
)

from .catalog import diff, snapshot

BOOKING_ROLES = (
    "booking_app",
    "booking_app_a",
    "booking_app_b",
    "booking_migrator",
    "booking_readonly",
    "booking_backup",
)


def _run(conn: psycopg.Connection[Any], path: Path) -> None:
    with conn.transaction():
        conn.execute(path.read_text())


# --- files ----------------------------------------------------------------------------


def test_shipped_migrations_are_ordered_and_complete() -> None:
    migrations = load_migrations()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert versions[0] == "0001"
    assert len(set(versions)) == len(versions)
    for m in migrations:
        assert m.up.name == f"{m.version}_{m.name}.up.sql"
        assert m.down.exists()
        assert m.verify is not None, f"{m.version} has no verify script"


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_load_migrations_requires_a_down_for_every_up(tmp_path: Path) -> None:
    directory = _write(
        tmp_path / "m",
        {"0001_a.up.sql": "SELECT 1;", "0001_a.down.sql": "SELECT 1;", "0002_b.up.sql": "x"},
    )
    with pytest.raises(ValueError, match=r"0002_b has no down script"):
        load_migrations(directory)


@pytest.mark.parametrize(
    "name", ["1_short.up.sql", "0001-dash.up.sql", "0001_Upper.up.sql", "0001_a.sideways.sql"]
)
def test_load_migrations_rejects_misnamed_files(tmp_path: Path, name: str) -> None:
    directory = _write(tmp_path / "m", {name: "SELECT 1;"})
    with pytest.raises(ValueError, match="misnamed"):
        load_migrations(directory)


def test_load_migrations_rejects_two_names_for_one_version(tmp_path: Path) -> None:
    directory = _write(
        tmp_path / "m",
        {"0001_a.up.sql": "", "0001_a.down.sql": "", "0001_b.down.sql": ""},
    )
    with pytest.raises(ValueError, match="two names"):
        load_migrations(directory)


def test_load_migrations_ignores_other_files_and_sorts(tmp_path: Path) -> None:
    directory = _write(
        tmp_path / "m",
        {
            "0002_b.up.sql": "",
            "0002_b.down.sql": "",
            "0001_a.up.sql": "",
            "0001_a.down.sql": "",
            "0001_a.verify.sql": "",
            "README.md": "notes",
        },
    )
    migrations = load_migrations(directory)
    assert migrations == [
        MigrationFiles("0001", "a", directory / "0001_a.up.sql", directory / "0001_a.down.sql",
                       directory / "0001_a.verify.sql"),
        MigrationFiles("0002", "b", directory / "0002_b.up.sql", directory / "0002_b.down.sql",
                       None),
    ]  # fmt: skip


def test_checksum_ignores_line_endings_and_trailing_whitespace() -> None:
    base = checksum("CREATE TABLE t (id int);\nSELECT 1;")
    assert checksum("CREATE TABLE t (id int);  \r\nSELECT 1;\r\n\r\n\n") == base
    assert checksum("CREATE TABLE t (id  int);\nSELECT 1;") != base
    assert checksum("  CREATE TABLE t (id int);\nSELECT 1;") != base  # leading is kept


# --- runner ---------------------------------------------------------------------------


def test_apply_pending_applies_in_order_once(empty_db: Any) -> None:
    with empty_db.connect() as conn:
        assert schema_version(conn) is None
        expected = [m.version for m in load_migrations()]
        assert apply_pending(conn) == expected
        assert apply_pending(conn) == []
        assert schema_version(conn) == expected[-1]
        rows = conn.execute(
            "SELECT version, name, checksum, outcome, applied_by, duration_ms"
            " FROM ptool_ops.migration_history ORDER BY version"
        ).fetchall()
    assert [r[0] for r in rows] == expected
    for (version, name, digest, outcome, applied_by, duration), m in zip(
        rows, load_migrations(), strict=True
    ):
        assert (version, name, digest, outcome) == (m.version, m.name, m.checksum, "applied")
        assert applied_by == "postgres"
        assert duration is not None and duration >= 0


def test_apply_pending_on_a_non_autocommit_connection(empty_db: Any) -> None:
    with psycopg.connect(empty_db.conninfo, autocommit=False) as conn:
        assert apply_pending(conn)
        # committed: another connection sees the schema
        with empty_db.connect() as other:
            assert schema_version(other) == load_migrations()[-1].version


def test_apply_pending_refuses_an_open_transaction(empty_db: Any) -> None:
    with psycopg.connect(empty_db.conninfo, autocommit=False) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(MigrationError, match="no open transaction"):
            apply_pending(conn)


def test_schema_version_of_the_migrated_template(booking_db: Any) -> None:
    with booking_db.connect() as conn:
        assert schema_version(conn) == load_migrations()[-1].version
        assert apply_pending(conn) == []


def test_failed_verify_rolls_the_migration_back(empty_db: Any, tmp_path: Path) -> None:
    directory = _write(
        tmp_path / "m",
        {
            "0001_good.up.sql": "CREATE TABLE public.good (id int);",
            "0001_good.down.sql": "DROP TABLE public.good;",
            "0001_good.verify.sql": "SELECT to_regclass('public.good') IS NOT NULL;",
            "0002_bad.up.sql": "CREATE TABLE public.bad (id int);",
            "0002_bad.down.sql": "DROP TABLE public.bad;",
            "0002_bad.verify.sql": "SELECT true;\nSELECT count(*) = 1 FROM public.bad;",
        },
    )
    with empty_db.connect() as conn:
        with pytest.raises(MigrationError, match=r"0002_bad failed: query 2"):
            apply_pending(conn, directory)
        assert schema_version(conn) == "0001"
        assert conn.execute("SELECT to_regclass('public.bad')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('public.good')").fetchone() == ("good",)


@pytest.mark.parametrize(
    "verify",
    [
        "SELECT 1;",
        "SELECT false;",
        "SELECT true, true;",
        "SELECT true FROM generate_series(1, 2);",
        "SELECT NULL::boolean;",
        "SELECT true; SELECT false;",
    ],
)
def test_verify_accepts_only_a_single_true(empty_db: Any, verify: str) -> None:
    with empty_db.connect() as conn, pytest.raises(MigrationError):
        run_verify(conn, verify, label="0001_x")


def test_changed_applied_migration_is_refused(empty_db: Any, tmp_path: Path) -> None:
    directory = _write(
        tmp_path / "m",
        {"0001_a.up.sql": "CREATE TABLE public.a (id int);", "0001_a.down.sql": "DROP TABLE a;"},
    )
    with empty_db.connect() as conn:
        assert apply_pending(conn, directory) == ["0001"]
        (directory / "0001_a.up.sql").write_text("CREATE TABLE public.a (id int);  \r\n\r\n")
        assert apply_pending(conn, directory) == []  # whitespace-only change: same checksum
        (directory / "0001_a.up.sql").write_text("CREATE TABLE public.a (id bigint);")
        with pytest.raises(MigrationError, match="different up script"):
            apply_pending(conn, directory)


# --- reversibility --------------------------------------------------------------------


def test_every_migration_is_reversible(empty_db: Any) -> None:
    """up, verify, down returns the catalog to before; up again gives the same catalog."""
    with empty_db.connect() as conn:
        ensure_history_table(conn)
        for m in load_migrations():
            before = snapshot(conn)
            _run(conn, m.up)
            assert m.verify is not None
            run_verify(conn, m.verify.read_text(), label=m.version)
            after = snapshot(conn)
            assert diff(before, after), f"{m.version} changed nothing"
            _run(conn, m.down)
            assert diff(before, snapshot(conn)) == {}, f"{m.version} down is not exact"
            _run(conn, m.up)
            assert diff(after, snapshot(conn)) == {}, f"{m.version} up again differs"


def test_full_down_leaves_an_empty_database_and_shared_roles(empty_db: Any) -> None:
    with empty_db.connect() as conn:
        before = snapshot(conn)
        apply_pending(conn)
        for m in reversed(load_migrations()):
            _run(conn, m.down)
        conn.execute(f"DROP TABLE {HISTORY_TABLE}; DROP SCHEMA ptool_ops")
        assert diff(before, snapshot(conn)) == {}
        # other databases of the cluster (the template) still use the roles: they stay
        roles = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY (%s)", (list(BOOKING_ROLES),)
        ).fetchone()
        assert roles == (len(BOOKING_ROLES),)


def test_roles_migration_is_idempotent_on_existing_roles(booking_db: Any) -> None:
    """0001 runs in a database of a cluster whose roles exist already (like the template's
    clones here) and fixes attributes that drifted."""
    first = load_migrations()[0]
    other_name = booking_db.name + "_roles"
    with booking_db.connect() as conn:
        roles_before = snapshot(conn)["roles"]
        conn.execute(f"CREATE DATABASE {other_name}")
        conn.execute("ALTER ROLE booking_backup NOBYPASSRLS")
        try:
            with psycopg.connect(
                booking_db.server.database_url(other_name), autocommit=True
            ) as other:
                _run(other, first.up)
                assert first.verify is not None
                run_verify(other, first.verify.read_text(), label=first.version)
        finally:
            conn.execute("ALTER ROLE booking_backup BYPASSRLS")
            conn.execute(f"DROP DATABASE IF EXISTS {other_name} WITH (FORCE)")
        assert snapshot(conn)["roles"] == roles_before
