"""The migration linter on real parse trees: each rule fires on a bad example and stays
quiet on its safe rewrite (fixtures/bad and fixtures/safe, one pair per rule)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ptool_ops.booking import MIGRATIONS_DIR
from ptool_ops.errors import ConfigError
from ptool_ops.migrate.lint import (
    RULES,
    Finding,
    Severity,
    collect_files,
    lint_file,
    lint_paths,
    lint_sql,
    parse_directives,
)

FIXTURES = Path(__file__).parent / "fixtures"
BAD = FIXTURES / "bad"
SAFE = FIXTURES / "safe"
TENANTS = {"booking.bookings", "booking.artists", "booking.events"}

# fixture name -> the rule it must trigger (and nothing else)
BAD_CASES = {
    "index_create": "require-concurrent-index-creation",
    "index_drop": "require-concurrent-index-deletion",
    "foreign_key": "adding-foreign-key-constraint",
    "check_constraint": "constraint-missing-not-valid",
    "validate_same_transaction": "constraint-missing-not-valid",
    "set_not_null": "adding-not-nullable-field",
    "column_type": "changing-column-type",
    "volatile_default": "adding-field-with-default",
    "rename_column": "renaming-column",
    "rename_table": "renaming-table",
    "drop_column": "ban-drop-column",
    "drop_table": "ban-drop-table",
    "drop_view": "ban-drop-view",
    "drop_schema": "ban-drop-schema",
    "drop_default": "ban-drop-default",
    "identifier_too_long": "identifier-too-long",
    "filled_foreign_key": "adding-foreign-key-constraint",
    "unique_constraint": "disallowed-unique-constraint",
    "vacuum_full": "prefer-repack",
    "cluster": "prefer-repack",
    "lock_table": "ban-lock-table",
    "disable_rls": "ban-disable-row-level-security",
    "concurrent_in_transaction": "ban-concurrent-index-creation-in-transaction",
    "non_transactional": "ban-non-transactional-statement-in-transaction",
    "new_tenant_table_without_rls": "require-row-level-security",
    "syntax_error": "syntax-error",
}


def rules(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


@pytest.mark.parametrize(("name", "rule"), sorted(BAD_CASES.items()))
def test_rule_fires_on_the_bad_example(name: str, rule: str) -> None:
    findings = lint_file(BAD / f"{name}.sql", known_tenant_tables=TENANTS)
    assert rules(findings) == {rule}
    assert all(f.severity is Severity.error and not f.allowed for f in findings)
    assert all(f.line >= 1 and f.column >= 1 and f.fix for f in findings)


def test_every_bad_fixture_has_a_case_and_every_safe_one_a_bad_twin() -> None:
    assert {p.stem for p in BAD.glob("*.sql")} == set(BAD_CASES)
    extra = {"new_table_exemption"}
    assert {p.stem for p in SAFE.glob("*.sql")} - extra <= set(BAD_CASES)


@pytest.mark.parametrize("path", sorted(SAFE.glob("*.sql")), ids=lambda p: p.stem)
def test_safe_rewrite_has_no_blocking_finding(path: Path) -> None:
    findings = lint_file(path, known_tenant_tables=TENANTS)
    assert [f for f in findings if f.blocking or f.severity is Severity.warning] == []


def test_positions_point_at_the_offending_node() -> None:
    (fk,) = lint_file(BAD / "foreign_key.sql")
    assert (fk.line, fk.column) == (2, 9)  # the ADD CONSTRAINT, not the ALTER TABLE
    (syntax,) = lint_file(BAD / "syntax_error.sql")
    assert (syntax.line, syntax.column) == (2, 7)
    assert "TABEL" in syntax.message


def test_table_created_in_the_same_migration_is_exempt() -> None:
    # squawk flags the index, FK, CHECK, UNIQUE and type change here; nothing can be blocked
    assert lint_file(SAFE / "new_table_exemption.sql") == []
    # ...but the same statements on a table created in an earlier migration are flagged
    text = (SAFE / "new_table_exemption.sql").read_text()
    later = text.split("CREATE INDEX", 1)[1]
    found = rules(lint_sql("CREATE INDEX" + later))
    assert {
        "require-concurrent-index-creation",
        "adding-foreign-key-constraint",
        "constraint-missing-not-valid",
        "disallowed-unique-constraint",
        "adding-field-with-default",
        "changing-column-type",
    } <= found


def test_dropping_what_the_file_created_is_not_a_release_break() -> None:
    sql = """
    CREATE TABLE scratch (id int);
    CREATE INDEX scratch_idx ON scratch (id);
    ALTER TABLE scratch DROP COLUMN id;
    DROP INDEX scratch_idx;
    DROP TABLE scratch;
    """
    assert lint_sql(sql) == []


def test_volatile_default_variants() -> None:
    def found(column: str) -> list[tuple[str, Severity]]:
        return [(f.rule, f.severity) for f in lint_sql(f"ALTER TABLE t ADD COLUMN {column};")]

    error = [("adding-field-with-default", Severity.error)]
    assert found("c uuid DEFAULT gen_random_uuid()") == error
    assert found("c float DEFAULT random() * 10") == error
    assert found("c serial") == error
    assert found("c bigint GENERATED ALWAYS AS IDENTITY") == error
    assert found("c int GENERATED ALWAYS AS (a * 2) STORED") == error
    assert found("c int GENERATED ALWAYS AS (a * 2) VIRTUAL") == []
    assert found("c timestamptz DEFAULT now()") == []
    assert found("c text DEFAULT 'x'") == []
    assert [
        (f.rule, f.severity) for f in lint_sql("ALTER TABLE t ADD c int DEFAULT 0;", pg_version=10)
    ] == error
    assert found("c int DEFAULT my_function()") == [("adding-field-with-default", Severity.warning)]


def test_required_field_and_inline_constraints() -> None:
    assert rules(lint_sql("ALTER TABLE t ADD COLUMN c int NOT NULL;")) == {"adding-required-field"}
    assert lint_sql("ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0;") == []
    assert rules(lint_sql("ALTER TABLE t ADD COLUMN c int REFERENCES u (id);")) == {
        "adding-foreign-key-constraint"
    }
    assert rules(lint_sql("ALTER TABLE t ADD COLUMN c int UNIQUE;")) == {
        "disallowed-unique-constraint"
    }
    assert rules(lint_sql("ALTER TABLE t ADD PRIMARY KEY (id);")) == {
        "adding-serial-primary-key-field"
    }
    assert lint_sql("ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_id_idx;") == []


def test_set_not_null_after_a_validated_check() -> None:
    no_tx = "-- ptool: no-transaction\n"
    safe = no_tx + (
        "ALTER TABLE t ADD CONSTRAINT c_nn CHECK (c IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT c_nn;\n"
        "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\n"
    )
    assert lint_sql(safe) == []
    # a validated CHECK on another column proves nothing about c
    other = no_tx + (
        "ALTER TABLE t ADD CONSTRAINT d_nn CHECK (d IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT d_nn;\n"
        "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\n"
    )
    assert rules(lint_sql(other)) == {"adding-not-nullable-field"}
    # PostgreSQL 18: NOT NULL constraints can be added NOT VALID themselves
    assert lint_sql("ALTER TABLE t ADD CONSTRAINT c_nn NOT NULL c NOT VALID;") == []
    assert rules(lint_sql("ALTER TABLE t ADD CONSTRAINT c_nn NOT NULL c;")) == {
        "adding-not-nullable-field"
    }


def test_not_valid_then_validate_inside_explicit_transaction_of_no_transaction_file() -> None:
    sql = (
        "-- ptool: no-transaction\n"
        "BEGIN;\n"
        "ALTER TABLE t ADD CONSTRAINT c CHECK (x > 0) NOT VALID;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT c;\n"
        "COMMIT;\n"
        "ALTER TABLE t ADD CONSTRAINT d CHECK (x > 0) NOT VALID;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT d;\n"
    )
    found = lint_sql(sql)
    assert [(f.rule, f.line) for f in found] == [("constraint-missing-not-valid", 4)]


def test_transaction_control_in_a_transactional_migration() -> None:
    found = lint_sql("BEGIN;\nALTER TABLE t ADD COLUMN c int;\nCOMMIT;\n")
    assert [(f.rule, f.line) for f in found] == [
        ("transaction-nesting", 1),
        ("transaction-nesting", 3),
    ]


def test_non_transactional_statements() -> None:
    for sql in (
        "CREATE DATABASE d;",
        "ALTER SYSTEM SET work_mem = '64MB';",
        "REINDEX INDEX CONCURRENTLY i;",
        "VACUUM t;",
        "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;",
    ):
        assert "ban-non-transactional-statement-in-transaction" in rules(lint_sql(sql)), sql
        assert lint_sql(sql, transactional=False) == [], sql
    enum = "ALTER TYPE booking_status ADD VALUE 'archived';"
    assert lint_sql(enum) == []
    assert rules(lint_sql(enum, pg_version=11)) == {
        "ban-non-transactional-statement-in-transaction"
    }


def test_reindex_and_detach_need_concurrently() -> None:
    assert rules(lint_sql("REINDEX TABLE t;")) == {"require-concurrent-reindex"}
    assert rules(lint_sql("ALTER TABLE p DETACH PARTITION c;")) == {
        "require-concurrent-partition-detach"
    }


def test_lock_table_in_a_weak_mode_is_a_warning() -> None:
    (finding,) = lint_sql("LOCK TABLE t IN ACCESS SHARE MODE;")
    assert (finding.rule, finding.severity) == ("ban-lock-table", Severity.warning)


def test_disable_rls_knows_tenant_tables_from_the_file_and_the_caller() -> None:
    sql = "ALTER TABLE booking.bookings DISABLE ROW LEVEL SECURITY;"
    (unknown,) = lint_sql(sql)
    assert unknown.severity is Severity.warning
    (known,) = lint_sql(sql, known_tenant_tables={"booking.bookings"})
    assert known.severity is Severity.error
    (bare,) = lint_sql(sql, known_tenant_tables={"bookings"})  # search_path spelling
    assert bare.severity is Severity.error
    created = (
        "CREATE TABLE x (id int, tenant_id uuid);\n"
        "ALTER TABLE x ENABLE ROW LEVEL SECURITY;\n"
        "ALTER TABLE x DISABLE ROW LEVEL SECURITY;\n"
    )
    (in_file,) = lint_sql(created)
    assert (in_file.rule, in_file.severity, in_file.line) == (
        "ban-disable-row-level-security",
        Severity.error,
        3,
    )


def test_tenant_tables_carry_over_between_files_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "0001_a.up.sql").write_text(
        "CREATE TABLE t (id int, tenant_id uuid);\nALTER TABLE t ENABLE ROW LEVEL SECURITY;\n"
    )
    (tmp_path / "0002_b.up.sql").write_text("ALTER TABLE t DISABLE ROW LEVEL SECURITY;\n")
    (tmp_path / "0002_b.down.sql").write_text("DROP TABLE t;\n")
    report = lint_paths([tmp_path])
    assert [Path(f).name for f in report.files] == ["0001_a.up.sql", "0002_b.up.sql"]
    (finding,) = report.findings
    assert finding.severity is Severity.error and finding.file.endswith("0002_b.up.sql")


# --- directives ------------------------------------------------------------------------


def test_parse_directives() -> None:
    d = parse_directives(
        "-- 0005 something\n"
        "-- ptool: no-transaction\n"
        "-- ptool: allow ban-drop-column, renaming-table -- reason: unused since release 41\n"
        "--ptool:allow ban-drop-table reason: archived in 0004\n"
        "SELECT '-- ptool: allow ban-lock-table -- reason: inside a string';\n"
    )
    assert d.no_transaction
    assert d.allows == {
        "ban-drop-column": "unused since release 41",
        "renaming-table": "unused since release 41",
        "ban-drop-table": "archived in 0004",
    }
    assert d.problems == []


def test_allow_with_reason_marks_findings_allowed() -> None:
    (finding,) = lint_file(SAFE / "drop_column.sql")
    assert finding.allowed and not finding.blocking
    assert finding.allow_reason == "note unused since release 41"


def test_allow_without_reason_is_an_error_and_does_not_allow() -> None:
    sql = "-- ptool: allow ban-drop-column\nALTER TABLE t DROP COLUMN c;\n"
    found = {(f.rule, f.allowed, f.line) for f in lint_sql(sql)}
    assert found == {("allow-without-reason", False, 1), ("ban-drop-column", False, 2)}


def test_bad_directives() -> None:
    sql = (
        "-- ptool: allow no-such-rule -- reason: x\n"
        "-- ptool: allow syntax-error -- reason: x\n"
        "-- ptool: transactional false\n"
        "-- ptool: allow ban-drop-table -- reason: nothing dropped\n"
        "SELECT 1;\n"
        "-- ptool: no-transaction\n"
        "SELECT 2;\n"
    )
    found = [(f.rule, f.line, f.severity) for f in lint_sql(sql)]
    assert found == [
        ("unknown-directive", 1, Severity.error),
        ("unknown-directive", 2, Severity.error),
        ("unknown-directive", 3, Severity.error),
        ("unused-allow", 4, Severity.warning),
        ("unknown-directive", 6, Severity.error),
    ]
    assert not parse_directives(sql).no_transaction  # the late one has no effect


def test_no_transaction_directive_changes_what_is_flagged() -> None:
    cic = "CREATE INDEX CONCURRENTLY i ON t (x);\n"
    assert rules(lint_sql(cic)) == {"ban-concurrent-index-creation-in-transaction"}
    assert lint_sql("-- ptool: no-transaction\n" + cic) == []
    assert lint_sql(cic, transactional=False) == []


# --- registry, paths, the shipped migrations ---------------------------------------------


def test_rules_registry_and_docs_agree() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "migrations.md").read_text()
    for rule in RULES.values():
        assert re.match(r"^[a-z]+(-[a-z]+)*$", rule.id)
        row = f"| `{rule.id}` | {rule.severity.value} | "
        assert row in docs, rule.id
        assert rule.summary and rule.fix


def test_collect_files_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up.sql").write_text("SELECT 1;")
    (tmp_path / "sub" / "down.sql").write_text("SELECT 1;")
    (tmp_path / "notes.txt").write_text("x")
    assert collect_files([tmp_path]) == [tmp_path / "sub" / "up.sql"]
    assert collect_files([tmp_path / "sub" / "down.sql"]) == [tmp_path / "sub" / "down.sql"]
    with pytest.raises(ConfigError, match="does not exist"):
        collect_files([tmp_path / "missing"])


def test_non_utf8_file_is_a_syntax_error_finding(tmp_path: Path) -> None:
    path = tmp_path / "latin1.sql"
    path.write_bytes("SELECT 'é';".encode("latin-1"))
    (finding,) = lint_file(path)
    assert finding.rule == "syntax-error"


def test_shipped_booking_migrations_lint_clean() -> None:
    report = lint_paths([MIGRATIONS_DIR])
    assert len(report.files) == len(list(MIGRATIONS_DIR.glob("*.up.sql")))
    assert report.findings == []
