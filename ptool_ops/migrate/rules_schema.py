"""What the linter knows of the schema: the tables earlier migrations created, their columns'
types and NOT NULL, and which type changes PostgreSQL makes without rewriting the table.

:class:`KnownSchema` is built from the parse trees of the files linted so far (it carries over
from one file to the next, like tenant tables) and is never more than a guess: a table
created outside the linted files, or changed by a ``DO`` block, is simply not known, and
the rules that need it stay conservative.

:func:`type_change_rewrites` follows ``ATColumnChangeRequiresRewrite`` in PostgreSQL's
``tablecmds.c``: a change is free when the cast is binary-coercible (varchar to text, cidr to
inet), when the typmod only widens (varchar(n) to varchar(m > n), numeric(p, s) to
numeric(q > p, s), timestamp(p) to timestamp(q > p)), or for timestamp <-> timestamptz when
the session TimeZone has offset 0 and no daylight saving.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ptool_ops.migrate.lock_analysis import relation_name, same_relation

__all__ = ["ColumnInfo", "KnownSchema", "TypeSpec", "type_change_rewrites", "type_spec"]

#: zones whose UTC offset is always 0 (TimestampTimestampTzRequiresRewrite is false for them)
UTC_ZONES = frozenset(
    {
        "utc",
        "etc/utc",
        "uct",
        "etc/uct",
        "gmt",
        "etc/gmt",
        "gmt0",
        "etc/gmt0",
        "etc/gmt+0",
        "etc/gmt-0",
        "greenwich",
        "etc/greenwich",
        "universal",
        "etc/universal",
        "zulu",
        "etc/zulu",
    }
)

_TEXTUAL = frozenset({"text", "varchar"})
_TIMESTAMPS = frozenset({"timestamp", "timestamptz"})
_MAX_TIMESTAMP_PRECISION = 6


@dataclass(frozen=True)
class TypeSpec:
    """A column type as written: name (``pg_catalog.`` dropped), constant typmods, array."""

    name: str
    typmods: tuple[int, ...] = ()
    array: bool = False

    def __str__(self) -> str:
        mods = f"({', '.join(map(str, self.typmods))})" if self.typmods else ""
        return f"{self.name}{mods}{'[]' if self.array else ''}"


def type_spec(type_name: Any) -> TypeSpec | None:
    """The :class:`TypeSpec` of a pglast TypeName, or None when it is not a plain type
    (``%TYPE``, a typmod that is not an integer constant)."""
    from pglast import ast

    if type_name is None or type_name.pct_type or not type_name.names:
        return None
    names = [str(getattr(n, "sval", "")) for n in type_name.names]
    if names[0] == "pg_catalog":
        names = names[1:]
    mods: list[int] = []
    for mod in type_name.typmods or ():
        value = getattr(mod, "val", None)
        if not isinstance(mod, ast.A_Const) or not isinstance(value, ast.Integer):
            return None
        mods.append(int(value.ival or 0))
    return TypeSpec(".".join(names), tuple(mods), bool(type_name.arrayBounds))


def _widens(old: tuple[int, ...], new: tuple[int, ...], unbounded_old: int | None) -> bool:
    """A single length/precision typmod that stays or grows (no typmod: unbounded)."""
    if not new:
        return True
    if not old:
        return unbounded_old is not None and new[0] >= unbounded_old
    return new[0] >= old[0]


def type_change_rewrites(old: TypeSpec, new: TypeSpec, *, utc: bool) -> str | None:
    """Why ``ALTER COLUMN ... TYPE new`` on a column of type ``old`` rewrites the table (or
    re-checks every row), or None when PostgreSQL only changes the catalog."""
    if old == new:
        return None
    if old.array or new.array:
        return f"{old} to {new} converts every row (only identical array types are free)"
    if old.name in _TEXTUAL and new.name in _TEXTUAL:
        if new.name == "text" or not new.typmods:
            return None
        if old.name == "varchar" and old.typmods and new.typmods[0] >= old.typmods[0]:
            return None
        return f"{old} to {new} checks the length of every row"
    if old.name == "numeric" and new.name == "numeric":
        if not new.typmods:
            return None
        old_scale = old.typmods[1] if len(old.typmods) > 1 else 0
        new_scale = new.typmods[1] if len(new.typmods) > 1 else 0
        if old.typmods and new_scale == old_scale and new.typmods[0] >= old.typmods[0]:
            return None
        return f"{old} to {new} changes the precision or scale of every row"
    if old.name == "cidr" and new.name == "inet" and not new.typmods:
        return None
    if old.name in _TIMESTAMPS and new.name in _TIMESTAMPS:
        if not _widens(old.typmods, new.typmods, _MAX_TIMESTAMP_PRECISION):
            return f"{old} to {new} rounds every row to the lower precision"
        if old.name == new.name or utc:
            return None
        return (
            f"{old} to {new} converts every row unless the session TimeZone is UTC"
            " (write SET LOCAL TimeZone = 'UTC' before it in the migration)"
        )
    return f"{old} to {new} is not binary-coercible"


@dataclass
class ColumnInfo:
    type: TypeSpec | None
    not_null: bool


@dataclass
class KnownSchema:
    """Tables the linted migrations created, with their columns, and tenant tables."""

    tables: dict[str, dict[str, ColumnInfo]] = field(default_factory=dict)
    tenant_tables: set[str] = field(default_factory=set)

    def copy(self) -> KnownSchema:
        return KnownSchema(
            {
                t: {c: ColumnInfo(i.type, i.not_null) for c, i in cols.items()}
                for t, cols in self.tables.items()
            },
            set(self.tenant_tables),
        )

    def _key(self, table: str) -> str | None:
        for key in self.tables:
            if same_relation(table, key):
                return key
        return None

    def column(self, table: str, column: str) -> ColumnInfo | None:
        key = self._key(table)
        return self.tables[key].get(column) if key is not None else None

    # --- updates from statements -----------------------------------------------------

    def create_table(self, node: Any) -> None:
        """CREATE TABLE: its columns (LIKE, INHERITS and PARTITION OF leave it unknown)."""
        from pglast import ast, enums

        table = relation_name(node.relation)
        key = self._key(table)
        if key is not None:
            del self.tables[key]
        if node.inhRelations or node.partbound is not None or node.ofTypename is not None:
            return
        columns: dict[str, ColumnInfo] = {}
        for element in node.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                columns[str(element.colname)] = _column_info(element)
            elif isinstance(element, ast.TableLikeClause):
                return
            elif (
                isinstance(element, ast.Constraint)
                and element.contype == enums.ConstrType.CONSTR_PRIMARY
            ):
                for key_name in element.keys or ():
                    info = columns.get(str(getattr(key_name, "sval", "")))
                    if info is not None:
                        info.not_null = True
        self.tables[table] = columns

    def drop_table(self, table: str) -> None:
        key = self._key(table)
        if key is not None:
            del self.tables[key]

    def rename_table(self, table: str, new_name: str) -> None:
        key = self._key(table)
        if key is None:
            return
        schema = key.rsplit(".", 1)[0] + "." if "." in key else ""
        self.tables[schema + new_name] = self.tables.pop(key)

    def alter_table(self, table: str, cmds: Iterable[Any]) -> None:
        """The effect of ALTER TABLE subcommands on the known columns."""
        from pglast import ast, enums

        t = enums.AlterTableType
        c = enums.ConstrType
        cmds = list(cmds)
        key = self._key(table)
        if key is None:
            if not any(cmd.subtype == t.AT_AddColumn for cmd in cmds):
                return
            key = table  # known in part: the columns added here (others stay unknown)
            self.tables[key] = {}
        columns = self.tables[key]
        for cmd in cmds:
            sub = cmd.subtype
            if sub == t.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
                columns[str(cmd.def_.colname)] = _column_info(cmd.def_)
            elif sub == t.AT_DropColumn:
                columns.pop(cmd.name, None)
            elif sub == t.AT_AlterColumnType and isinstance(cmd.def_, ast.ColumnDef):
                info = columns.get(cmd.name)
                if info is not None:
                    info.type = type_spec(cmd.def_.typeName)
            elif sub in (t.AT_SetNotNull, t.AT_DropNotNull) and cmd.name in columns:
                columns[cmd.name].not_null = sub == t.AT_SetNotNull
            elif sub == t.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
                con = cmd.def_
                if con.contype == c.CONSTR_PRIMARY or (
                    con.contype == c.CONSTR_NOTNULL and not con.skip_validation
                ):
                    for key_name in con.keys or ():
                        info = columns.get(str(getattr(key_name, "sval", "")))
                        if info is not None:
                            info.not_null = True

    def rename_column(self, table: str, old: str, new: str) -> None:
        key = self._key(table)
        if key is not None and old in self.tables[key]:
            self.tables[key][new] = self.tables[key].pop(old)


_SERIAL_BASE = {
    "smallserial": "int2",
    "serial2": "int2",
    "serial": "int4",
    "serial4": "int4",
    "bigserial": "int8",
    "serial8": "int8",
}


def _column_info(col: Any) -> ColumnInfo:
    from pglast import enums

    c = enums.ConstrType
    spec = type_spec(col.typeName)
    kinds = {con.contype for con in col.constraints or ()}
    not_null = bool(kinds & {c.CONSTR_NOTNULL, c.CONSTR_PRIMARY, c.CONSTR_IDENTITY})
    if spec is not None and spec.name in _SERIAL_BASE:
        return ColumnInfo(TypeSpec(_SERIAL_BASE[spec.name]), True)
    return ColumnInfo(spec, not_null)


def utc_setting(node: Any) -> bool | None:
    """For ``SET [LOCAL] TimeZone``/``SET TIME ZONE``: whether it makes the session UTC
    (None: the statement does not set the time zone)."""
    from pglast import ast, enums

    if not isinstance(node, ast.VariableSetStmt):
        return None
    k = enums.VariableSetKind
    if node.kind == k.VAR_RESET_ALL:
        return False
    if (node.name or "").lower() != "timezone":
        return None
    if node.kind != k.VAR_SET_VALUE or not node.args or len(node.args) != 1:
        return False
    arg = node.args[0]
    value = getattr(arg, "val", None)
    if isinstance(value, ast.String):
        return str(value.sval).lower() in UTC_ZONES
    if isinstance(value, ast.Integer):
        return not value.ival
    if isinstance(value, ast.Float):
        return float(value.fval or "nan") == 0
    return False
