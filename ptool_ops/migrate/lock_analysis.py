"""Statements of a migration and the table locks each one takes, from the parse tree.

:func:`split_statements` cuts a script into statements with their positions (the runner
executes ``no-transaction`` migrations statement by statement with it);
:func:`plan_statements` says, for each statement, which relations it locks, in which lock
mode, and whether it rewrites or scans them; :func:`analyse` is the flat list of locks.

Lock levels follow PostgreSQL 18's documentation ("Explicit Locking" and the ALTER TABLE
reference) and ``AlterTableGetLockLevel`` in ``tablecmds.c``. A statement whose effects
cannot be seen in the parse tree (``DO`` blocks, function calls) is marked ``opaque``.

pglast is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptool_ops.errors import ConfigError

__all__ = [
    "LockMode",
    "SqlSyntaxError",
    "Statement",
    "StatementLock",
    "StatementPlan",
    "analyse",
    "non_transactional_reason",
    "plan_statements",
    "relation_name",
    "split_statements",
]


class LockMode(enum.StrEnum):
    """PostgreSQL's table-level lock modes, weakest first."""

    ACCESS_SHARE = "ACCESS SHARE"
    ROW_SHARE = "ROW SHARE"
    ROW_EXCLUSIVE = "ROW EXCLUSIVE"
    SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
    SHARE = "SHARE"
    SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
    EXCLUSIVE = "EXCLUSIVE"
    ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"

    @property
    def level(self) -> int:
        """1 (ACCESS SHARE) to 8 (ACCESS EXCLUSIVE), as in PostgreSQL's ``lockdefs.h``."""
        return list(LockMode).index(self) + 1

    @property
    def blocks_writes(self) -> bool:
        """Conflicts with ROW EXCLUSIVE: INSERT/UPDATE/DELETE wait while it is held."""
        return self.level >= LockMode.SHARE.level

    @property
    def blocks_reads(self) -> bool:
        """Conflicts with ACCESS SHARE: even SELECT waits while it is held."""
        return self is LockMode.ACCESS_EXCLUSIVE


class SqlSyntaxError(ConfigError):
    """A script does not parse; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, *, path: str, line: int, column: int) -> None:
        super().__init__(
            f"{path}:{line}:{column}: {message}.",
            hint="Fix the SQL; PostgreSQL would reject it the same way.",
        )
        self.reason = message
        self.path = path
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Statement:
    """One top-level statement: its text (without the ``;``) and where it starts (1-based)."""

    index: int
    text: str
    line: int
    column: int
    start: int
    end: int
    node: Any = field(repr=False, compare=False)

    @property
    def kind(self) -> str:
        """The parse node's name: ``AlterTableStmt``, ``IndexStmt``, ..."""
        return type(self.node).__name__


@dataclass(frozen=True)
class StatementLock:
    """A lock one statement takes on one relation (the strongest of its subcommands)."""

    statement_index: int
    line: int
    table: str
    mode: LockMode
    rewrites: bool = False
    scans: bool = False
    new_table: bool = False
    note: str = ""


@dataclass(frozen=True)
class StatementPlan:
    """What a statement does to existing relations, as far as the parse tree tells."""

    statement: Statement
    locks: list[StatementLock]
    opaque: bool = False
    non_transactional: str | None = None


class _Lines:
    """Character offset -> (line, column), both 1-based."""

    def __init__(self, text: str) -> None:
        self._starts = [0]
        self._starts.extend(i + 1 for i, ch in enumerate(text) if ch == "\n")

    def position(self, offset: int) -> tuple[int, int]:
        row = bisect.bisect_right(self._starts, offset) - 1
        return row + 1, offset - self._starts[row] + 1


def _skip_blank(text: str, offset: int) -> int:
    """Advance past whitespace and comments (pglast usually points at the first token)."""
    n = len(text)
    while offset < n:
        if text[offset].isspace():
            offset += 1
        elif text.startswith("--", offset):
            nl = text.find("\n", offset)
            offset = n if nl < 0 else nl + 1
        elif text.startswith("/*", offset):
            close = text.find("*/", offset + 2)
            offset = n if close < 0 else close + 2
        else:
            break
    return offset


