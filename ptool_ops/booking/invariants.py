"""The booking data's invariants, checked against the live database.

Each check is a named query (the names are API: operators, CI and restore validation
refer to them) that returns the violations it finds:

* ``no_overlapping_bookings`` -- confirmed bookings of one artist overlap. One sort
  and a running maximum over each artist's timeline, so it stays fast on millions of
  rows, and it matters most when the exclusion constraint is missing.
* ``tenant_rows_exist`` -- rows of a tenant table (any table of schema ``booking``
  with a ``tenant_id`` column) whose tenant does not exist (or is NULL).
* ``rls_enabled`` -- tenant tables (discovered from the catalog, plus
  ``booking.tenants``) with row-level security disabled or without any policy.
* ``event_streams_contiguous`` -- event streams whose versions are not exactly 1..n.
* ``no_invalid_objects`` -- constraints not validated, indexes invalid or not ready.
* ``foreign_keys_hold`` -- bookings whose artist or project is missing or belongs to
  another tenant.

How to run them: as a role that sees every row -- a superuser, the tables' owner
(``booking_migrator``) or a BYPASSRLS role (``booking_backup``). Row-level security
would otherwise hide rows and make violations invisible, so :func:`run_invariants`
refuses with :class:`InvariantsUnavailable` when RLS applies to the caller, and it sets
``row_security = off`` for its transaction so that a missed case errors instead of
silently filtering. All checks read one snapshot (REPEATABLE READ, READ ONLY) when
the connection has no transaction open.

A database without the booking schema, or without a table a check needs, is not an
error: each check concerned reports one violation naming the missing schema (``ref``
holds ``schema``) or table (``table``), so validation after a restore fails loudly
instead of passing vacuously. Likewise a check whose query no longer fits the schema
(a column dropped or renamed) reports one violation with the ``sqlstate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.abc import Params
from psycopg.pq import TransactionStatus

from ptool_ops import privileges

__all__ = [
    "CHECKS",
    "CheckResult",
    "InvariantReport",
    "InvariantsUnavailable",
    "Violation",
    "run_invariants",
]

SCHEMA = "booking"


class InvariantsUnavailable(RuntimeError):
    """The invariants cannot be checked with this connection (e.g. RLS hides rows)."""


@dataclass(frozen=True)
class Violation:
    """One offending object or row group; ``ref`` holds ids, JSON-friendly."""

    check: str
    detail: str
    ref: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "detail": self.detail, "ref": dict(self.ref)}


@dataclass
class CheckResult:
    """The outcome of one check: at most ``limit`` violations, ``total`` exact."""

    name: str
    description: str
    violations: list[Violation]
    truncated: bool
    duration_ms: int
    total: int = 0

    @property
    def ok(self) -> bool:
        return self.total == 0 and not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "ok": self.ok,
            "total": self.total,
            "truncated": self.truncated,
            "duration_ms": self.duration_ms,
            "violations": [v.to_dict() for v in self.violations],
        }


@dataclass
class InvariantReport:
    """The results of :func:`run_invariants`, in check order."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def violation_count(self) -> int:
        """Violations found over all checks (exact, not limited to those reported)."""
        return sum(max(result.total, len(result.violations)) for result in self.results)

    def result(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violation_count": self.violation_count,
            "checks": [result.to_dict() for result in self.results],
        }


Conn = psycopg.Connection[Any]
CheckFn = Callable[[Conn, int], tuple[list[Violation], int]]


@dataclass(frozen=True)
class _Check:
    name: str
    description: str
    requires: tuple[str, ...]
    run: CheckFn
    catalog_only: bool = False  # reads the catalog, no table's rows: fast on any size


def _rows(
    conn: Conn, query: str | sql.SQL | sql.Composed, params: Params | None = None
) -> list[Any]:
    return conn.execute(query, params).fetchall()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# --- no_overlapping_bookings ----------------------------------------------------------

