"""Lint rules for what breaks the running release or holds locks: dropped defaults, views and
schemas, long identifiers, foreign keys from freshly filled tables, type changes that are
free, one finding per DROP statement, and ``start_after``. Pure: parse SQL, no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptool_ops.errors import ConfigError
from ptool_ops.migrate.lint import (
    Finding,
    Severity,
    lint_paths,
    lint_sql,
    long_identifiers,
    migration_version,
    parse_directives,
)
from ptool_ops.migrate.rules_schema import TypeSpec, type_change_rewrites

from ..conftest import Cli

NO_TX = "-- ptool: no-transaction\n"


def found(sql: str) -> list[tuple[str, Severity]]:
    return [(f.rule, f.severity) for f in lint_sql(sql)]


def history(tmp_path: Path, *scripts: str) -> list[Finding]:
    """Lint scripts as migrations 0001, 0002, ... of one directory; the last one's findings."""
    for number, script in enumerate(scripts, 1):
        (tmp_path / f"{number:04d}_m{number}.up.sql").write_text(script)
    report = lint_paths([tmp_path])
    last = str(tmp_path / f"{len(scripts):04d}_m{len(scripts)}.up.sql")
    return [f for f in report.findings if f.file == last]


def rules_of(findings: list[Finding]) -> list[tuple[str, Severity]]:
    return [(f.rule, f.severity) for f in findings]


TABLE = (
    "CREATE TABLE shop.orders (\n"
    "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
    "    status text NOT NULL DEFAULT 'new',\n"
    "    note text DEFAULT '',\n"
    "    code varchar(10),\n"
    "    amount numeric(10, 2),\n"
    "    placed timestamp,\n"
    "    seq serial,\n"
    "    addr cidr\n"
    ");\n"
)

# --- ban-drop-default ---------------------------------------------------------------------


def test_drop_default_on_a_known_not_null_column_is_an_error(tmp_path: Path) -> None:
    drop = "ALTER TABLE shop.orders ALTER COLUMN status DROP DEFAULT;\n"
    (finding,) = history(tmp_path, TABLE, drop)
    assert (finding.rule, finding.severity) == ("ban-drop-default", Severity.error)
    assert "NOT NULL column shop.orders.status" in finding.message
    # serial columns are NOT NULL, and SET DEFAULT NULL drops the default just the same
    both = "ALTER TABLE orders ALTER seq DROP DEFAULT, ALTER status SET DEFAULT NULL::text;\n"
    assert rules_of(history(tmp_path, TABLE, both)) == [("ban-drop-default", Severity.error)] * 2


def test_drop_default_near_misses(tmp_path: Path) -> None:
    # a nullable column: omitted values become NULL, no insert fails
    assert history(tmp_path, TABLE, "ALTER TABLE shop.orders ALTER note DROP DEFAULT;") == []
    # made nullable first
    relaxed = "ALTER TABLE shop.orders ALTER status DROP NOT NULL, ALTER status DROP DEFAULT;"
    assert history(tmp_path, TABLE, relaxed) == []
    # a new default is no drop
    assert history(tmp_path, TABLE, "ALTER TABLE shop.orders ALTER status SET DEFAULT 'x';") == []
    # a table created in the same file: no running release uses it
    assert lint_sql(TABLE + "ALTER TABLE shop.orders ALTER status DROP DEFAULT;") == []


def test_drop_default_in_the_add_column_pattern_and_on_unknown_columns() -> None:
    # add NOT NULL with a default to fill the rows, then drop it: the running release's
    # inserts do not name the new column
    sql = (
        "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0;\n"
        "ALTER TABLE t ALTER COLUMN c DROP DEFAULT;\n"
    )
    assert found(sql) == [("ban-drop-default", Severity.error)]
    assert found("ALTER TABLE t ALTER c DROP DEFAULT;") == [("ban-drop-default", Severity.warning)]


# --- ban-drop-view, ban-drop-schema, multi-object DROP ------------------------------------


def test_drop_view_and_materialized_view() -> None:
    (view,) = lint_sql("DROP VIEW v;")
    assert (view.rule, view.severity, view.message) == (
        "ban-drop-view",
        Severity.error,
        "DROP VIEW v",
    )
    (mat,) = lint_sql("DROP MATERIALIZED VIEW IF EXISTS s.m;")
    assert (mat.rule, mat.message) == ("ban-drop-view", "DROP MATERIALIZED VIEW s.m")


