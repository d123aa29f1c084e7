"""The checks behind :func:`ptool_ops.migrate.lint.lint_sql`, one method per statement kind.

:class:`Checker` walks one file's statements in order and remembers what the file itself
did: tables and indexes it created (exempt from the rules about existing tables, which
squawk gets wrong), constraints added NOT VALID in the current transaction, CHECK
(col IS NOT NULL) constraints that prove a later SET NOT NULL safe, tenant tables and
whether RLS was enabled on them, tables it filled (INSERT ... SELECT, COPY, CREATE TABLE
AS), views dropped and not yet re-created, whether the session TimeZone is UTC. What earlier
files created (columns, their types and NOT NULL) comes in a :class:`KnownSchema`, which the
checker updates as it goes so the next file knows this one's changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ptool_ops.migrate.lock_analysis import (
    LockMode,
    Statement,
    column_rewrites,
    created_table,
    has_option,
    in_names,
    non_transactional_reason,
    relation_name,
    unknown_calls,
)
from ptool_ops.migrate.rules import RULES, Finding, Severity
from ptool_ops.migrate.rules_release import ReleaseChecks
from ptool_ops.migrate.rules_schema import KnownSchema

__all__ = ["TENANT_COLUMN", "Checker"]

TENANT_COLUMN = "tenant_id"


class Checker(ReleaseChecks):
    """Walks one file's statements in order, tracking what the file itself created."""

    def __init__(
        self,
        text: str,
        path: str,
        transactional: bool,
        schema: KnownSchema | Iterable[str],
        pg_version: int,
    ) -> None:
        self.text = text
        self.path = path
        self.transactional = transactional
        self.in_transaction = transactional
        self.pg_version = pg_version
        if not isinstance(schema, KnownSchema):
            schema = KnownSchema(tenant_tables=set(schema))
        self.schema = schema
        self.tenant_tables = schema.tenant_tables  # the same set: updates carry over
        self.created: set[str] = set()
        self._init_release_state()
        self.created_tenant: dict[str, Statement] = {}
        self.created_indexes: set[str] = set()
        self.rls_enabled: set[str] = set()
        self.not_valid: set[tuple[str, str]] = set()  # added NOT VALID in this transaction
        self.not_null_checks: dict[tuple[str, str], str] = {}  # (table, constraint) -> column
        self.proven_not_null: set[tuple[str, str]] = set()  # (table, column)
        self.validated_unknown: set[str] = set()  # tables with a VALIDATE of a constraint
        self.findings: list[Finding] = []
        self._starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    # --- helpers -------------------------------------------------------------------

    def _pos(self, statement: Statement, node: Any = None) -> tuple[int, int]:
        location = getattr(node, "location", None) if node is not None else None
        if isinstance(location, int) and location >= 0:
            import bisect

            row = bisect.bisect_right(self._starts, location) - 1
            return row + 1, location - self._starts[row] + 1
        return statement.line, statement.column

    def report(
        self,
        rule: str,
        statement: Statement,
        message: str,
        *,
        node: Any = None,
        severity: Severity | None = None,
    ) -> None:
        line, column = self._pos(statement, node)
        spec = RULES[rule]
        self.findings.append(
            Finding(rule, severity or spec.severity, self.path, line, column, message, spec.fix)
        )

    def new(self, table: str) -> bool:
        return in_names(table, self.created)

    # --- statements ----------------------------------------------------------------

    def statement(self, st: Statement) -> None:
        from pglast import ast, enums

        node = st.node
        reason = non_transactional_reason(node, pg_version=self.pg_version)
        if reason and self.in_transaction:
            rule = (
                "ban-concurrent-index-creation-in-transaction"
                if isinstance(node, ast.IndexStmt)
                else "ban-non-transactional-statement-in-transaction"
            )
            self.report(rule, st, f"{reason}, and this migration runs in one")
        if isinstance(node, ast.TransactionStmt):
            self.transaction(st, node)
        elif isinstance(node, ast.CreateStmt):
            self.create_table(st, node)
        elif isinstance(node, ast.IndexStmt):
            self.create_index(st, node)
        elif isinstance(node, ast.AlterTableStmt):
            self.alter_table(st, node)
        elif isinstance(node, ast.DropStmt):
            self.drop(st, node)
        elif isinstance(node, ast.RenameStmt):
            self.rename(st, node)
        elif isinstance(node, ast.VacuumStmt | ast.ClusterStmt):
            self.rewrite(st, node)
        elif isinstance(node, ast.LockStmt):
            self.lock(st, node)
        elif isinstance(node, ast.ReindexStmt):
            self.reindex(st, node)
        elif isinstance(node, ast.DropdbStmt):
            self.report("ban-drop-database", st, f"DROP DATABASE {node.dbname}")
        elif isinstance(node, ast.ViewStmt):
            self.create_view(relation_name(node.view), replace=bool(node.replace))
        elif isinstance(node, ast.CreateSchemaStmt) and node.schemaname:
            if not node.if_not_exists:
                self.created_schemas.add(node.schemaname)
        elif isinstance(node, ast.VariableSetStmt):
            self.set_variable(node)
        elif isinstance(node, ast.InsertStmt | ast.CopyStmt | ast.MergeStmt):
            self.fill(node)
        name = created_table(node)
        if name:
            self.created.add(name)
            into = getattr(node, "into", None) or getattr(node, "intoClause", None)
            if into is not None and not into.skipData:  # CREATE TABLE AS, SELECT INTO
                self.filled.add(name)
            if isinstance(node, ast.CreateTableAsStmt):
                self.schema.tables[name] = {}  # a known table, columns unknown
                if node.objtype == enums.ObjectType.OBJECT_MATVIEW:
                    self.create_view(name, replace=False)

    def transaction(self, st: Statement, node: Any) -> None:
        from pglast import enums

        k = enums.TransactionStmtKind
        starts = node.kind in (k.TRANS_STMT_BEGIN, k.TRANS_STMT_START)
        ends = node.kind in (k.TRANS_STMT_COMMIT, k.TRANS_STMT_ROLLBACK, k.TRANS_STMT_PREPARE)
        if not (starts or ends):
            return
        if self.transactional:
            self.report(
                "transaction-nesting",
                st,
                "transaction control in a migration that already runs in a transaction",
            )
            return
        if ends:
            self.end_release_transaction(committed=node.kind != k.TRANS_STMT_ROLLBACK)
        self.in_transaction = starts
        self.not_valid.clear()

    def create_table(self, st: Statement, node: Any) -> None:
        from pglast import ast

        table = relation_name(node.relation)
        columns = [e.colname for e in node.tableElts or () if isinstance(e, ast.ColumnDef)]
        if TENANT_COLUMN in columns and node.relation.relpersistence != "t":
            self.tenant_tables.add(table)
            self.created_tenant[table] = st
        self.schema.create_table(node)

    def create_index(self, st: Statement, node: Any) -> None:
        table = relation_name(node.relation)
        if node.idxname:
            schema = node.relation.schemaname
            self.created_indexes.add(f"{schema}.{node.idxname}" if schema else node.idxname)
        if not node.concurrent and not self.new(table):
            kind = "UNIQUE INDEX" if node.unique else "INDEX"
            self.report(
                "require-concurrent-index-creation",
                st,
                f"CREATE {kind} on existing table {table} without CONCURRENTLY blocks its"
                " writes for the whole build",
            )

    def rename(self, st: Statement, node: Any) -> None:
        from pglast import enums

        o = enums.ObjectType
        if node.relation is None:
            return
        table = relation_name(node.relation)
        is_column = node.renameType == o.OBJECT_COLUMN and node.relationType in (
            o.OBJECT_TABLE,
            o.OBJECT_FOREIGN_TABLE,
        )
        if not self.new(table):
            if is_column:
                self.report(
                    "renaming-column",
                    st,
                    f"RENAME COLUMN {table}.{node.subname} to {node.newname}",
                )
            elif node.renameType == o.OBJECT_TABLE:
                self.report("renaming-table", st, f"RENAME TABLE {table} to {node.newname}")
        if is_column:
            self.schema.rename_column(table, node.subname, node.newname)
        elif node.renameType == o.OBJECT_TABLE:
            self.schema.rename_table(table, node.newname)

    def rewrite(self, st: Statement, node: Any) -> None:
        from pglast import ast

        if isinstance(node, ast.ClusterStmt):
            if node.relation is not None and not self.new(relation_name(node.relation)):
                self.report("prefer-repack", st, f"CLUSTER {relation_name(node.relation)}")
            elif node.relation is None:
                self.report("prefer-repack", st, "CLUSTER of every clustered table")
            return
        if node.is_vacuumcmd and has_option(node.options, "full"):
            tables = [relation_name(r.relation) for r in node.rels or ()]
            if not tables or any(not self.new(t) for t in tables):
                self.report("prefer-repack", st, f"VACUUM FULL {', '.join(tables) or '(all)'}")

    def lock(self, st: Statement, node: Any) -> None:
        mode = list(LockMode)[max(1, min(8, int(node.mode or 8))) - 1]
        tables = [relation_name(r) for r in node.relations or ()]
        if all(self.new(t) for t in tables):
            return
        self.report(
            "ban-lock-table",
            st,
            f"LOCK TABLE {', '.join(tables)} IN {mode.value} MODE",
            severity=Severity.error if mode.blocks_writes else Severity.warning,
        )

    def reindex(self, st: Statement, node: Any) -> None:
        if has_option(node.params, "concurrently"):
            return
        target = relation_name(node.relation) if node.relation is not None else node.name
        if target and (self.new(str(target)) or in_names(str(target), self.created_indexes)):
            return
        self.report("require-concurrent-reindex", st, f"REINDEX {target} without CONCURRENTLY")

    # --- ALTER TABLE -----------------------------------------------------------------

    def alter_table(self, st: Statement, node: Any) -> None:
        table = relation_name(node.relation)
        new = self.new(table)
        for cmd in node.cmds or ():
            self.alter_command(st, table, new, cmd)
            self.schema.alter_table(table, [cmd])

    def alter_command(self, st: Statement, table: str, new: bool, cmd: Any) -> None:
        from pglast import ast, enums

        t = enums.AlterTableType
        sub = cmd.subtype
        if sub == t.AT_EnableRowSecurity:
            self.rls_enabled.add(table)
        elif sub == t.AT_DisableRowSecurity:
            self.disable_rls(st, table)
        if new:
            if sub == t.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
                self.remember_constraint(table, cmd.def_)
            if in_names(table, self.filled):
                self.filled_foreign_key(st, table, cmd)
            return
        if sub == t.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            self.add_column(st, table, cmd.def_)
        elif sub == t.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            self.add_constraint(st, table, cmd.def_)
        elif sub == t.AT_ValidateConstraint:
            self.validate(st, table, cmd.name)
        elif sub == t.AT_SetNotNull:
            if (table, cmd.name) not in self.proven_not_null and not in_names(
                table, self.validated_unknown
            ):
                self.report(
                    "adding-not-nullable-field",
                    st,
                    f"SET NOT NULL on {table}.{cmd.name} scans the table under ACCESS"
                    " EXCLUSIVE: no validated CHECK (col IS NOT NULL) precedes it",
                )
        elif sub == t.AT_AlterColumnType and isinstance(cmd.def_, ast.ColumnDef):
            self.type_change(st, table, cmd.name, cmd.def_)
        elif sub == t.AT_ColumnDefault:
            self.column_default(st, table, cmd.name, cmd.def_)
        elif sub == t.AT_DropColumn:
            self.report("ban-drop-column", st, f"DROP COLUMN {table}.{cmd.name}")
        elif sub == t.AT_DetachPartition and not getattr(cmd.def_, "concurrent", False):
            self.report(
                "require-concurrent-partition-detach",
                st,
                f"DETACH PARTITION from {table} without CONCURRENTLY",
            )

    def disable_rls(self, st: Statement, table: str) -> None:
        tenant = in_names(table, self.tenant_tables)
        what = "tenant table" if tenant else "table (not known to be a tenant table)"
        self.report(
            "ban-disable-row-level-security",
            st,
            f"DISABLE ROW LEVEL SECURITY on {what} {table}",
            severity=Severity.error if tenant else Severity.warning,
        )

    def add_column(self, st: Statement, table: str, col: Any) -> None:
        from pglast import enums

        c = enums.ConstrType
        kinds = {con.contype for con in col.constraints or ()}
        why = column_rewrites(col)
        if why is None and self.pg_version < 11 and c.CONSTR_DEFAULT in kinds:
            why = f"before PostgreSQL 11 any default rewrites (target: {self.pg_version})"
        if why:
            self.report(
                "adding-field-with-default",
                st,
                f"ADD COLUMN {col.colname} rewrites {table}: {why}",
                node=col,
            )
        else:
            for con in col.constraints or ():
                if con.contype == c.CONSTR_DEFAULT and con.raw_expr is not None:
                    unknown = unknown_calls(con.raw_expr)
                    if unknown:
                        self.report(
                            "adding-field-with-default",
                            st,
                            f"ADD COLUMN {col.colname}: the default calls {unknown[0]}(),"
                            " whose volatility is unknown; a volatile one rewrites the table",
                            node=col,
                            severity=Severity.warning,
                        )
        has_value = kinds & {c.CONSTR_DEFAULT, c.CONSTR_IDENTITY, c.CONSTR_GENERATED}
        if c.CONSTR_NOTNULL in kinds and not has_value:
            self.report(
                "adding-required-field",
                st,
                f"ADD COLUMN {col.colname} NOT NULL without a DEFAULT on existing table {table}",
                node=col,
            )
        if c.CONSTR_FOREIGN in kinds:
            self.report(
                "adding-foreign-key-constraint",
                st,
                f"ADD COLUMN {col.colname} REFERENCES validates the new foreign key against"
                f" every row of {table} under lock",
                node=col,
            )
        if c.CONSTR_UNIQUE in kinds:
            self.report(
                "disallowed-unique-constraint",
                st,
                f"ADD COLUMN {col.colname} UNIQUE builds an index under ACCESS EXCLUSIVE",
                node=col,
            )
        if c.CONSTR_PRIMARY in kinds:
            self.report(
                "adding-serial-primary-key-field",
                st,
                f"ADD COLUMN {col.colname} PRIMARY KEY builds an index under ACCESS EXCLUSIVE",
                node=col,
            )

    def remember_constraint(self, table: str, con: Any) -> None:
        """Note a CHECK (col IS NOT NULL) or NOT NULL constraint, valid or NOT VALID."""
        from pglast import ast, enums

        c = enums.ConstrType
        column: str | None = None
        if con.contype == c.CONSTR_CHECK and isinstance(con.raw_expr, ast.NullTest):
            arg = con.raw_expr.arg
            if (
                con.raw_expr.nulltesttype == enums.NullTestType.IS_NOT_NULL
                and isinstance(arg, ast.ColumnRef)
                and arg.fields
                and len(arg.fields) == 1
            ):
                column = getattr(arg.fields[0], "sval", None)
        elif con.contype == c.CONSTR_NOTNULL and con.keys and len(con.keys) == 1:
            column = getattr(con.keys[0], "sval", None)
        if column is None:
            return
        if con.conname:
            self.not_null_checks[(table, con.conname)] = column
        if not con.skip_validation:
            self.proven_not_null.add((table, column))

    def add_constraint(self, st: Statement, table: str, con: Any) -> None:
        from pglast import enums

        c = enums.ConstrType
        self.remember_constraint(table, con)
        name = con.conname or "(unnamed)"
        if con.skip_validation and con.conname and self.in_transaction:
            self.not_valid.add((table, con.conname))
        if con.contype == c.CONSTR_FOREIGN and not con.skip_validation:
            self.report(
                "adding-foreign-key-constraint",
                st,
                f"ADD CONSTRAINT {name} FOREIGN KEY on {table} without NOT VALID scans it"
                " under SHARE ROW EXCLUSIVE on both tables",
                node=con,
            )
        elif con.contype == c.CONSTR_CHECK and not con.skip_validation:
            self.report(
                "constraint-missing-not-valid",
                st,
                f"ADD CONSTRAINT {name} CHECK on {table} without NOT VALID scans it under"
                " ACCESS EXCLUSIVE",
                node=con,
            )
        elif con.contype == c.CONSTR_NOTNULL and not con.skip_validation:
            self.report(
                "adding-not-nullable-field",
                st,
                f"ADD CONSTRAINT {name} NOT NULL on {table} without NOT VALID scans it under"
                " ACCESS EXCLUSIVE",
                node=con,
            )
        elif con.contype == c.CONSTR_UNIQUE and not con.indexname:
            self.report(
                "disallowed-unique-constraint",
                st,
                f"ADD CONSTRAINT {name} UNIQUE on {table} builds its index under ACCESS EXCLUSIVE",
                node=con,
            )
        elif con.contype == c.CONSTR_PRIMARY and not con.indexname:
            self.report(
                "adding-serial-primary-key-field",
                st,
                f"ADD CONSTRAINT {name} PRIMARY KEY on {table} builds its index under ACCESS"
                " EXCLUSIVE",
                node=con,
            )

    def validate(self, st: Statement, table: str, name: str) -> None:
        if (table, name) in self.not_valid:
            self.report(
                "constraint-missing-not-valid",
                st,
                f"VALIDATE CONSTRAINT {name} in the transaction that added it NOT VALID: the"
                " ACCESS EXCLUSIVE lock of the ADD is held through the validating scan",
            )
        column = self.not_null_checks.get((table, name))
        if column is not None:
            self.proven_not_null.add((table, column))
        else:
            self.validated_unknown.add(table)

    # --- end of file -------------------------------------------------------------------

    def finish(self) -> None:
        self.end_release_transaction(committed=True)
        for table, st in self.created_tenant.items():
            if not in_names(table, self.rls_enabled):
                self.report(
                    "require-row-level-security",
                    st,
                    f"new tenant table {table} (it has {TENANT_COLUMN}) without ENABLE ROW"
                    " LEVEL SECURITY in this migration",
                )