# A sweep over each artist's confirmed bookings in range order (which sorts by lower
# bound, unbounded first): a booking overlaps an earlier one iff it starts before the
# latest end seen so far on that artist's timeline -- or exactly at it when both that
# end and this start are inclusive. Unbounded ends count as +infinity. Empty ranges
# overlap nothing. Partners are then looked up for the reported rows only.
_OVERLAP_SQL = """
WITH swept AS (
    SELECT b.id, b.tenant_id, b.artist_id, b.period,
           max(coalesce(upper(b.period), 'infinity')) OVER w AS max_end,
           max(CASE WHEN upper_inc(b.period) OR upper_inf(b.period)
                    THEN coalesce(upper(b.period), 'infinity') END) OVER w AS max_incl_end
      FROM booking.bookings b
     WHERE b.status = 'confirmed' AND NOT isempty(b.period)
    WINDOW w AS (PARTITION BY b.artist_id ORDER BY b.period, b.id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
), flagged AS (
    SELECT id, tenant_id, artist_id, period
      FROM swept
     WHERE coalesce(lower(period), '-infinity') < max_end
        OR (lower(period) = max_incl_end AND lower_inc(period))
), shown AS (
    SELECT * FROM flagged ORDER BY artist_id, period, id LIMIT %(limit)s
), partners AS (
    SELECT DISTINCT ON (s.id) s.id, o.id AS other
      FROM shown s
      JOIN booking.bookings o
        ON o.artist_id = s.artist_id AND o.status = 'confirmed'
       AND o.period && s.period AND o.id <> s.id
     ORDER BY s.id, o.period, o.id
)
SELECT (SELECT count(*) FROM flagged) AS total,
       s.id, s.tenant_id, s.artist_id, s.period::text, p.other
  FROM shown s LEFT JOIN partners p USING (id)
 ORDER BY s.artist_id, s.period, s.id
"""


def _check_overlaps(conn: Conn, limit: int) -> tuple[list[Violation], int]:
    rows = _rows(conn, _OVERLAP_SQL, {"limit": limit})
    if not rows:
        return [], 0
    violations = [
        Violation(
            "no_overlapping_bookings",
            f"confirmed booking {booking} of artist {artist} ({period}) overlaps "
            f"confirmed booking {other}",
            {
                "booking_id": _text(booking),
                "other_booking_id": _text(other),
                "artist_id": _text(artist),
                "tenant_id": _text(tenant),
                "period": _text(period),
            },
        )
        for _, booking, tenant, artist, period, other in rows
    ]
    return violations, int(rows[0][0])


# --- tenant_rows_exist ----------------------------------------------------------------

_TENANT_TABLES_SQL = """
SELECT c.relname
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
 WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
   AND a.attname = 'tenant_id' AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname
"""


def _tenant_tables(conn: Conn) -> list[str]:
    return [str(row[0]) for row in _rows(conn, _TENANT_TABLES_SQL, (SCHEMA,))]


def _check_tenant_rows(conn: Conn, limit: int) -> tuple[list[Violation], int]:
    # One group per (table, missing tenant id): an orphaned tenant usually has many rows.
    parts = [
        sql.SQL(
            "SELECT {name} AS tbl, t.tenant_id, count(*) AS n FROM {table} t"
            " WHERE t.tenant_id IS NULL OR NOT EXISTS"
            " (SELECT FROM booking.tenants x WHERE x.id = t.tenant_id)"
            " GROUP BY t.tenant_id"
        ).format(name=sql.Literal(table), table=sql.Identifier(SCHEMA, table))
        for table in _tenant_tables(conn)
    ]
    if not parts:
        return [], 0
    query = sql.SQL(
        "WITH orphans AS ({union})"
        " SELECT (SELECT count(*) FROM orphans), tbl, tenant_id, n"
        " FROM orphans ORDER BY tbl, tenant_id NULLS FIRST LIMIT %s"
    ).format(union=sql.SQL(" UNION ALL ").join(parts))
    rows = _rows(conn, query, (limit,))
    if not rows:
        return [], 0
    violations = [
        Violation(
            "tenant_rows_exist",
            f"{n} row(s) of booking.{table} belong to "
            + ("no tenant (tenant_id is NULL)" if tenant is None else f"missing tenant {tenant}"),
            {"table": f"booking.{table}", "tenant_id": _text(tenant), "rows": str(n)},
        )
        for _, table, tenant, n in rows
    ]
    return violations, int(rows[0][0])


# --- rls_enabled ----------------------------------------------------------------------