def test_drop_view_near_misses() -> None:
    assert lint_sql("CREATE VIEW v AS SELECT 1 AS x;\nDROP VIEW v;") == []
    assert lint_sql("CREATE MATERIALIZED VIEW m AS SELECT 1 AS x;\nDROP MATERIALIZED VIEW m;") == []
    # re-created before the commit: never missing for the running release
    assert lint_sql("DROP VIEW s.v;\nCREATE VIEW s.v AS SELECT 2 AS x;") == []
    assert lint_sql("DROP VIEW v;\nCREATE OR REPLACE VIEW v AS SELECT 2 AS x;") == []
    # ...but statement by statement (no transaction) it is missing in between
    no_tx = NO_TX + "DROP VIEW v;\nCREATE VIEW v AS SELECT 2 AS x;\n"
    assert [(f.rule, f.line) for f in lint_sql(no_tx)] == [("ban-drop-view", 2)]
    # and only the views re-created are forgiven
    (partial,) = lint_sql("DROP VIEW a, b;\nCREATE VIEW a AS SELECT 1 AS x;")
    assert partial.message == "DROP VIEW b"
    # a BEGIN ... COMMIT block of a no-transaction file is a transaction too
    block = NO_TX + "BEGIN;\nDROP VIEW v;\nCREATE VIEW v AS SELECT 1 AS x;\nCOMMIT;\n"
    assert lint_sql(block) == []
    unfinished = NO_TX + "BEGIN;\nDROP VIEW v;\nCOMMIT;\nCREATE VIEW v AS SELECT 1 AS x;\n"
    assert [(f.rule, f.line) for f in lint_sql(unfinished)] == [("ban-drop-view", 3)]
    rolled_back = NO_TX + "BEGIN;\nDROP VIEW v;\nROLLBACK;\n"
    assert lint_sql(rolled_back) == []


def test_drop_schema() -> None:
    (finding,) = lint_sql("DROP SCHEMA reports, archive CASCADE;")
    assert (finding.rule, finding.message) == (
        "ban-drop-schema",
        "DROP SCHEMA reports, archive CASCADE",
    )
    assert lint_sql("CREATE SCHEMA scratch;\nDROP SCHEMA scratch;") == []
    # IF NOT EXISTS may have found an existing schema
    assert found("CREATE SCHEMA IF NOT EXISTS s;\nDROP SCHEMA s;") == [
        ("ban-drop-schema", Severity.error)
    ]


@pytest.mark.parametrize(
    ("sql", "rule", "message"),
    [
        ("DROP TABLE a, b, c;", "ban-drop-table", "DROP TABLE a, b, c"),
        ("DROP VIEW a, b;", "ban-drop-view", "DROP VIEW a, b"),
        ("DROP SCHEMA a, b;", "ban-drop-schema", "DROP SCHEMA a, b"),
        (
            "DROP INDEX a_idx, b_idx;",
            "require-concurrent-index-deletion",
            "DROP INDEX a_idx, b_idx without CONCURRENTLY locks their tables",
        ),
        # only what the file did not create is named
        ("CREATE TABLE n (id int);\nDROP TABLE n, old;", "ban-drop-table", "DROP TABLE old"),
    ],
)
def test_multi_object_drop_counts_once_per_statement(sql: str, rule: str, message: str) -> None:
    (finding,) = lint_sql(sql)
    assert (finding.rule, finding.message) == (rule, message)


def test_two_drop_statements_are_two_findings() -> None:
    assert found("DROP TABLE a;\nDROP TABLE b;") == [("ban-drop-table", Severity.error)] * 2


# --- identifier-too-long ------------------------------------------------------------------


def test_identifiers_over_63_bytes() -> None:
    ok, long = "a" * 63, "a" * 64
    assert lint_sql(f"CREATE TABLE {ok} (x int);") == []
    (finding,) = lint_sql(f"CREATE TABLE t (x int);\nCREATE INDEX {long} ON t (x);")
    assert (finding.rule, finding.severity, finding.line, finding.column) == (
        "identifier-too-long",
        Severity.error,
        2,
        14,
    )
    assert f"truncates it to '{ok}'" in finding.message


def test_identifier_length_is_in_utf8_bytes_not_characters() -> None:
    assert lint_sql(f'CREATE TABLE "{"é" * 31}" (x int);') == []  # 62 bytes
    (finding,) = lint_sql(f'CREATE TABLE "{"é" * 32}" (x int);')  # 32 characters, 64 bytes
    assert "is 64 bytes" in finding.message
    # truncation never splits a character: 31 of them (62 bytes) remain
    assert long_identifiers(f'SELECT 1 AS "{"é" * 32}"')[0][2] == "é" * 31