def split_statements(text: str, *, path: str = "<sql>") -> list[Statement]:
    """Parse ``text`` with PostgreSQL's parser into statements with their positions.

    Raises :class:`SqlSyntaxError` (a ``ConfigError``) when the text does not parse.
    """
    from pglast import parse_sql
    from pglast.parser import ParseError

    lines = _Lines(text)
    try:
        raw = parse_sql(text)
    except ParseError as err:
        offset = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], int) else 0
        line, column = lines.position(max(0, min(offset, len(text))))
        raise SqlSyntaxError(str(err.args[0]), path=path, line=line, column=column) from None
    statements: list[Statement] = []
    for index, item in enumerate(raw):
        location = item.stmt_location or 0
        start = _skip_blank(text, location)
        end = location + item.stmt_len if item.stmt_len else len(text)
        body = text[start:end].rstrip().rstrip(";").rstrip()
        line, column = lines.position(start)
        statements.append(Statement(index, body, line, column, start, end, item.stmt))
    return statements


def relation_name(node: Any) -> str:
    """``schema.name`` of a RangeVar (or a list of String nodes), ``name`` when unqualified."""
    from pglast import ast

    if isinstance(node, ast.RangeVar):
        parts = [node.catalogname, node.schemaname, node.relname]
        return ".".join(p for p in parts if p)
    return ".".join(getattr(p, "sval", str(p)) for p in node)


def same_relation(a: str, b: str) -> bool:
    """Equal names, or equal bare names when one side has no schema (search_path)."""
    if a == b:
        return True
    if "." in a and "." in b:
        return False
    return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def in_names(name: str, names: Iterable[str]) -> bool:
    return any(same_relation(name, other) for other in names)


def has_option(options: Sequence[Any] | None, name: str) -> bool:
    for opt in options or ():
        if getattr(opt, "defname", None) == name:
            arg = getattr(opt, "arg", None)
            value = getattr(arg, "boolval", getattr(arg, "sval", None)) if arg else None
            return value not in (False, "false", "off", "0")
    return False


def non_transactional_reason(node: Any, *, pg_version: int = 18) -> str | None:
    """Why PostgreSQL refuses to run this statement in a transaction block, or None."""
    from pglast import ast, enums

    if isinstance(node, ast.IndexStmt) and node.concurrent:
        return "CREATE INDEX CONCURRENTLY cannot run inside a transaction block"
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return "DROP INDEX CONCURRENTLY cannot run inside a transaction block"
    if isinstance(node, ast.ReindexStmt):
        if has_option(node.params, "concurrently"):
            return "REINDEX CONCURRENTLY cannot run inside a transaction block"
        if node.kind in (
            enums.ReindexObjectType.REINDEX_OBJECT_SCHEMA,
            enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM,
            enums.ReindexObjectType.REINDEX_OBJECT_DATABASE,
        ):
            return "REINDEX SCHEMA/SYSTEM/DATABASE cannot run inside a transaction block"
    if isinstance(node, ast.VacuumStmt) and node.is_vacuumcmd:
        return "VACUUM cannot run inside a transaction block"
    if isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            if cmd.subtype == enums.AlterTableType.AT_DetachPartition and getattr(
                cmd.def_, "concurrent", False
            ):
                return "DETACH PARTITION CONCURRENTLY cannot run inside a transaction block"
    if isinstance(node, ast.AlterEnumStmt) and node.newVal is not None and pg_version < 12:
        return "ALTER TYPE ... ADD VALUE cannot run inside a transaction block before PG 12"
    named = {
        ast.CreatedbStmt: "CREATE DATABASE",
        ast.DropdbStmt: "DROP DATABASE",
        ast.CreateTableSpaceStmt: "CREATE TABLESPACE",
        ast.DropTableSpaceStmt: "DROP TABLESPACE",
        ast.AlterSystemStmt: "ALTER SYSTEM",
        ast.CreateSubscriptionStmt: "CREATE SUBSCRIPTION",
        ast.DropSubscriptionStmt: "DROP SUBSCRIPTION",
    }
    for cls, what in named.items():
        if isinstance(node, cls):
            return f"{what} cannot run inside a transaction block"
    return None


_AE = LockMode.ACCESS_EXCLUSIVE
_SUE = LockMode.SHARE_UPDATE_EXCLUSIVE
_SRE = LockMode.SHARE_ROW_EXCLUSIVE