_RLS_SQL = """
WITH tenant_tables AS (
    SELECT c.oid, c.relname, c.relrowsecurity
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
       AND (c.relname = 'tenants'
            OR EXISTS (SELECT FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                          AND a.attnum > 0 AND NOT a.attisdropped))
), problems AS (
    SELECT t.relname, t.relrowsecurity,
           (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid) AS policies
      FROM tenant_tables t
)
SELECT relname, relrowsecurity, policies
  FROM problems
 WHERE NOT relrowsecurity OR policies = 0
 ORDER BY relname
"""


def _check_rls(conn: Conn, limit: int) -> tuple[list[Violation], int]:
    rows = _rows(conn, _RLS_SQL, {"schema": SCHEMA})
    violations = []
    for table, enabled, policies in rows:
        problems = []
        if not enabled:
            problems.append("row-level security is disabled")
        if not policies:
            problems.append("it has no policy")
        violations.append(
            Violation(
                "rls_enabled",
                f"tenant table booking.{table} is not isolated: {' and '.join(problems)}",
                {
                    "table": f"booking.{table}",
                    "rls_enabled": str(bool(enabled)).lower(),
                    "policies": str(policies),
                },
            )
        )
    return violations[:limit], len(violations)


# --- event_streams_contiguous ---------------------------------------------------------

# A stream is numbered 1..n exactly when its lowest version is 1, its highest is n (its
# number of versions) and no version repeats: one aggregate per stream, whose DISTINCT
# reads the versions in the order the unique (stream_id, version) index (or one sort)
# provides. Only the streams it flags are walked in version order, where every event must
# carry the previous version + 1 starting at 1, to name the first gap or duplicate.
_STREAMS_SQL = """
WITH flagged AS (
    SELECT stream_id
      FROM booking.events
     GROUP BY stream_id
    HAVING min(version) <> 1 OR max(version) <> count(version)
        OR count(DISTINCT version) <> count(version)
), stepped AS (
    SELECT e.stream_id, e.tenant_id, e.version,
           lag(e.version) OVER (PARTITION BY e.stream_id ORDER BY e.version) AS previous
      FROM booking.events e
     WHERE e.stream_id IN (SELECT stream_id FROM flagged ORDER BY stream_id LIMIT %s)
), broken AS (
    SELECT stream_id, min(tenant_id::text) AS tenant_id,
           min(coalesce(previous, 0) + 1) AS expected,
           min(version) FILTER (WHERE version <> coalesce(previous, 0) + 1) AS found,
           bool_or(version = previous) AS duplicates
      FROM stepped
     WHERE version <> coalesce(previous, 0) + 1
     GROUP BY stream_id
)
SELECT (SELECT count(*) FROM flagged), stream_id, tenant_id, expected, found, duplicates
  FROM broken ORDER BY stream_id
"""


def _check_streams(conn: Conn, limit: int) -> tuple[list[Violation], int]:
    rows = _rows(conn, _STREAMS_SQL, (limit,))
    if not rows:
        return [], 0
    violations = [
        Violation(
            "event_streams_contiguous",
            f"event stream {stream} is not numbered 1..n: "
            + (
                f"version {found} is duplicated"
                if duplicates
                else f"expected version {expected}, found {found}"
            ),
            {
                "stream_id": _text(stream),
                "tenant_id": _text(tenant),
                "expected_version": str(expected),
                "found_version": str(found),
            },
        )
        for _, stream, tenant, expected, found, duplicates in rows
    ]
    return violations, int(rows[0][0])


# --- no_invalid_objects ---------------------------------------------------------------

_INVALID_SQL = """
SELECT 'constraint' AS kind, c.conname AS name, c.conrelid::regclass::text AS tbl,
       'not validated' AS problem
  FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
 WHERE n.nspname = %(schema)s AND NOT c.convalidated
UNION ALL
SELECT 'index', ic.relname, i.indrelid::regclass::text,
       CASE WHEN NOT i.indisvalid THEN 'invalid'
            WHEN NOT i.indisready THEN 'not ready'
            ELSE 'being dropped' END
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
 WHERE n.nspname = %(schema)s AND NOT (i.indisvalid AND i.indisready AND i.indislive)
 ORDER BY 1, 3, 2
"""


