"""What tenant recovery knows of the booking schema, read from the catalog: the tenant
tables, their columns, primary keys, foreign keys, unique indexes and exclusion
constraints, and the order in which rows must be written (parents first).

A *tenant table* is a table of schema ``booking`` with a ``tenant_id`` column, and
``booking.tenants`` itself (its tenant column is ``id``). The event store
``booking.events`` is one too, but it is append-only: recovery never restores it, it
appends to it (:mod:`ptool_ops.recover.apply`).

Nothing here is specific to today's tables: a table added by a migration is recovered
like the others, as long as it has a primary key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ptool_ops.errors import Refused, UsageError

SCHEMA = "booking"
EVENTS = "events"
#: a column a BEFORE UPDATE trigger sets (``booking.set_updated_at``): it records when a row
#: last changed, so it is not compared, and a restored row gets the time of its restoring
MAINTAINED_BY_TRIGGER = {"set_updated_at": "updated_at"}

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), e.g. "timestamp with time zone"
    identity_always: bool = False
    generated: bool = False


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    parent: str  # a table of schema booking
    parent_columns: tuple[str, ...]


@dataclass(frozen=True)
class KeyIndex:
    """A unique index (the primary key among them) or an exclusion constraint: what a
    re-inserted row may collide with. ``keys`` are the index's columns or expressions as
    the server prints them, ``operators`` the operator each key is compared with."""

    name: str
    kind: str  # "primary key" | "unique" | "exclusion"
    keys: tuple[str, ...]
    operators: tuple[str, ...]
    predicate: str | None  # the partial index's WHERE, as the server prints it
    has_tenant: bool  # the tenant column is one of the keys: only the tenant's rows compete


@dataclass
class Table:
    name: str  # without the schema
    tenant_column: str
    columns: list[Column]
    primary_key: tuple[str, ...]
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    key_indexes: list[KeyIndex] = field(default_factory=list)
    maintained: tuple[str, ...] = ()
    #: rows are compared by ``hash_record_extended`` of their values (every compared type
    #: has an extended hash function); else by a hash of their text
    binary_hash: bool = False

    @property
    def qualified(self) -> str:
        return f"{SCHEMA}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.name)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def stored(self) -> list[Column]:
        """The columns a row is written with (generated ones derive)."""
        return [c for c in self.columns if not c.generated]

    @property
    def compared(self) -> list[Column]:
        """The columns whose values make a row 'changed'."""
        return [c for c in self.stored if c.name not in self.maintained]

    @property
    def updatable(self) -> list[Column]:
        fixed = {*self.primary_key, self.tenant_column}
        return [c for c in self.stored if c.name not in fixed and not c.identity_always]

    @property
    def singular(self) -> str:
        """``bookings`` → ``booking``: the aggregate's name in event types."""
        name = self.name
        return name[:-1] if name.endswith("s") else name

    @property
    def event_stream(self) -> bool:
        """Rows of this table are aggregates with an event stream keyed by their id."""
        return self.primary_key == ("id",) and self.column("id").type == "uuid"

    def shape(self) -> tuple[tuple[str, str], ...]:
        return tuple((c.name, c.type) for c in self.columns)


_TABLES_SQL = """
SELECT c.oid, c.relname
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND (c.relname = 'tenants'
        OR EXISTS (SELECT FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                      AND a.attnum > 0 AND NOT a.attisdropped))
 ORDER BY c.relname
"""

_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attidentity = 'a', a.attgenerated <> ''
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

_FKS_SQL = """
SELECT c.conname, p.relname,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
              ORDER BY k.i)::text[],
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
              ORDER BY k.i)::text[]
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_class p ON p.oid = c.confrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
 WHERE c.conrelid = %s AND c.contype = 'f' AND n.nspname = %s
 ORDER BY c.conname
"""

_INDEXES_SQL = """
SELECT ic.relname, i.indisprimary, coalesce(c.contype = 'x', false),
       ARRAY(SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, true)
               FROM generate_series(1, i.indnkeyatts) k ORDER BY k)::text[],
       ARRAY(SELECT format('OPERATOR(%%I.%%s)', opn.nspname, o.oprname)
               FROM unnest(c.conexclop) WITH ORDINALITY x(op, k)
               JOIN pg_catalog.pg_operator o ON o.oid = x.op
               JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace
              ORDER BY x.k)::text[],
       pg_catalog.pg_get_expr(i.indpred, i.indrelid),
       i.indnullsnotdistinct
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  LEFT JOIN pg_catalog.pg_constraint c
    ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
 WHERE i.indrelid = %s AND i.indisvalid AND (i.indisunique OR c.contype = 'x')
 ORDER BY NOT i.indisprimary, ic.relname
"""

_TRIGGERS_SQL = """
SELECT p.proname
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
 WHERE t.tgrelid = %s AND NOT t.tgisinternal AND t.tgenabled <> 'D'
"""