def _alter_cmd_lock(cmd: Any) -> LockMode:
    """The lock level of one ALTER TABLE subcommand (``AlterTableGetLockLevel``)."""
    from pglast import enums

    t = enums.AlterTableType
    sue = {
        t.AT_SetStatistics,
        t.AT_SetOptions,
        t.AT_ResetOptions,
        t.AT_ClusterOn,
        t.AT_DropCluster,
        t.AT_ValidateConstraint,
        t.AT_AttachPartition,
        t.AT_DetachPartitionFinalize,
        t.AT_SetRelOptions,
        t.AT_ResetRelOptions,
        t.AT_ReplaceRelOptions,
    }
    sre = {
        t.AT_EnableTrig,
        t.AT_EnableAlwaysTrig,
        t.AT_EnableReplicaTrig,
        t.AT_DisableTrig,
        t.AT_EnableTrigAll,
        t.AT_DisableTrigAll,
        t.AT_EnableTrigUser,
        t.AT_DisableTrigUser,
        t.AT_AlterConstraint,
    }
    if cmd.subtype in sue:
        return _SUE
    if cmd.subtype in sre:
        return _SRE
    if cmd.subtype == t.AT_AddConstraint and _is_fk(cmd.def_):
        return _SRE
    if cmd.subtype == t.AT_DetachPartition and getattr(cmd.def_, "concurrent", False):
        return _SUE
    return _AE


def _is_fk(constraint: Any) -> bool:
    from pglast import enums

    return getattr(constraint, "contype", None) == enums.ConstrType.CONSTR_FOREIGN


def column_rewrites(coldef: Any) -> str | None:
    """Why adding this column rewrites the table (volatile default, serial, ...), or None."""
    from pglast import enums

    names = [getattr(n, "sval", "") for n in (coldef.typeName.names if coldef.typeName else ())]
    if names and names[-1] in (
        "serial",
        "serial2",
        "serial4",
        "serial8",
        "smallserial",
        "bigserial",
    ):
        return f"a {names[-1]} column fills every row from a sequence (a volatile default)"
    for con in coldef.constraints or ():
        if con.contype == enums.ConstrType.CONSTR_IDENTITY:
            return "an identity column fills every row from a sequence (a volatile default)"
        if con.contype == enums.ConstrType.CONSTR_GENERATED and con.generated_kind == "s":
            return "a STORED generated column is computed for every row"
        if con.contype == enums.ConstrType.CONSTR_DEFAULT and con.raw_expr is not None:
            volatile = volatile_call(con.raw_expr)
            if volatile:
                return f"the default calls {volatile}(), which is volatile"
    return None


#: functions whose result differs per row: a column default calling one rewrites the table
VOLATILE_FUNCTIONS = frozenset(
    {
        "random",
        "random_normal",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "clock_timestamp",
        "timeofday",
        "nextval",
        "setseed",
        "txid_current",
        "pg_current_xact_id",
    }
)

#: functions known to be immutable or stable: evaluated once for ADD COLUMN ... DEFAULT
STABLE_FUNCTIONS = frozenset(
    {
        "now",
        "transaction_timestamp",
        "statement_timestamp",
        "current_setting",
        "lower",
        "upper",
        "coalesce",
        "nullif",
        "btrim",
        "trim",
        "length",
        "concat",
        "to_jsonb",
        "jsonb_build_object",
        "jsonb_build_array",
        "json_build_object",
        "array_fill",
        "make_interval",
        "make_date",
        "to_timestamp",
        "tstzrange",
        "daterange",
        "int4range",
        "int8range",
        "numrange",
        "tsrange",
    }
)


def walk(node: Any) -> Iterator[Any]:
    """Every pglast node below (and including) ``node``."""
    from pglast import ast

    if isinstance(node, tuple | list):
        for item in node:
            yield from walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for attr in node:
            yield from walk(getattr(node, attr))


def function_name(call: Any) -> str:
    return str(getattr(call.funcname[-1], "sval", "")) if call.funcname else ""


def volatile_call(expr: Any) -> str | None:
    """The first known-volatile function an expression calls, or None."""
    from pglast import ast

    for node in walk(expr):
        if isinstance(node, ast.FuncCall) and function_name(node) in VOLATILE_FUNCTIONS:
            return function_name(node)
    return None


def unknown_calls(expr: Any) -> list[str]:
    """Functions an expression calls whose volatility we do not know."""
    from pglast import ast

    return [
        function_name(node)
        for node in walk(expr)
        if isinstance(node, ast.FuncCall)
        and function_name(node) not in VOLATILE_FUNCTIONS
        and function_name(node) not in STABLE_FUNCTIONS
    ]


class _Locks:
    """Collects the strongest lock per relation for one statement."""

    def __init__(self, statement: Statement, created: set[str]) -> None:
        self.statement = statement
        self.created = created
        self.items: dict[str, StatementLock] = {}

    def add(
        self,
        table: str,
        mode: LockMode,
        *,
        rewrites: bool = False,
        scans: bool = False,
        note: str = "",
    ) -> None:
        old = self.items.get(table)
        if old is not None:
            mode = mode if mode.level >= old.mode.level else old.mode
            rewrites, scans = rewrites or old.rewrites, scans or old.scans
            note = "; ".join(n for n in (old.note, note) if n)
        self.items[table] = StatementLock(
            self.statement.index,
            self.statement.line,
            table,
            mode,
            rewrites,
            scans,
            in_names(table, self.created),
            note,
        )