def _check_invalid(conn: Conn, limit: int) -> tuple[list[Violation], int]:
    rows = _rows(conn, _INVALID_SQL, {"schema": SCHEMA})
    violations = [
        Violation(
            "no_invalid_objects",
            f"{kind} {name} on {table} is {problem}",
            {"kind": str(kind), "name": str(name), "table": str(table), "problem": str(problem)},
        )
        for kind, name, table, problem in rows
    ]
    return violations[:limit], len(violations)


# --- foreign_keys_hold ----------------------------------------------------------------

_FK_SQL = """
WITH broken AS (
    SELECT b.id, b.tenant_id, 'artist' AS kind, b.artist_id AS target
      FROM booking.bookings b
     WHERE NOT EXISTS (SELECT FROM booking.artists a
                        WHERE a.id = b.artist_id AND a.tenant_id = b.tenant_id)
    UNION ALL
    SELECT b.id, b.tenant_id, 'project', b.project_id
      FROM booking.bookings b
     WHERE NOT EXISTS (SELECT FROM booking.projects p
                        WHERE p.id = b.project_id AND p.tenant_id = b.tenant_id)
)
SELECT (SELECT count(*) FROM broken), br.id, br.tenant_id, br.kind, br.target,
       CASE br.kind
         WHEN 'artist' THEN (SELECT a.tenant_id FROM booking.artists a WHERE a.id = br.target)
         ELSE (SELECT p.tenant_id FROM booking.projects p WHERE p.id = br.target)
       END AS owner
  FROM broken br ORDER BY br.kind, br.id LIMIT %s
"""


def _check_foreign_keys(conn: Conn, limit: int) -> tuple[list[Violation], int]:
    rows = _rows(conn, _FK_SQL, (limit,))
    if not rows:
        return [], 0
    violations = []
    for _, booking, tenant, kind, target, owner in rows:
        where = "does not exist" if owner is None else f"belongs to tenant {owner}"
        violations.append(
            Violation(
                "foreign_keys_hold",
                f"booking {booking} of tenant {tenant} points at {kind} {target}, which {where}",
                {
                    "booking_id": _text(booking),
                    "tenant_id": _text(tenant),
                    f"{kind}_id": _text(target),
                    "owner_tenant_id": _text(owner),
                },
            )
        )
    return violations, int(rows[0][0])


CHECKS: tuple[_Check, ...] = (
    _Check(
        "no_overlapping_bookings",
        "Confirmed bookings of one artist never overlap.",
        ("bookings",),
        _check_overlaps,
    ),
    _Check(
        "tenant_rows_exist",
        "Every row of a tenant table belongs to an existing tenant.",
        ("tenants",),
        _check_tenant_rows,
    ),
    _Check(
        "rls_enabled",
        "Every tenant table has row-level security enabled and a policy.",
        (),
        _check_rls,
        catalog_only=True,
    ),
    _Check(
        "event_streams_contiguous",
        "Every event stream is numbered 1..n without gaps or duplicates.",
        ("events",),
        _check_streams,
    ),
    _Check(
        "no_invalid_objects",
        "No constraint is left NOT VALID and no index is invalid or unfinished.",
        (),
        _check_invalid,
        catalog_only=True,
    ),
    _Check(
        "foreign_keys_hold",
        "Every booking's artist and project exist and belong to the booking's tenant.",
        ("bookings", "artists", "projects"),
        _check_foreign_keys,
    ),
)


#: the checks that read only the catalog (fast on any size): ``status`` runs them by default
CATALOG_CHECKS: tuple[str, ...] = tuple(check.name for check in CHECKS if check.catalog_only)


def run_invariants(
    conn: psycopg.Connection[Any],
    *,
    only: Sequence[str] | None = None,
    limit: int = 20,
) -> InvariantReport:
    """Run the checks (all, or those named in ``only``, in the canonical order).

    ``limit`` caps the violations listed per check; ``CheckResult.total`` is the exact
    number found and ``truncated`` says whether some were left out. Raises
    :class:`ValueError` for an unknown check name or a negative limit, and
    :class:`InvariantsUnavailable` when row-level security would hide rows from the
    connection's role.
    """
    selected = _select(only, limit)

    own_transaction = conn.info.transaction_status == TransactionStatus.IDLE
    report = InvariantReport()
    with conn.transaction():
        if own_transaction:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SELECT set_config('row_security', 'off', true)")
        present = _present_tables(conn)
        _require_full_visibility(conn, present)
        for check in selected:
            report.results.append(_run_check(conn, check, present, limit))
    return report