def test_identifier_occurrences_quoting_and_collisions() -> None:
    long = "order_line_items_with_a_name_much_longer_than_postgresql_allows_"
    sql = (
        f"CREATE TABLE t (x int);\n"
        f"CREATE INDEX {long}1 ON t (x);\n"
        f"CREATE INDEX {long}2 ON t (x);\n"
        f"ALTER INDEX {long}1 RENAME TO short;\n"
        f"SELECT '{long}3 is only a string';\n"
    )
    first, second = lint_sql(sql)  # one finding per distinct name; strings are not names
    assert (first.line, second.line) == (2, 3)
    assert "the same name as" in second.message and "the same name" not in first.message
    # unquoted names are folded to lower case first; quoted ones keep their bytes
    assert [name for _, name, _ in long_identifiers(f'SELECT 1 AS "{"A" * 64}"')] == ["A" * 64]


# --- adding-foreign-key-constraint on a table filled in the same file ------------------


NEW = "CREATE TABLE n (id int, u_id int);\n"
FK = "ALTER TABLE n ADD CONSTRAINT n_u_fk FOREIGN KEY (u_id) REFERENCES u (id);\n"


@pytest.mark.parametrize(
    "fill",
    [
        "INSERT INTO n SELECT id, u_id FROM old_n;\n",
        "INSERT INTO n (id, u_id) SELECT * FROM (VALUES (1, 1)) v JOIN big ON true;\n",
        "COPY n FROM '/tmp/n.csv' WITH (FORMAT csv);\n",
        "MERGE INTO n USING old_n o ON n.id = o.id\n"
        "    WHEN NOT MATCHED THEN INSERT VALUES (o.id, 1);\n",
    ],
)
def test_fk_from_a_filled_table_to_an_existing_one(fill: str) -> None:
    findings = lint_sql(NEW + fill + FK)
    (finding,) = [f for f in findings if f.rule == "adding-foreign-key-constraint"]
    assert finding.line == (NEW + fill).count("\n") + 1
    assert "filled earlier in this migration" in finding.message
    assert "existing table u" in finding.message


def test_fk_from_tables_created_by_a_query() -> None:
    as_select = "CREATE TABLE n AS SELECT id, u_id FROM old_n;\n"
    select_into = "SELECT id, u_id INTO n FROM old_n;\n"
    for create in (as_select, select_into):
        assert found(create + FK) == [("adding-foreign-key-constraint", Severity.error)], create
    column = "ALTER TABLE n ADD COLUMN v_id int DEFAULT 1 REFERENCES v (id);\n"
    assert found(as_select + column) == [("adding-foreign-key-constraint", Severity.error)]


def test_create_table_as_with_no_data_is_not_filled() -> None:
    empty = "CREATE TABLE n AS SELECT id, u_id FROM old_n WITH NO DATA;\n"
    assert lint_sql(empty + FK) == []


def test_fk_from_a_filled_table_near_misses() -> None:
    # not filled: the table is empty, or holds only the rows written in the file
    assert lint_sql(NEW + FK) == []
    values = "INSERT INTO n VALUES (1, 1), (2, 2);\n"
    assert lint_sql(NEW + values + FK) == []
    assert lint_sql(NEW + "INSERT INTO n DEFAULT VALUES;\n" + FK) == []
    # COPY TO reads, it does not fill
    assert lint_sql(NEW + "COPY n TO STDOUT;\n" + FK) == []
    fill = "INSERT INTO n SELECT id, u_id FROM old_n;\n"
    # the referenced table is new too: nobody is blocked
    assert lint_sql("CREATE TABLE u (id int PRIMARY KEY);\n" + NEW + fill + FK) == []
    # NOT VALID, validated in a later transaction
    not_valid = FK.replace(";", " NOT VALID;")
    assert lint_sql(NEW + fill + not_valid) == []
    later = NO_TX + NEW + fill + not_valid + "ALTER TABLE n VALIDATE CONSTRAINT n_u_fk;\n"
    assert lint_sql(later) == []
    # ...but VALIDATE in the same transaction holds the lock through the scan
    same = NEW + fill + not_valid + "ALTER TABLE n VALIDATE CONSTRAINT n_u_fk;\n"
    assert [(f.rule, f.line) for f in lint_sql(same)] == [("adding-foreign-key-constraint", 4)]


