"""A restored copy beside live: what differs, before anything replaces anything.

Per table of the data schemas: the row count on each side. Per tenant (tables with a
``tenant_id``): an aggregate of the tenant's rows (count and a sum of row hashes), so a
tenant whose rows were deleted, added *or changed* since the target shows up without
shipping rows. Per event stream: the newest version on each side. Both connections read in
one REPEATABLE READ, READ ONLY transaction each, as a role that sees every row (the
operator: BYPASSRLS, as on Neon).

Used by ``pitr restore`` (self-managed and Neon) and, later, tenant recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ptool_ops.privileges import DATA_SCHEMAS

_TABLES = """
SELECT n.nspname, c.relname,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY 1, 2
"""


@dataclass
class TableDiff:
    table: str
    live_rows: int | None
    copy_rows: int | None

    @property
    def delta(self) -> int:
        return (self.copy_rows or 0) - (self.live_rows or 0)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "delta": self.delta}


@dataclass
class TenantDiff:
    tenant_id: str
    table: str
    live_rows: int
    copy_rows: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StreamDiff:
    stream_id: str
    live_version: int | None
    copy_version: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Comparison:
    tables: list[TableDiff] = field(default_factory=list)
    #: (tenant, table) pairs whose rows differ, up to ``sample``; ``tenants_differing`` counts all
    tenants: list[TenantDiff] = field(default_factory=list)
    tenants_differing: int = 0
    streams: list[StreamDiff] = field(default_factory=list)
    streams_differing: int = 0
    newest_event_live: str | None = None
    newest_event_copy: str | None = None

    @property
    def identical(self) -> bool:
        return (
            all(t.delta == 0 for t in self.tables)
            and self.tenants_differing == 0
            and self.streams_differing == 0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "tables": [t.to_dict() for t in self.tables],
            "tenants_differing": self.tenants_differing,
            "tenants": [t.to_dict() for t in self.tenants],
            "streams_differing": self.streams_differing,
            "streams": [s.to_dict() for s in self.streams],
            "newest_event_live": self.newest_event_live,
            "newest_event_copy": self.newest_event_copy,
        }


def _snapshot(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    conn.execute("SELECT set_config('row_security', 'off', true)")


def _tables(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str, bool]]:
    rows = conn.execute(_TABLES, (list(DATA_SCHEMAS),)).fetchall()
    return {f"{s}.{t}": (s, t, bool(tenant)) for s, t, tenant in rows}


def _count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _per_tenant(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> dict[str, tuple[int, int]]:
    query = sql.SQL(
        "SELECT t.tenant_id::text, count(*), sum(hashtextextended(t::text, 0))::text"
        " FROM {} AS t GROUP BY 1"
    ).format(sql.Identifier(schema, table))
    return {str(k): (int(n), int(h)) for k, n, h in conn.execute(query).fetchall()}


def _streams(conn: psycopg.Connection[Any], present: set[str]) -> dict[str, int]:
    if "booking.events" not in present:
        return {}
    rows = conn.execute(
        "SELECT stream_id::text, max(version) FROM booking.events GROUP BY 1"
    ).fetchall()
    return {str(s): int(v) for s, v in rows}


def _newest_event(conn: psycopg.Connection[Any], present: set[str]) -> str | None:
    if "booking.events" not in present:
        return None
    row = conn.execute("SELECT max(recorded_at) FROM booking.events").fetchone()
    return row[0].isoformat() if row and row[0] is not None else None


def compare(
    live: psycopg.Connection[Any], copy: psycopg.Connection[Any], *, sample: int = 10
) -> Comparison:
    """Compare the data of ``copy`` (a restored database) with ``live``; changes neither."""
    result = Comparison()
    with live.transaction(), copy.transaction():
        _snapshot(live)
        _snapshot(copy)
        live_tables, copy_tables = _tables(live), _tables(copy)
        live_streams = _streams(live, set(live_tables))
        copy_streams = _streams(copy, set(copy_tables))
        result.newest_event_live = _newest_event(live, set(live_tables))
        result.newest_event_copy = _newest_event(copy, set(copy_tables))
        differing: set[str] = set()
        for name in sorted(set(live_tables) | set(copy_tables)):
            schema, table, tenant = live_tables.get(name) or copy_tables[name]
            live_n = _count(live, schema, table) if name in live_tables else None
            copy_n = _count(copy, schema, table) if name in copy_tables else None
            result.tables.append(TableDiff(name, live_n, copy_n))
            if not tenant or name not in live_tables or name not in copy_tables:
                continue
            live_t, copy_t = _per_tenant(live, schema, table), _per_tenant(copy, schema, table)
            for tenant_id in sorted(set(live_t) | set(copy_t)):
                a, b = live_t.get(tenant_id, (0, 0)), copy_t.get(tenant_id, (0, 0))
                if a != b:
                    differing.add(tenant_id)
                    if len(result.tenants) < sample:
                        result.tenants.append(TenantDiff(tenant_id, name, a[0], b[0]))
        result.tenants_differing = len(differing)
        for stream in sorted(set(live_streams) | set(copy_streams)):
            a_v, b_v = live_streams.get(stream), copy_streams.get(stream)
            if a_v != b_v:
                result.streams_differing += 1
                if len(result.streams) < sample:
                    result.streams.append(StreamDiff(stream, a_v, b_v))
    return result
