"""The booking migrations, applied by the migration runner as the deployed roles would."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops.booking import MIGRATIONS_DIR
from ptool_ops.errors import OperationFailed, Refused
from ptool_ops.migrate.files import (
    MigrationError,
    MigrationFiles,
    checksum,
    load_migrations,
    run_verify,
)
from ptool_ops.migrate.history import schema_version
from ptool_ops.migrate.runner import Runner, RunOptions

from ..conftest import MIGRATOR, OWNER
from .catalog import diff, snapshot

BOOKING_ROLES = (
    "booking_app",
    "booking_app_a",
    "booking_app_b",
    "booking_migrator",
    "booking_readonly",
    "booking_backup",
)
OPTIONS = RunOptions(actor="tests", run_lock_wait_s=5)


def runner(url: str, directory: Path = MIGRATIONS_DIR) -> Runner:
    # migrations of other directories (public.*) run as the login: only the booking
    # migrations belong to booking_migrator
    options = OPTIONS if directory == MIGRATIONS_DIR else replace(OPTIONS, schema_owner=None)
    return Runner(url, directory=directory, options=options)


def test_shipped_migrations_are_ordered_and_complete() -> None:
    migrations = load_migrations(MIGRATIONS_DIR)
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


# --- the runner, as booking_migrator --------------------------------------------------


def test_the_migrator_applies_every_migration_in_order_once(empty_db: Any) -> None:
    expected = [m.version for m in load_migrations(MIGRATIONS_DIR)]
    run = runner(empty_db.url(MIGRATOR)).up()
    assert [m.version for m in run.migrations] == expected
    assert runner(empty_db.url(MIGRATOR)).up().migrations == []
    with empty_db.connect() as conn:
        assert schema_version(conn) == expected[-1]
        rows = conn.execute(
            "SELECT version, name, checksum, outcome, applied_by, duration_ms"
            " FROM ptool_ops.migration_history ORDER BY version"
        ).fetchall()
        owners = conn.execute(
            "SELECT DISTINCT relowner::regrole::text FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname IN ('booking', 'ptool_ops')"
            " AND c.relkind = 'r'"
        ).fetchall()
    assert owners == [(MIGRATOR,)]
    assert [r[0] for r in rows] == expected
    for (version, name, digest, outcome, applied_by, duration), m in zip(
        rows, load_migrations(MIGRATIONS_DIR), strict=True
    ):
        assert (version, name, digest, outcome) == (m.version, m.name, m.checksum, "applied")
        assert applied_by == f"tests ({MIGRATOR})"
        assert duration is not None and duration >= 0


def test_the_operator_runs_migrations_as_the_schema_owner(empty_db: Any) -> None:
    """booking_owner logged in: 0001 (run-as login) runs as it, every later migration as
    booking_migrator by SET ROLE, so tables and history belong to the schema owner and its
    default privileges (SELECT for the backup role) apply."""
    runner(empty_db.url(OWNER)).up()
    with empty_db.connect() as conn:
        rows = conn.execute(
            "SELECT version, applied_by FROM ptool_ops.migration_history ORDER BY version"
        ).fetchall()
        owners = conn.execute(
            "SELECT DISTINCT relowner::regrole::text FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname IN ('booking', 'ptool_ops')"
            " AND c.relkind = 'r'"
        ).fetchall()
        backup_reads = conn.execute(
            "SELECT bool_and(has_table_privilege('booking_backup', c.oid, 'SELECT'))"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('booking', 'ptool_ops') AND c.relkind = 'r'"
        ).fetchone()
    assert rows[0] == ("0001", f"tests ({OWNER})")
    assert {who for _, who in rows[1:]} == {f"tests ({OWNER} as {MIGRATOR})"}
    assert owners == [(MIGRATOR,)]
    assert backup_reads == (True,)


def test_schema_version_of_the_migrated_template(booking_db: Any) -> None:
    with booking_db.connect() as conn:
        assert schema_version(conn) == load_migrations(MIGRATIONS_DIR)[-1].version
    assert runner(booking_db.url(MIGRATOR)).up().migrations == []


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
    with pytest.raises(OperationFailed, match=r"0002_bad \(up\) failed: .*query 2"):
        runner(empty_db.url(OWNER), directory).up()
    with empty_db.connect() as conn:
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
    with (
        psycopg.connect(empty_db.url(OWNER), autocommit=True) as conn,
        pytest.raises(MigrationError),
    ):
        run_verify(conn, verify, label="0001_x")


def test_changed_applied_migration_is_refused(empty_db: Any, tmp_path: Path) -> None:
    directory = _write(
        tmp_path / "m",
        {
            "0001_a.up.sql": "CREATE TABLE public.a (id int);",
            "0001_a.down.sql": "DROP TABLE public.a;",
        },
    )
    url = empty_db.url(OWNER)
    assert [m.version for m in runner(url, directory).up().migrations] == ["0001"]
    (directory / "0001_a.up.sql").write_text("CREATE TABLE public.a (id int);  \r\n\r\n")
    assert runner(url, directory).up().migrations == []  # whitespace only: same checksum
    (directory / "0001_a.up.sql").write_text("CREATE TABLE public.a (id bigint);")
    with pytest.raises(Refused, match="drifted"):
        runner(url, directory).up()


# --- reversibility --------------------------------------------------------------------


def test_every_migration_is_reversible_as_the_operator(empty_db: Any) -> None:
    """``migrate test`` as booking_owner on an empty database: every shipped migration,
    0001 included, goes up, down to the same catalog, and up again."""
    from ptool_ops.migrate.testing import run_migration_tests

    report = run_migration_tests(
        empty_db.url(OWNER), directory=MIGRATIONS_DIR, options=OPTIONS, source="dump"
    )
    assert [m.version for m in report.migrations] == [
        m.version for m in load_migrations(MIGRATIONS_DIR)
    ]
    assert report.ok, [m.error for m in report.migrations if not m.ok]
    for m in report.migrations:
        # 0005 grants on ptool_ops only, which the catalog comparison leaves out
        assert m.changed or m.version == "0005", f"{m.version} changed nothing"


def test_full_down_leaves_an_empty_database_and_shared_roles(empty_db: Any) -> None:
    with empty_db.connect() as conn:
        before = snapshot(conn, exclude_schemas=("ptool_ops",))
    url = empty_db.url(OWNER)
    runner(url).up()
    reverted = runner(url).down(steps=len(load_migrations(MIGRATIONS_DIR)))
    assert [m.version for m in reverted.migrations][-1] == "0001"
    with empty_db.connect() as conn:
        assert diff(before, snapshot(conn, exclude_schemas=("ptool_ops",))) == {}
        # other databases of the cluster (the template) still use the roles: they stay
        roles = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY (%s)", (list(BOOKING_ROLES),)
        ).fetchone()
        assert roles == (len(BOOKING_ROLES),)


def test_roles_migration_fixes_drifted_attributes_as_the_owner(booking_db: Any) -> None:
    """0001 runs in a database of a cluster whose roles exist already (like the template's
    clones here): as the owner it brings an attribute that drifted back in line."""
    from ..conftest import create_database, drop_database

    first = load_migrations(MIGRATIONS_DIR)[0]
    other = booking_db.name + "_roles"
    create_database(booking_db.server, other)
    with booking_db.connect() as conn:
        roles_before = snapshot(conn)["roles"]
        conn.execute("ALTER ROLE booking_backup NOBYPASSRLS")
    try:
        with (
            psycopg.connect(booking_db.server.facts.role_url(OWNER, other)) as owner,
            owner.transaction(),
        ):
            owner.execute(
                "CREATE SCHEMA ptool_ops; CREATE TABLE ptool_ops.migration_history (x int)"
            )
            owner.execute(first.up.read_text())
            assert first.verify is not None
            run_verify(owner, first.verify.read_text(), label=first.version)
    finally:
        with booking_db.connect() as conn:
            conn.execute("ALTER ROLE booking_backup BYPASSRLS")
        drop_database(booking_db.server, other)
    with booking_db.connect() as conn:
        assert snapshot(conn)["roles"] == roles_before