# --- changing-column-type: free changes are not rewrites -----------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("code TYPE text", []),
        ("code TYPE varchar", []),
        ("code TYPE character varying(20)", []),
        ("code TYPE varchar(10)", []),
        ("note TYPE varchar", []),
        ("amount TYPE numeric(12, 2)", []),
        ("amount TYPE numeric", []),
        ("addr TYPE inet", []),
        ("placed TYPE timestamp(6)", []),
        ("code TYPE text USING code::text", []),
        ("code TYPE varchar(5)", [("changing-column-type", Severity.error)]),
        ("note TYPE varchar(100)", [("changing-column-type", Severity.error)]),
        ("amount TYPE numeric(12, 3)", [("changing-column-type", Severity.error)]),
        ("amount TYPE numeric(8, 2)", [("changing-column-type", Severity.error)]),
        ("id TYPE int", [("changing-column-type", Severity.error)]),
        ("seq TYPE bigint", [("changing-column-type", Severity.error)]),
        ("placed TYPE timestamp(0)", [("changing-column-type", Severity.error)]),
        ("placed TYPE timestamptz", [("changing-column-type", Severity.error)]),
        ("code TYPE text USING lower(code)", [("changing-column-type", Severity.error)]),
        ('code TYPE text COLLATE "C"', [("changing-column-type", Severity.error)]),
        ("code TYPE text[]", [("changing-column-type", Severity.error)]),
    ],
)
def test_type_changes_of_known_columns(tmp_path: Path, change: str, expected: list[object]) -> None:
    sql = f"ALTER TABLE shop.orders ALTER COLUMN {change};\n"
    assert rules_of(history(tmp_path, TABLE, sql)) == expected


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("SET LOCAL TimeZone = 'UTC';\n", Severity.warning),
        ("SET TIME ZONE 'Etc/UTC';\n", Severity.warning),
        ("SET timezone TO 0;\n", Severity.warning),
        ("SET TimeZone = 'Europe/Berlin';\n", Severity.error),
        ("SET TimeZone = 'UTC';\nRESET TimeZone;\n", Severity.error),
        ("", Severity.error),
    ],
)
def test_timestamp_to_timestamptz_needs_utc_in_the_file(
    tmp_path: Path, setting: str, expected: Severity
) -> None:
    sql = setting + "ALTER TABLE shop.orders ALTER COLUMN placed TYPE timestamptz;\n"
    (finding,) = history(tmp_path, TABLE, sql)
    assert (finding.rule, finding.severity) == ("changing-column-type", expected)
    if expected is Severity.warning:  # no rewrite, but the indexes are rebuilt
        assert "does not rewrite" in finding.message and "index" in finding.message
    else:
        assert "rewrites shop.orders" in finding.message


def test_set_local_outside_a_transaction_has_no_effect(tmp_path: Path) -> None:
    sql = NO_TX + "SET LOCAL TimeZone = 'UTC';\nALTER TABLE orders ALTER placed TYPE timestamptz;\n"
    assert rules_of(history(tmp_path, TABLE, sql)) == [("changing-column-type", Severity.error)]


def test_type_changes_follow_the_columns_through_the_files(tmp_path: Path) -> None:
    # a column added by this file to an existing table, and one retyped earlier
    added = "ALTER TABLE t ADD COLUMN c varchar(10);\nALTER TABLE t ALTER COLUMN c TYPE text;\n"
    assert lint_sql(added) == []
    retyped = "ALTER TABLE shop.orders ALTER amount TYPE numeric(14, 2);\n"
    assert (
        history(tmp_path, TABLE, "ALTER TABLE shop.orders ALTER code TYPE text;\n", retyped) == []
    )
    # renamed columns keep their type
    renamed = "ALTER TABLE shop.orders RENAME COLUMN code TO ref;\n"
    findings = history(tmp_path, TABLE, renamed, "ALTER TABLE shop.orders ALTER ref TYPE text;\n")
    assert findings == []
    # a type the linter never saw is still a rewrite
    (unknown,) = lint_sql("ALTER TABLE elsewhere ALTER COLUMN c TYPE text;")
    assert "not known to the linter" in unknown.message


def test_type_change_rewrites_table() -> None:
    vc = TypeSpec("varchar", (10,))
    assert type_change_rewrites(vc, TypeSpec("text"), utc=False) is None
    assert type_change_rewrites(vc, TypeSpec("varchar", (9,)), utc=False) is not None
    ts, tstz = TypeSpec("timestamp"), TypeSpec("timestamptz")
    assert type_change_rewrites(ts, tstz, utc=True) is None
    assert type_change_rewrites(tstz, ts, utc=True) is None
    assert "TimeZone" in (type_change_rewrites(ts, tstz, utc=False) or "")
    assert type_change_rewrites(TypeSpec("int4"), TypeSpec("int8"), utc=True) is not None