def _load(conn: Conn, oid: int, name: str) -> Table:
    columns = [
        Column(str(n), str(t), bool(ident), bool(gen))
        for n, t, ident, gen in conn.execute(_COLUMNS_SQL, (oid,)).fetchall()
    ]
    tenant_column = "id" if name == "tenants" else "tenant_id"
    table = Table(name, tenant_column, columns, ())
    for fk_name, parent, cols, parent_cols in conn.execute(_FKS_SQL, (oid, SCHEMA)).fetchall():
        table.foreign_keys.append(
            ForeignKey(str(fk_name), tuple(cols), str(parent), tuple(parent_cols))
        )
    for idx, primary, exclusion, keys, ops, pred, nulls_equal in conn.execute(
        _INDEXES_SQL, (oid,)
    ).fetchall():
        kind = "exclusion" if exclusion else "primary key" if primary else "unique"
        keys = tuple(str(k) for k in keys)
        if primary:
            table.primary_key = keys
        equal = "IS NOT DISTINCT FROM" if nulls_equal else "="
        operators = tuple(ops) if exclusion else tuple(equal for _ in keys)
        table.key_indexes.append(
            KeyIndex(str(idx), kind, keys, operators, pred, tenant_column in keys)
        )
    table.binary_hash = _hashable(conn, [c for c in columns if not c.generated])
    triggers = {str(row[0]) for row in conn.execute(_TRIGGERS_SQL, (oid,)).fetchall()}
    names = {c.name for c in columns}
    table.maintained = tuple(
        column
        for function, column in MAINTAINED_BY_TRIGGER.items()
        if function in triggers and column in names
    )
    return table


def _hashable(conn: Conn, columns: Sequence[Column]) -> bool:
    """Whether every type has an extended hash function: a row of typed NULLs asks the
    server (it looks the functions up before it looks at the values)."""
    nulls = sql.SQL(", ").join(sql.SQL("NULL::{}").format(sql.SQL(c.type)) for c in columns)
    try:
        with conn.transaction():  # a savepoint: the caller's transaction is open
            conn.execute(sql.SQL("SELECT hash_record_extended(ROW({}), 0)").format(nulls))
    except psycopg.errors.UndefinedFunction:
        return False
    return True


def tenant_tables(conn: Conn) -> dict[str, Table]:
    """Every tenant table of schema booking, by name (without the schema)."""
    found = {}
    for oid, name in conn.execute(_TABLES_SQL, {"schema": SCHEMA}).fetchall():
        found[str(name)] = _load(conn, int(oid), str(name))
    return found


def select(known: dict[str, Table], wanted: Sequence[str] | None) -> list[Table]:
    """The tables to recover, parents before children (foreign-key order).

    ``wanted``: names with or without ``booking.``; default every tenant table but the
    event store. Refuses unknown names, the event store and tables without a primary key.
    """
    if not wanted:
        names = [n for n in known if n != EVENTS]
    else:
        names = []
        for raw in wanted:
            name = raw.strip().removeprefix(f"{SCHEMA}.")
            if not name:
                continue
            if name == EVENTS:
                raise UsageError(
                    f"{SCHEMA}.{EVENTS} is the append-only event store: recovery appends to it"
                    " (an event per restored row) and never restores it.",
                    hint="Leave it out of --tables.",
                )
            if name not in known:
                raise UsageError(
                    f"{raw!r} is not a tenant table of schema {SCHEMA}.",
                    hint="Tenant tables: " + ", ".join(sorted(n for n in known if n != EVENTS)),
                )
            if name not in names:
                names.append(name)
    tables = [known[n] for n in names]
    for table in tables:
        if not table.primary_key:
            raise Refused(
                f"{table.qualified} has no primary key, so its rows cannot be matched between"
                " the copy and live.",
                hint="Leave it out of --tables.",
            )
    return fk_order(tables)


def fk_order(tables: Iterable[Table]) -> list[Table]:
    """Parents before children (self-references ignored; ties by name)."""
    pending = {t.name: t for t in tables}
    done: list[Table] = []
    while pending:
        ready = sorted(
            name
            for name, t in pending.items()
            if not any(fk.parent in pending and fk.parent != name for fk in t.foreign_keys)
        )
        if not ready:  # a cycle: keep the remaining order by name
            ready = sorted(pending)
        for name in ready:
            done.append(pending.pop(name))
    return done


def check_same_shape(
    live: dict[str, Table], source: dict[str, Table], names: Iterable[str]
) -> None:
    """Refuse when a table differs between the copy and live (a migration ran since)."""
    for name in names:
        there = source.get(name)
        here = live[name]
        if there is None:
            raise Refused(
                f"{SCHEMA}.{name} does not exist in the restored copy: the schema changed since"
                " (a migration ran after the point recovered to).",
                hint="Recover the other tables (--tables), or copy these rows by hand.",
            )
        if there.shape() != here.shape() or there.primary_key != here.primary_key:
            then = ", ".join(f"{n} {t}" for n, t in there.shape())
            now = ", ".join(f"{n} {t}" for n, t in here.shape())
            raise Refused(
                f"{SCHEMA}.{name} has other columns in the restored copy ({then}) than live"
                f" ({now}): a migration ran after the point recovered to.",
                hint="Recovery copies rows between tables of the same shape; recover the other"
                " tables (--tables), or copy these rows by hand.",
            )
