"""Lock analysis and statement splitting on real parse trees."""

from __future__ import annotations

import pytest

from ptool_ops.errors import ConfigError
from ptool_ops.migrate.lock_analysis import (
    LockMode,
    SqlSyntaxError,
    analyse,
    plan_statements,
    split_statements,
)

AE = LockMode.ACCESS_EXCLUSIVE
SUE = LockMode.SHARE_UPDATE_EXCLUSIVE
SRE = LockMode.SHARE_ROW_EXCLUSIVE


def locks(sql: str) -> list[tuple[str, LockMode, bool, bool]]:
    return [(lk.table, lk.mode, lk.rewrites, lk.scans) for lk in analyse(sql)]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("ALTER TABLE t ADD COLUMN c int", [("t", AE, False, False)]),
        ("ALTER TABLE t ADD COLUMN c uuid DEFAULT gen_random_uuid()", [("t", AE, True, False)]),
        ("ALTER TABLE t ALTER COLUMN c TYPE bigint", [("t", AE, True, False)]),
        ("ALTER TABLE t ALTER COLUMN c SET NOT NULL", [("t", AE, False, True)]),
        ("ALTER TABLE t ADD CONSTRAINT k CHECK (c > 0)", [("t", AE, False, True)]),
        ("ALTER TABLE t ADD CONSTRAINT k CHECK (c > 0) NOT VALID", [("t", AE, False, False)]),
        ("ALTER TABLE t VALIDATE CONSTRAINT k", [("t", SUE, False, True)]),
        (
            "ALTER TABLE s.t ADD CONSTRAINT f FOREIGN KEY (u_id) REFERENCES s.u (id)",
            [("s.u", SRE, False, False), ("s.t", SRE, False, True)],
        ),
        (
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u_id) REFERENCES u (id) NOT VALID",
            [("u", SRE, False, False), ("t", SRE, False, False)],
        ),
        ("ALTER TABLE t ADD CONSTRAINT k UNIQUE (c)", [("t", AE, False, True)]),
        ("ALTER TABLE t ADD CONSTRAINT k UNIQUE USING INDEX i", [("t", AE, False, False)]),
        ("ALTER TABLE t DISABLE TRIGGER ALL", [("t", SRE, False, False)]),
        ("ALTER TABLE t SET (fillfactor = 70)", [("t", SUE, False, False)]),
        ("ALTER TABLE t SET LOGGED", [("t", AE, True, False)]),
        ("CREATE INDEX i ON t (c)", [("t", LockMode.SHARE, False, True)]),
        ("CREATE INDEX CONCURRENTLY i ON t (c)", [("t", SUE, False, True)]),
        ("DROP INDEX i", [("i", AE, False, False)]),
        ("DROP INDEX CONCURRENTLY i", [("i", SUE, False, False)]),
        ("DROP TABLE a, b", [("a", AE, False, False), ("b", AE, False, False)]),
        ("VACUUM FULL t", [("t", AE, True, True)]),
        ("VACUUM t", [("t", SUE, False, True)]),
        ("CLUSTER t USING i", [("t", AE, True, True)]),
        ("LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE", [("t", SRE, False, False)]),
        ("REINDEX TABLE CONCURRENTLY t", [("t", SUE, False, True)]),
        ("ALTER TABLE t RENAME COLUMN a TO b", [("t", AE, False, False)]),
        ("ALTER INDEX i RENAME TO j", [("i", SUE, False, False)]),
        (
            "CREATE TRIGGER g BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION f()",
            [("t", SRE, False, False)],
        ),
        ("CREATE POLICY p ON t USING (true)", [("t", AE, False, False)]),
        ("UPDATE t SET a = 1", [("t", LockMode.ROW_EXCLUSIVE, False, True)]),
        ("UPDATE t SET a = 1 WHERE id = 2", [("t", LockMode.ROW_EXCLUSIVE, False, False)]),
        ("CREATE TABLE n (id int REFERENCES u (id))", [("u", SRE, False, False)]),
        ("CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)", [("p", AE, False, False)]),
        (
            "ALTER TABLE p ATTACH PARTITION p2 FOR VALUES IN (2)",
            [("p2", AE, False, True), ("p", SUE, False, True)],
        ),
        ("GRANT SELECT ON t TO r", []),
    ],
)
def test_lock_levels(sql: str, expected: list[tuple[str, LockMode, bool, bool]]) -> None:
    assert locks(sql) == expected


def test_strongest_lock_per_table_within_one_statement() -> None:
    (lock,) = analyse("ALTER TABLE t VALIDATE CONSTRAINT k, ALTER COLUMN c TYPE bigint")
    assert lock.mode is AE and lock.rewrites and lock.scans


def test_new_tables_are_marked_and_statement_positions_kept() -> None:
    sql = "CREATE TABLE n (id int);\n\nCREATE INDEX ON n (id);\nCREATE INDEX ON old (id);\n"
    result = analyse(sql)
    assert [(lk.statement_index, lk.line, lk.table, lk.new_table) for lk in result] == [
        (1, 3, "n", True),
        (2, 4, "old", False),
    ]


def test_plan_marks_opaque_and_non_transactional_statements() -> None:
    plans = plan_statements(
        "DO $$ BEGIN PERFORM 1; END $$;\nSELECT f();\nSELECT 1;\n"
        "CREATE INDEX CONCURRENTLY i ON t (c);\n"
    )
    assert [p.opaque for p in plans] == [True, True, False, False]
    assert plans[3].non_transactional and "CONCURRENTLY" in plans[3].non_transactional
    assert plans[0].non_transactional is None


def test_lock_mode_properties() -> None:
    assert LockMode.ACCESS_SHARE.level == 1 and AE.level == 8
    assert AE.blocks_reads and AE.blocks_writes
    assert LockMode.SHARE.blocks_writes and not LockMode.SHARE.blocks_reads
    assert not SUE.blocks_writes


def test_split_statements_positions_and_text() -> None:
    text = (
        "-- header\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n"
        "  /* é */ SELECT 'a;b';\n"
        "SELECT 3"
    )
    statements = split_statements(text)
    assert [(s.line, s.column, s.kind) for s in statements] == [
        (2, 1, "CreateFunctionStmt"),
        (3, 11, "SelectStmt"),
        (4, 1, "SelectStmt"),
    ]
    assert statements[0].text.endswith("$$ SELECT 1; $$")
    assert statements[1].text == "SELECT 'a;b'"
    assert statements[2].text == "SELECT 3"
    assert text[statements[1].start :].startswith("SELECT 'a;b'")


def test_split_statements_syntax_error() -> None:
    with pytest.raises(SqlSyntaxError) as caught:
        split_statements("SELECT 1;\n  SELEC 2;\n", path="m.sql")
    err = caught.value
    assert isinstance(err, ConfigError)
    assert (err.line, err.column) == (2, 3)
    assert str(err).startswith("m.sql:2:3: syntax error")