# --- start_after ----------------------------------------------------------------------------


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql)
    return path


def test_start_after_lints_only_later_migrations_with_earlier_knowledge(tmp_path: Path) -> None:
    old = write(tmp_path, "0001_init.up.sql", "CREATE INDEX legacy_idx ON legacy (x);\n" + TABLE)
    write(tmp_path, "0001_init.down.sql", "")  # an empty down of an old migration: not linted
    new = write(tmp_path, "0002_drop.up.sql", "ALTER TABLE orders ALTER status DROP DEFAULT;\n")
    everything = lint_paths([tmp_path])
    assert {f.file for f in everything.findings} == {
        str(old),
        str(old).replace("up", "down"),
        str(new),
    }
    for start in ("0001", "0001_init", " 0001 "):
        report = lint_paths([tmp_path], start_after=start)
        assert report.files == [str(new)] and report.skipped == [str(old)]
        # 0001 was read: the column is known to be NOT NULL, so an error and not a warning
        assert rules_of(report.findings) == [("ban-drop-default", Severity.error)]
        data = report.to_dict()
        assert data["start_after"] == start and data["summary"]["skipped"] == 1  # type: ignore[index]


def test_start_after_orders_by_version_and_keeps_unversioned_files(tmp_path: Path) -> None:
    for version in ("9", "10", "11"):
        write(tmp_path, f"{version}_m.sql", "DROP TABLE x;")
    write(tmp_path, "notes.sql", "DROP TABLE y;")
    report = lint_paths([tmp_path], start_after="10")
    assert sorted(Path(f).name for f in report.files) == ["11_m.sql", "notes.sql"]


def test_start_after_an_unknown_version_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, "0001_init.up.sql", "SELECT 1;")
    write(tmp_path, "0002_next.up.sql", "SELECT 1;")
    with pytest.raises(ConfigError, match=r"0003: no migration has that version .*0001 to 0002"):
        lint_paths([tmp_path], start_after="0003")


def test_migration_version() -> None:
    assert migration_version("m/0007_orders.up.sql") == "0007"
    assert migration_version("m/2017-01-01-000000_orders/up.sql") == "2017-01-01-000000"
    assert migration_version("m/20240101120000.sql") == "20240101120000"
    assert migration_version("m/notes.sql") is None
    assert migration_version("m/v2_orders.sql") is None


def test_cli_start_after_flag_and_setting(cli: Cli) -> None:
    migrations = cli.cwd / "migrations"
    migrations.mkdir()
    write(migrations, "0001_old.up.sql", "DROP TABLE legacy;\n")
    write(migrations, "0001_old.down.sql", "SELECT 1;\n")
    write(migrations, "0002_new.up.sql", "DROP VIEW a, b;\n")
    write(migrations, "0002_new.down.sql", "SELECT 1;\n")
    result = cli("migrate", "lint", str(migrations), "--start-after", "0001")
    assert result.exit_code == 1
    assert "ban-drop-table" not in result.stdout and "ban-drop-view" in result.stdout
    assert "1 file(s) up to 0001 not linted" in result.stdout
    github = cli("migrate", "lint", "--format", "github", "--start-after", "0001", str(migrations))
    (line,) = github.stdout.splitlines()
    assert line.startswith("::error file=") and "title=ban-drop-view::DROP VIEW a, b." in line
    # the setting applies to the project's migrations (no PATH): migrations_dir
    (cli.cwd / "ptool-ops.toml").write_text(
        '[environments.local]\nmigrations_dir = "migrations"\nlint_start_after = "0002"\n'
    )
    clean = cli("migrate", "lint", "-o", "json")
    assert clean.exit_code == 0, clean.output
    data = clean.json()
    assert data["files"] == [] and len(data["skipped"]) == 2 and data["start_after"] == "0002"
    cli.env["PTOOL_LINT_START_AFTER"] = "0001"
    assert cli("migrate", "lint").exit_code == 1
    bad = cli("migrate", "lint", "--start-after", "0042", "-o", "json")
    assert bad.exit_code == 3 and "no migration has that version" in bad.json()["message"]


def test_phase_directive_is_known() -> None:
    sql = "-- ptool: no-transaction\n-- ptool: phase expand\nSELECT 1;\n"
    assert parse_directives(sql).phase == "expand" and lint_sql(sql) == []
    assert parse_directives("-- ptool: phase CONTRACT\nSELECT 1;").phase == "contract"
    assert found("-- ptool: phase sideways\nSELECT 1;") == [("unknown-directive", Severity.error)]
