"""The checks for what breaks the running release or holds a live table's lock that the
file's own statements hide: dropped views, schemas and defaults, type changes (free or
not), foreign keys from tables the file filled. A mixin of
:class:`ptool_ops.migrate.rules_check.Checker`, which holds the state and reports.

Multi-object ``DROP`` statements give one finding each, naming what they drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ptool_ops.migrate.lock_analysis import (
    Statement,
    in_names,
    relation_name,
    same_relation,
)
from ptool_ops.migrate.rules import Severity
from ptool_ops.migrate.rules_schema import (
    KnownSchema,
    TypeSpec,
    type_change_rewrites,
    type_spec,
    utc_setting,
)

__all__ = ["ReleaseChecks"]


class ReleaseChecks:
    """State and checks for the release-breaking rules (see the module docstring)."""

    schema: KnownSchema
    in_transaction: bool
    created_indexes: set[str]
    created_views: set[str]
    created_schemas: set[str]
    filled: set[str]  # new tables filled from a query or COPY
    dropped_views: list[tuple[Statement, str, list[str]]]  # until commit
    new_fk_not_valid: dict[tuple[str, str], str]  # on filled tables, this transaction
    tz_session: bool  # SET TimeZone = 'UTC' (or another zero-offset zone)
    tz_local: bool | None  # SET LOCAL TimeZone, until the transaction ends

    if TYPE_CHECKING:

        def report(
            self,
            rule: str,
            statement: Statement,
            message: str,
            *,
            node: Any = None,
            severity: Severity | None = None,
        ) -> None: ...

        def new(self, table: str) -> bool: ...

    def _init_release_state(self) -> None:
        self.created_views = set()
        self.created_schemas = set()
        self.filled = set()
        self.dropped_views = []
        self.new_fk_not_valid = {}
        self.tz_session = False
        self.tz_local = None

    def end_release_transaction(self, *, committed: bool) -> None:
        """Views dropped and not re-created are gone now (unless rolled back); SET LOCAL
        ends."""
        for st, what, names in self.dropped_views if committed else ():
            if names:
                self.report("ban-drop-view", st, f"DROP {what} {', '.join(names)}")
        self.dropped_views.clear()
        self.new_fk_not_valid.clear()
        self.tz_local = None

    @property
    def utc(self) -> bool:
        """Whether the session TimeZone is known to be UTC here (set earlier in the file)."""
        return self.tz_local if self.tz_local is not None else self.tz_session

    def create_view(self, name: str, *, replace: bool) -> None:
        """CREATE VIEW (OR REPLACE: perhaps an existing one) or MATERIALIZED VIEW."""
        if not replace:
            self.created_views.add(name)
        for _, _, names in self.dropped_views:
            names[:] = [n for n in names if not same_relation(n, name)]

    def set_variable(self, node: Any) -> None:
        utc = utc_setting(node)
        if utc is None:
            return
        if node.is_local:
            if self.in_transaction:
                self.tz_local = utc
        else:
            self.tz_session = utc
            self.tz_local = None

    def fill(self, node: Any) -> None:
        """INSERT ... SELECT, COPY FROM and MERGE fill a new table with rows from elsewhere;
        INSERT ... VALUES only adds the rows written in the file."""
        from pglast import ast

        if isinstance(node, ast.CopyStmt) and not node.is_from:
            return
        if isinstance(node, ast.InsertStmt):
            query = node.selectStmt
            if query is None or (isinstance(query, ast.SelectStmt) and query.valuesLists):
                return
        target = node.relation
        if target is not None and self.new(relation_name(target)):
            self.filled.add(relation_name(target))

    def drop(self, st: Statement, node: Any) -> None:
        """One finding per statement, naming every object it drops that the file did not
        create (``DROP TABLE a, b`` is one change)."""
        from pglast import enums

        o = enums.ObjectType
        kind = node.removeType
        if kind == o.OBJECT_SCHEMA:
            schemas = [str(getattr(obj, "sval", obj)) for obj in node.objects or ()]
            old = [n for n in schemas if n not in self.created_schemas]
            if old:
                cascade = " CASCADE" if node.behavior == enums.DropBehavior.DROP_CASCADE else ""
                self.report("ban-drop-schema", st, f"DROP SCHEMA {', '.join(old)}{cascade}")
            return
        names = [relation_name(obj) for obj in node.objects or ()]
        if kind == o.OBJECT_TABLE:
            old = [n for n in names if not self.new(n)]
            if old:
                self.report("ban-drop-table", st, f"DROP TABLE {', '.join(old)}")
            for name in names:
                self.schema.drop_table(name)
        elif kind == o.OBJECT_INDEX and not node.concurrent:
            old = [n for n in names if not in_names(n, self.created_indexes)]
            if old:
                self.report(
                    "require-concurrent-index-deletion",
                    st,
                    f"DROP INDEX {', '.join(old)} without CONCURRENTLY locks"
                    f" {'its table' if len(old) == 1 else 'their tables'}",
                )
        elif kind in (o.OBJECT_VIEW, o.OBJECT_MATVIEW):
            what = "VIEW" if kind == o.OBJECT_VIEW else "MATERIALIZED VIEW"
            old = [n for n in names if not in_names(n, self.created_views)]
            if not old:
                return
            if self.in_transaction:  # fine if re-created before the commit
                self.dropped_views.append((st, what, old))
            else:
                self.report("ban-drop-view", st, f"DROP {what} {', '.join(old)}")

    def type_change(self, st: Statement, table: str, column: str, col: Any) -> None:
        """ALTER COLUMN ... TYPE: a rewrite unless the linter knows the column's current type
        and the change is one PostgreSQL makes in the catalog only."""
        new = type_spec(col.typeName)
        info = self.schema.column(table, column)
        old = info.type if info is not None else None
        what = f"ALTER COLUMN {column} TYPE {new or '(type)'}"
        why: str | None
        if new is None:
            why = "the new type is not a plain type the linter can compare"
        elif old is None:
            why = "its current type is not known to the linter (created outside the linted files)"
        elif col.collClause is not None:
            why = "a COLLATE clause rebuilds the column's indexes"
        elif not _plain_using(col.raw_default, column, new):
            why = "the USING expression is computed for every row"
        else:
            why = type_change_rewrites(old, new, utc=self.utc)
            if why is None:
                if old.name != new.name and {old.name, new.name} == {"timestamp", "timestamptz"}:
                    self.report(
                        "changing-column-type",
                        st,
                        f"{what} (from {old}) does not rewrite {table} (TimeZone is UTC), but"
                        " every index on the column is rebuilt under ACCESS EXCLUSIVE (its"
                        " operator class changes)",
                        node=col,
                        severity=Severity.warning,
                    )
                return
        self.report(
            "changing-column-type",
            st,
            f"{what} rewrites {table} under ACCESS EXCLUSIVE: {why}",
            node=col,
        )

    def column_default(self, st: Statement, table: str, column: str, expr: Any) -> None:
        """SET DEFAULT NULL or DROP DEFAULT (``expr`` None) on a column of a live table."""
        if not _is_null(expr):
            return
        info = self.schema.column(table, column)
        if info is not None and not info.not_null:
            return  # a nullable column: omitted values become NULL, nothing fails
        if info is not None:
            self.report(
                "ban-drop-default",
                st,
                f"DROP DEFAULT on NOT NULL column {table}.{column}: the running release's"
                " INSERTs that omit it fail with not_null_violation",
            )
            return
        self.report(
            "ban-drop-default",
            st,
            f"DROP DEFAULT on {table}.{column}, a column not known to the linter: if it is"
            " NOT NULL, the running release's INSERTs that omit it fail",
            severity=Severity.warning,
        )

    def filled_foreign_key(self, st: Statement, table: str, cmd: Any) -> None:
        """A foreign key from a table this file created and filled to a table it did not
        create: validating it scans the rows while the referenced table's SHARE ROW
        EXCLUSIVE lock blocks its writers."""
        from pglast import ast, enums

        t = enums.AlterTableType
        c = enums.ConstrType
        sub = cmd.subtype
        if sub == t.AT_ValidateConstraint:
            ref = self.new_fk_not_valid.get((table, cmd.name))
            if ref is not None:
                self.report(
                    "adding-foreign-key-constraint",
                    st,
                    f"VALIDATE CONSTRAINT {cmd.name} on {table} (filled earlier in this"
                    f" migration) in the transaction that added it: {ref} stays locked"
                    " against writes through the scan",
                )
            return
        if sub == t.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            cons = [cmd.def_]
            label = f"ADD CONSTRAINT {cmd.def_.conname or '(unnamed)'} FOREIGN KEY"
        elif sub == t.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            cons = list(cmd.def_.constraints or ())
            label = f"ADD COLUMN {cmd.def_.colname} REFERENCES"
        else:
            return
        for con in cons:
            if con.contype != c.CONSTR_FOREIGN or con.pktable is None:
                continue
            ref = relation_name(con.pktable)
            if self.new(ref):
                continue
            if con.skip_validation:
                if con.conname and self.in_transaction:
                    self.new_fk_not_valid[(table, con.conname)] = ref
                continue
            self.report(
                "adding-foreign-key-constraint",
                st,
                f"{label} on {table}, filled earlier in this migration, checks every row"
                f" while SHARE ROW EXCLUSIVE on existing table {ref} blocks its writes",
                node=con,
            )


def _is_null(expr: Any) -> bool:
    """DROP DEFAULT (no expression) or SET DEFAULT NULL (possibly cast)."""
    from pglast import ast

    while isinstance(expr, ast.TypeCast):
        expr = expr.arg
    return expr is None or (isinstance(expr, ast.A_Const) and bool(expr.isnull))


def _plain_using(expr: Any, column: str, new: TypeSpec) -> bool:
    """No USING clause, or USING the column itself (optionally cast to the new type)."""
    from pglast import ast

    if isinstance(expr, ast.TypeCast):
        if type_spec(expr.typeName) != new:
            return False
        expr = expr.arg
    if expr is None:
        return True
    if isinstance(expr, ast.ColumnRef) and expr.fields and len(expr.fields) == 1:
        return getattr(expr.fields[0], "sval", None) == column
    return False