def _alter_table(node: Any, locks: _Locks) -> None:
    from pglast import ast, enums

    t = enums.AlterTableType
    c = enums.ConstrType
    table = relation_name(node.relation)
    for cmd in node.cmds or ():
        mode = _alter_cmd_lock(cmd)
        rewrites = scans = False
        note = ""
        sub = cmd.subtype
        if sub == t.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            why = column_rewrites(cmd.def_)
            rewrites = why is not None
            note = why or ""
            for con in cmd.def_.constraints or ():
                if con.contype in (c.CONSTR_CHECK, c.CONSTR_UNIQUE, c.CONSTR_PRIMARY):
                    scans = True
                if con.contype == c.CONSTR_FOREIGN and con.pktable is not None:
                    scans = True
                    locks.add(relation_name(con.pktable), _SRE, note="referenced by a new FK")
        elif sub in (t.AT_AlterColumnType, t.AT_SetExpression):
            rewrites = True
            note = "rewrites unless the change is binary-coercible"
        elif sub in (t.AT_SetLogged, t.AT_SetUnLogged, t.AT_SetAccessMethod):
            rewrites = True
        elif sub == t.AT_SetTableSpace:
            rewrites = True
            note = "copies the table's files"
        elif sub in (t.AT_SetNotNull, t.AT_ValidateConstraint, t.AT_AttachPartition):
            scans = True
            if sub == t.AT_SetNotNull:
                note = "no scan when a valid CHECK (col IS NOT NULL) exists"
        elif sub == t.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            con = cmd.def_
            if con.contype in (c.CONSTR_UNIQUE, c.CONSTR_PRIMARY, c.CONSTR_EXCLUSION):
                scans = not con.indexname
                note = "builds an index" if scans else "uses an existing index"
            elif not con.skip_validation:
                scans = con.contype in (c.CONSTR_CHECK, c.CONSTR_FOREIGN, c.CONSTR_NOTNULL)
            if _is_fk(con) and con.pktable is not None:
                locks.add(relation_name(con.pktable), _SRE, note="referenced by a new FK")
        if sub in (t.AT_AttachPartition, t.AT_DetachPartition) and cmd.def_ is not None:
            locks.add(relation_name(cmd.def_.name), _AE, scans=sub == t.AT_AttachPartition)
        locks.add(table, mode, rewrites=rewrites, scans=scans, note=note)


def _create_table(node: Any, locks: _Locks) -> None:
    from pglast import ast, enums

    for parent in node.inhRelations or ():
        note = "new partition" if node.partbound is not None else "new child table"
        locks.add(relation_name(parent), _AE, note=note)
    for element in node.tableElts or ():
        constraints = (
            element.constraints if isinstance(element, ast.ColumnDef) else (element,)
        ) or ()
        for con in constraints:
            if (
                isinstance(con, ast.Constraint)
                and con.contype == enums.ConstrType.CONSTR_FOREIGN
                and con.pktable is not None
            ):
                locks.add(relation_name(con.pktable), _SRE, note="referenced by a new FK")


def _drop(node: Any, locks: _Locks) -> None:
    from pglast import enums

    o = enums.ObjectType
    kind = node.removeType
    if kind == o.OBJECT_INDEX:
        mode = _SUE if node.concurrent else _AE
        for obj in node.objects or ():
            locks.add(relation_name(obj), mode, note="the index and its table")
    elif kind in (o.OBJECT_TABLE, o.OBJECT_VIEW, o.OBJECT_MATVIEW, o.OBJECT_FOREIGN_TABLE):
        for obj in node.objects or ():
            locks.add(relation_name(obj), _AE)
    elif kind in (o.OBJECT_POLICY, o.OBJECT_TRIGGER, o.OBJECT_RULE):
        for obj in node.objects or ():
            mode = _SRE if kind == o.OBJECT_TRIGGER else _AE
            locks.add(relation_name(obj[:-1]), mode)