def run_invariants_concurrently(
    connect: Callable[[], Conn],
    *,
    workers: int = 2,
    only: Sequence[str] | None = None,
    limit: int = 20,
) -> InvariantReport:
    """:func:`run_invariants` on a database **nothing writes to** (a restored copy paused at
    its target, a scratch restore), each check on a connection of its own, ``workers`` at a
    time: one check's scan on each core. The checks then see one state though each has its
    own snapshot; on a database that changes use :func:`run_invariants` (one snapshot)."""
    from concurrent.futures import ThreadPoolExecutor

    names = [check.name for check in _select(only, limit)]

    def one(name: str) -> InvariantReport:
        with connect() as conn:
            return run_invariants(conn, only=[name], limit=limit)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        parts = list(pool.map(one, names))
    return InvariantReport([result for part in parts for result in part.results])


def _select(only: Sequence[str] | None, limit: int) -> list[_Check]:
    """The checks named in ``only`` (all for None), in the canonical order."""
    if limit < 0:
        raise ValueError("The violation limit must not be negative.")
    known = {check.name for check in CHECKS}
    if only is not None:
        unknown = sorted(set(only) - known)
        if unknown:
            raise ValueError(
                f"Unknown invariant check(s): {', '.join(unknown)}; "
                f"known checks: {', '.join(sorted(known))}."
            )
    return [check for check in CHECKS if only is None or check.name in only]


def _present_tables(conn: Conn) -> set[str] | None:
    """Tables of the booking schema, or None if there is no such schema."""
    if _rows(conn, "SELECT to_regnamespace(%s) IS NULL", (SCHEMA,))[0][0]:
        return None
    rows = _rows(
        conn,
        "SELECT c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (SCHEMA,),
    )
    return {str(row[0]) for row in rows}


def _require_full_visibility(conn: Conn, present: set[str] | None) -> None:
    if not present:
        return
    rows = _rows(
        conn,
        "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND row_security_active(c.oid)"
        " ORDER BY 1",
        (SCHEMA,),
    )
    if rows:
        who = _rows(conn, "SELECT current_user")[0][0]
        raise InvariantsUnavailable(
            f"Role {who} is subject to row-level security on {rows[0][0]}, so the "
            "invariants would not see every row; run them as the schema owner, a "
            f"superuser or a BYPASSRLS role (e.g. {privileges.BACKUP})."
        )


def _run_check(conn: Conn, check: _Check, present: set[str] | None, limit: int) -> CheckResult:
    started = time.monotonic()
    violations, total = _attempt(conn, check, present, limit)
    shown = violations[:limit]
    return CheckResult(
        name=check.name,
        description=check.description,
        violations=shown,
        truncated=total > len(shown),
        duration_ms=round((time.monotonic() - started) * 1000),
        total=max(total, len(shown)),
    )


def _attempt(
    conn: Conn, check: _Check, present: set[str] | None, limit: int
) -> tuple[list[Violation], int]:
    if present is None:
        detail = f"schema {SCHEMA} does not exist: the booking schema is not installed"
        return [Violation(check.name, detail, {"schema": SCHEMA})], 1
    missing = [table for table in check.requires if table not in present]
    if missing:
        table = f"{SCHEMA}.{missing[0]}"
        detail = f"table {table} does not exist (the booking schema is incomplete)"
        return [Violation(check.name, detail, {"table": table})], 1
    try:
        with conn.transaction():  # a savepoint: a check that fails spoils no other
            # ask for one row at least: it carries the total even when limit is 0
            return check.run(conn, max(limit, 1))
    except errors.InsufficientPrivilege as err:
        raise InvariantsUnavailable(
            f"Check {check.name} could not read every row ({err.diag.message_primary}); "
            "run the invariants as the schema owner, a superuser or a BYPASSRLS role."
        ) from err
    except psycopg.ProgrammingError as err:
        if not (err.sqlstate or "").startswith("42"):
            raise
        # class 42, e.g. a column the check reads was dropped or renamed: schema drift
        detail = f"the check could not run: {err.diag.message_primary}"
        return [Violation(check.name, detail, {"sqlstate": err.sqlstate or ""})], 1
