"""Reading one tenant's rows: streamed in primary-key order, fetched by key, and turned into
a relation the server can compare with or write from.

Every query here names the tenant (``WHERE <tenant column> = %s``): the operator is not
subject to row-level security, so the filter is what scopes each read. Each transaction
sets ``row_security = off``, so a role that row-level security *would* filter gets an
error instead of a silently smaller tenant.

Rows are compared by a 64-bit hash of their compared columns (``hash_record_extended``,
or of the row's text for a type without an extended hash function); both servers stream at
once (:func:`in_background`). Values travel as text (``col::text``, cast back with the
column's type): exact for every type, and the same on both sides, because both sessions
print with the same settings (UTC, ISO dates, all float digits, hex bytea).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from ptool_ops.recover.schema import Column, Table

Conn = psycopg.Connection[Any]
Key = tuple[Any, ...]
Row = dict[str, str | None]

#: rows a server-side cursor sends at a time
ITERSIZE = 5000
#: keys per fetch, insert or check statement
BATCH = 1000

_TEXT_TYPES = {"text", "character varying", "character", "name", "citext"}


def settle(conn: Conn) -> None:
    """The transaction's settings: one way to print values, and no silent filtering."""
    conn.execute(
        "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true),"
        " set_config('IntervalStyle', 'postgres', true),"
        " set_config('extra_float_digits', '3', true), set_config('bytea_output', 'hex', true),"
        " set_config('row_security', 'off', true)"
    )


def _order(table: Table) -> sql.Composable:
    parts: list[sql.Composable] = []
    for name in table.primary_key:
        column = sql.Identifier(name)
        if table.column(name).type.split("(")[0] in _TEXT_TYPES:
            parts.append(sql.SQL('{} COLLATE "C"').format(column))
        else:
            parts.append(column)
    return sql.SQL(", ").join(parts)


def _pk(table: Table) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in table.primary_key)


def _key_select(table: Table) -> sql.Composable:
    """The primary key as keys travel: uuids as their text (which sorts as the uuids do,
    and costs less than uuid objects), other types as they are."""
    return sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(n))
        if table.column(n).type == "uuid"
        else sql.Identifier(n)
        for n in table.primary_key
    )


def stream_hashes(conn: Conn, table: Table, tenant: str, label: str) -> Iterator[tuple[Key, int]]:
    """(primary key, hash of the compared columns) of the tenant's rows, in key order,
    through a server-side cursor (the caller's transaction holds it)."""
    compared = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.compared)
    digest = (
        sql.SQL("hash_record_extended(ROW({}), 0)")
        if table.binary_hash
        else sql.SQL("hashtextextended(ROW({})::text, 0)")
    ).format(compared)
    query = sql.SQL(
        "SELECT {pk}, {digest} FROM {table} WHERE {tenant} = %s ORDER BY {order}"
    ).format(
        pk=_key_select(table),
        digest=digest,
        table=table.ident,
        tenant=sql.Identifier(table.tenant_column),
        order=_order(table),
    )
    width = len(table.primary_key)
    with conn.cursor(name=f"ptool_recover_{label}_{table.name}") as cur:
        cur.itersize = ITERSIZE
        cur.execute(query, (tenant,))
        for row in cur:
            yield tuple(row[:width]), int(row[width])


class _End:
    pass


def in_background(
    items: Iterator[Any], chunk: int = ITERSIZE, depth: int = 4
) -> Generator[Any, None, None]:
    """``items`` produced by a thread of its own, ``chunk`` at a time, at most ``depth``
    chunks ahead: two streams read from two servers then work at the same time. The
    producer owns its connection until this generator is done (exhausted or closed)."""
    box: queue.Queue[list[Any] | BaseException | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: list[Any] | BaseException | _End) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            batch: list[Any] = []
            for item in items:
                batch.append(item)
                if len(batch) >= chunk:
                    if not put(batch):
                        return
                    batch = []
            if put(batch):
                put(_End())
        except BaseException as err:  # handed to the consumer, raised there
            put(err)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="ptool-recover-stream", daemon=True)
    thread.start()
    try:
        while True:
            got = box.get()
            if isinstance(got, _End):
                return
            if isinstance(got, BaseException):
                raise got
            yield from got
    finally:
        stop.set()
        thread.join()


def key_text(key: Key) -> list[str]:
    return [str(part) for part in key]


def _keys_relation(table: Table) -> sql.Composable:
    """``(SELECT k0::type, ... FROM unnest(%s::text[], ...))``: a batch of keys."""
    names = [sql.Identifier(f"k{i}") for i in range(len(table.primary_key))]
    casts = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(n, sql.SQL(table.column(c).type))
        for n, c in zip(names, table.primary_key, strict=True)
    )
    arrays = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names)
    return sql.SQL("(SELECT {casts} FROM unnest({arrays}) AS u({names}))").format(
        casts=casts, arrays=arrays, names=sql.SQL(", ").join(names)
    )


def key_arrays(keys: Sequence[Key]) -> list[list[str]]:
    """Column-wise text arrays of ``keys`` (the parameters of :func:`_keys_relation`)."""
    if not keys:
        return []
    return [list(column) for column in zip(*(key_text(k) for k in keys), strict=True)]


def fetch(conn: Conn, table: Table, tenant: str, keys: Sequence[Key]) -> dict[Key, Row]:
    """The tenant's rows with these keys, every stored column as text."""
    found: dict[Key, Row] = {}
    columns = table.stored
    width = len(table.primary_key)
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        query = sql.SQL(
            "SELECT {key}, {values} FROM {table} WHERE {tenant} = %s AND ({pk}) IN {keys}"
        ).format(
            key=_key_select(table),
            pk=_pk(table),
            values=sql.SQL(", ").join(
                sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in columns
            ),
            table=table.ident,
            tenant=sql.Identifier(table.tenant_column),
            keys=_keys_relation(table),
        )
        for row in conn.execute(query, [tenant, *key_arrays(batch)]).fetchall():
            found[tuple(row[:width])] = {
                c.name: value for c, value in zip(columns, row[width:], strict=True)
            }
    return found


def candidates(table: Table, columns: Sequence[Column] | None = None) -> sql.Composable:
    """A relation of rows given as text arrays, one per column, with the table's column
    names and types: ``(SELECT c0::type AS name, ... FROM unnest(%s::text[], ...))``."""
    cols = list(columns or table.stored)
    raw = [sql.Identifier(f"c{i}") for i in range(len(cols))]
    casts = sql.SQL(", ").join(
        sql.SQL("{}::{} AS {}").format(r, sql.SQL(c.type), sql.Identifier(c.name))
        for r, c in zip(raw, cols, strict=True)
    )
    arrays = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in cols)
    return sql.SQL("(SELECT {casts} FROM unnest({arrays}) AS u({raw}))").format(
        casts=casts, arrays=arrays, raw=sql.SQL(", ").join(raw)
    )


def row_arrays(
    table: Table, rows: Sequence[Row], columns: Sequence[Column] | None = None
) -> list[list[str | None]]:
    """Column-wise text arrays of ``rows`` (the parameters of :func:`candidates`)."""
    cols = list(columns or table.stored)
    return [[row[c.name] for row in rows] for c in cols]


def key_of(table: Table, row: Row) -> list[str | None]:
    return [row[name] for name in table.primary_key]