def plan_statement(
    statement: Statement, *, created: set[str] | None = None, pg_version: int = 18
) -> StatementPlan:
    """The locks one statement takes; ``created`` names tables created earlier in the file."""
    from pglast import ast, enums

    node = statement.node
    locks = _Locks(statement, created if created is not None else set())
    opaque = False
    o = enums.ObjectType
    if isinstance(node, ast.AlterTableStmt):
        _alter_table(node, locks)
    elif isinstance(node, ast.IndexStmt):
        mode = _SUE if node.concurrent else LockMode.SHARE
        locks.add(relation_name(node.relation), mode, scans=True)
    elif isinstance(node, ast.CreateStmt):
        _create_table(node, locks)
    elif isinstance(node, ast.DropStmt):
        _drop(node, locks)
    elif isinstance(node, ast.RenameStmt) and node.relation is not None:
        mode = _SUE if node.renameType == o.OBJECT_INDEX else _AE
        locks.add(relation_name(node.relation), mode)
    elif isinstance(node, ast.TruncateStmt):
        for rel in node.relations or ():
            locks.add(relation_name(rel), _AE, note="empties the table")
    elif isinstance(node, ast.VacuumStmt):
        full = has_option(node.options, "full")
        for rel in node.rels or ():
            mode = _AE if full else _SUE
            locks.add(relation_name(rel.relation), mode, rewrites=full, scans=True)
    elif isinstance(node, ast.ClusterStmt) and node.relation is not None:
        locks.add(relation_name(node.relation), _AE, rewrites=True, scans=True)
    elif isinstance(node, ast.LockStmt):
        mode = list(LockMode)[max(1, min(8, int(node.mode or 8))) - 1]
        for rel in node.relations or ():
            locks.add(relation_name(rel), mode, note="held until the transaction ends")
    elif isinstance(node, ast.ReindexStmt) and node.relation is not None:
        concurrent = has_option(node.params, "concurrently")
        rk = enums.ReindexObjectType
        if concurrent:
            mode = _SUE
        elif node.kind == rk.REINDEX_OBJECT_TABLE:
            mode = LockMode.SHARE
        else:
            mode = _AE
        note = "" if concurrent else "ACCESS EXCLUSIVE on the rebuilt indexes"
        locks.add(relation_name(node.relation), mode, scans=True, note=note)
    elif isinstance(node, ast.CreateTrigStmt):
        locks.add(relation_name(node.relation), _SRE)
    elif isinstance(node, ast.CreatePolicyStmt | ast.AlterPolicyStmt):
        locks.add(relation_name(node.table), _AE)
    elif isinstance(node, ast.RuleStmt):
        locks.add(relation_name(node.relation), _AE)
    elif isinstance(node, ast.RefreshMatViewStmt):
        mode = LockMode.EXCLUSIVE if node.concurrent else _AE
        locks.add(relation_name(node.relation), mode, scans=True)
    elif isinstance(node, ast.CommentStmt) and node.objtype in (o.OBJECT_TABLE, o.OBJECT_COLUMN):
        names = list(node.object or ())
        target = names if node.objtype == o.OBJECT_TABLE else names[:-1]
        locks.add(relation_name(target), _SUE)
    elif isinstance(node, ast.InsertStmt):
        locks.add(relation_name(node.relation), LockMode.ROW_EXCLUSIVE)
    elif isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
        locks.add(
            relation_name(node.relation),
            LockMode.ROW_EXCLUSIVE,
            scans=node.whereClause is None,
            note="row locks on every changed row until commit",
        )
    elif isinstance(node, ast.DoStmt | ast.CallStmt):
        opaque = True
    elif isinstance(node, ast.SelectStmt):
        opaque = any(isinstance(n, ast.FuncCall) for n in walk(node))
    return StatementPlan(
        statement,
        list(locks.items.values()),
        opaque,
        non_transactional_reason(node, pg_version=pg_version),
    )


def created_table(node: Any) -> str | None:
    """The table a CREATE TABLE / CREATE TABLE AS / SELECT INTO statement creates, or None."""
    from pglast import ast

    if isinstance(node, ast.CreateStmt):
        return relation_name(node.relation)
    if isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        return relation_name(node.into.rel)
    if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
        return relation_name(node.intoClause.rel)
    return None


def plan_statements(text: str, *, path: str = "<sql>", pg_version: int = 18) -> list[StatementPlan]:
    """Every statement of ``text`` with the locks it takes (raises SqlSyntaxError)."""
    created: set[str] = set()
    plans: list[StatementPlan] = []
    for statement in split_statements(text, path=path):
        plans.append(plan_statement(statement, created=created, pg_version=pg_version))
        name = created_table(statement.node)
        if name:
            created.add(name)
    return plans


def analyse(text: str, *, path: str = "<sql>", pg_version: int = 18) -> list[StatementLock]:
    """The locks every statement of ``text`` takes, in statement order."""
    return [
        lock
        for plan in plan_statements(text, path=path, pg_version=pg_version)
        for lock in plan.locks
    ]
