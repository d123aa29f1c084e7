"""Planning and applying one tenant's recovery against live, from a :class:`Source`.

:func:`plan_tenant` reads (REPEATABLE READ, READ ONLY on both sides) and writes nothing.

:func:`apply_tenant` does everything in **one transaction** on live (REPEATABLE READ), holding a
per-tenant advisory lock (one recovery of a tenant at a time):

1. plans again in its own snapshot -- and refuses when that plan differs from the one the
   operator confirmed (``expect_digest``: live moved on) -- and stops, writing nothing, when
   the plan has conflicts and ``skip_conflicts`` is not given;
2. re-inserts the missing rows with their original ids and values (parents first;
   ``OVERRIDING SYSTEM VALUE`` for identity columns) and, with ``restore_changed``,
   restores changed rows to their values at the point -- every statement filtered by the
   tenant, and checked to have written exactly the rows planned;
3. appends one event per restored aggregate to the event store: ``<aggregate>.recovered``
   (``booking.recovered``, ``artist.recovered``, ...) at the next version of the row's
   stream (``stream_id`` = the row's id; a booking's stream goes on from its last event),
   with who, from which point, from which copy, the plan's digest and the restored state;
4. runs the booking invariants; a violation of this tenant's or a global one (row-level
   security, invalid objects) rolls everything back;
5. commits, and records ``recover.tenant`` with the plan's digest in the audit trail.

Any failure rolls the transaction back: nothing is half-applied. Run again, a finished
recovery plans nothing (:attr:`RecoveryPlan.empty`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ptool_ops import privileges, tracing
from ptool_ops.errors import Conflict as Busy
from ptool_ops.errors import OperationFailed, UsageError
from ptool_ops.recover import plan as planning
from ptool_ops.recover import rows as R
from ptool_ops.recover import schema
from ptool_ops.recover.plan import RecoveryPlan
from ptool_ops.recover.source import Source

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

Conn = psycopg.Connection[Any]
Progress = Callable[[str, str], None]

DUTY = "recover.tenant"
LOCK_TIMEOUT = "10s"


def _quiet(phase: str, detail: str) -> None:
    return None


@dataclass
class Applied:
    """What :func:`apply_tenant` did: nothing (``applied`` False, and why) or the writes."""

    plan: RecoveryPlan
    applied: bool
    reason: str = ""
    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    events: int = 0
    invariants: dict[str, Any] | None = None
    #: seconds: planning in the apply's transaction, writing (rows and events), invariants
    elapsed_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "reason": self.reason,
            "inserted": self.inserted,
            "updated": self.updated,
            "events": self.events,
            "invariants": self.invariants,
            "elapsed_s": self.elapsed_s,
        }


def _open_live(env: Environment, *, read_only: bool) -> Conn:
    conn = env.database(DUTY).connect(autocommit=False)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = read_only
    return conn


def _open_source(source: Source) -> Conn:
    conn = source.connect()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def _tenant(live: Conn, copy: Conn, ident: str) -> tuple[str, str | None]:
    """The tenant's id and slug, from its id or its slug; live first, then the copy (a
    tenant deleted since is there)."""
    query = (
        "SELECT id::text, slug FROM booking.tenants WHERE id::text = %(t)s OR slug = %(t)s"
        " ORDER BY id::text = %(t)s DESC LIMIT 1"
    )
    for conn in (live, copy):
        row = conn.execute(query, {"t": ident.strip().lower()}).fetchone()
        if row is not None:
            return str(row[0]), str(row[1])
    raise UsageError(
        f"there is no tenant {ident!r}, live or in the copy.",
        hint="Give the tenant's id (uuid) or its slug.",
    )


@tracing.span("prepare")
def _prepare(
    env: Environment, live: Conn, copy: Conn, tenant: str, tables: Sequence[str] | None
) -> tuple[str, str | None, list[schema.Table], dict[str, schema.Table]]:
    privileges.require(live, DUTY)
    R.settle(live)
    R.settle(copy)
    known = schema.tenant_tables(live)
    chosen = schema.select(known, tables)
    schema.check_same_shape(known, schema.tenant_tables(copy), [t.name for t in chosen])
    tenant_id, slug = _tenant(live, copy, tenant)
    return tenant_id, slug, chosen, known


@tracing.span("plan")
def _build(
    live: Conn,
    copy: Conn,
    source: Source,
    tenant_id: str,
    slug: str | None,
    chosen: list[schema.Table],
    known: dict[str, schema.Table],
    restore_changed: bool,
    say: Progress,
) -> RecoveryPlan:
    return planning.build(
        live,
        copy,
        chosen,
        known,
        tenant_id=tenant_id,
        tenant_slug=slug,
        as_of=source.as_of,
        source_info={"kind": source.kind, "id": source.id, "as_of": source.as_of},
        restore_changed=restore_changed,
        progress=say,
    )


def plan_tenant(
    env: Environment,
    source: Source,
    tenant: str,
    *,
    tables: Sequence[str] | None = None,
    restore_changed: bool = False,
    progress: Progress | None = None,
) -> RecoveryPlan:
    """The plan for ``tenant`` (its id or slug); reads live and the copy, writes nothing."""
    say = progress or _quiet
    with _open_live(env, read_only=True) as live, _open_source(source) as copy:
        try:
            tenant_id, slug, chosen, known = _prepare(env, live, copy, tenant, tables)
            return _build(live, copy, source, tenant_id, slug, chosen, known, restore_changed, say)
        finally:
            live.rollback()
            copy.rollback()


# --- writing ------------------------------------------------------------------------------------


def _insert(live: Conn, table: schema.Table, tenant: str, rows: Sequence[R.Row]) -> int:
    cols = table.stored
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in cols)
    overriding = (
        sql.SQL(" OVERRIDING SYSTEM VALUE") if any(c.identity_always for c in cols) else sql.SQL("")
    )
    query = sql.SQL(
        "INSERT INTO {table} ({names}){overriding} SELECT {names} FROM {cand} AS c"
        " WHERE c.{tenant} = %s"
    ).format(
        table=table.ident,
        names=names,
        overriding=overriding,
        cand=R.candidates(table),
        tenant=sql.Identifier(table.tenant_column),
    )
    cur = live.execute(query, [*R.row_arrays(table, rows), tenant])
    return cur.rowcount


def _update(live: Conn, table: schema.Table, tenant: str, rows: Sequence[R.Row]) -> int:
    sets = sql.SQL(", ").join(
        sql.SQL("{0} = c.{0}").format(sql.Identifier(c.name)) for c in table.updatable
    )
    same = sql.SQL(" AND ").join(
        sql.SQL("t.{0} = c.{0}").format(sql.Identifier(n)) for n in table.primary_key
    )
    query = sql.SQL(
        "UPDATE {table} AS t SET {sets} FROM {cand} AS c WHERE {same} AND t.{tenant} = %s"
        " AND c.{tenant} = %s"
    ).format(
        table=table.ident,
        sets=sets,
        cand=R.candidates(table),
        same=same,
        tenant=sql.Identifier(table.tenant_column),
    )
    cur = live.execute(query, [*R.row_arrays(table, rows), tenant, tenant])
    return cur.rowcount


_EVENTS = """
INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)
SELECT %(tenant)s::uuid, r.id,
       coalesce((SELECT max(e.version) FROM booking.events e WHERE e.stream_id = r.id), 0) + 1,
       %(type)s::text,
       jsonb_build_object('action', %(action)s::text, 'table', %(table)s::text,
                          'as_of', %(as_of)s::text, 'by', %(by)s::text,
                          'source', %(source)s::text, 'plan', %(plan)s::text,
                          'state', to_jsonb(r) - 'tenant_id')
  FROM {table} AS r
 WHERE r.{tenant} = %(tenant)s::uuid AND r.id = ANY(%(ids)s::uuid[])
"""


def _events(
    live: Conn,
    table: schema.Table,
    the_plan: RecoveryPlan,
    keys: Sequence[R.Key],
    action: str,
    by: str,
    source: Source,
) -> int:
    if not table.event_stream or not keys:
        return 0
    query = sql.SQL(_EVENTS).format(table=table.ident, tenant=sql.Identifier(table.tenant_column))
    written = 0
    for start in range(0, len(keys), R.BATCH):
        ids = [str(k[0]) for k in keys[start : start + R.BATCH]]
        cur = live.execute(
            query,
            {
                "tenant": the_plan.tenant_id,
                "type": f"{table.singular}.recovered",
                "action": action,
                "table": table.qualified,
                "as_of": the_plan.as_of,
                "by": by,
                "source": f"{source.kind} {source.id}",
                "plan": the_plan.digest,
                "ids": ids,
            },
        )
        written += cur.rowcount
    return written


@tracing.span("write")
def _write(
    live: Conn,
    copy: Conn,
    source: Source,
    the_plan: RecoveryPlan,
    tables: Sequence[schema.Table],
    by: str,
    say: Progress,
    result: Applied,
) -> None:
    for table in tables:
        tp = the_plan.table(table.name)
        for action, keys in (("insert", tp.insert_keys), ("update", tp.update_keys)):
            done = 0
            for start in range(0, len(keys), R.BATCH):
                chunk = keys[start : start + R.BATCH]
                fetched = R.fetch(copy, table, the_plan.tenant_id, chunk)
                rows = [fetched[k] for k in chunk]
                write = _insert if action == "insert" else _update
                count = write(live, table, the_plan.tenant_id, rows)
                if count != len(rows):
                    raise OperationFailed(
                        f"{table.qualified}: {action} wrote {count} of {len(rows)} planned"
                        " rows; live changed during the recovery. Nothing was applied.",
                        hint="Run the recovery again: it plans from live as it is then.",
                    )
                done += count
                say("apply", f"{table.qualified}: {action} {done}/{len(keys)}")
            if done:
                (result.inserted if action == "insert" else result.updated)[table.qualified] = done
            word = "reinserted" if action == "insert" else "restored"
            result.events += _events(live, table, the_plan, keys, word, by, source)


def _blocking(report: dict[str, Any], tenant: str) -> list[dict[str, Any]]:
    """Violations that stop the recovery: this tenant's, global ones, and any in a check
    whose list was cut (it cannot tell whose they are)."""
    found = []
    for check in report["checks"]:
        for violation in check["violations"]:
            owner = violation["ref"].get("tenant_id") or violation["ref"].get("owner_tenant_id")
            if check["truncated"] or not owner or owner == tenant:
                found.append(violation)
    return found


def _lock(live: Conn, tenant_id: str) -> None:
    live.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
    row = live.execute(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"ptool-ops recover tenant {tenant_id}",),
    ).fetchone()
    if not row or not row[0]:
        raise Busy(
            f"another recovery of tenant {tenant_id} is running.",
            hint="Wait for it to finish, then plan again.",
        )


def apply_tenant(
    env: Environment,
    source: Source,
    tenant: str,
    *,
    tables: Sequence[str] | None = None,
    restore_changed: bool = False,
    skip_conflicts: bool = False,
    expect_digest: str | None = None,
    progress: Progress | None = None,
) -> Applied:
    """Plan and apply in one transaction (see the module's docstring)."""
    from ptool_ops.audit import actor, audited
    from ptool_ops.booking.invariants import run_invariants

    say = progress or _quiet
    with _open_live(env, read_only=False) as live, _open_source(source) as copy:
        try:
            tenant_id, slug, chosen, known = _prepare(env, live, copy, tenant, tables)
            _lock(live, tenant_id)
            clock = time.monotonic()
            the_plan = _build(
                live, copy, source, tenant_id, slug, chosen, known, restore_changed, say
            )
            elapsed = {"plan": round(time.monotonic() - clock, 3)}
            if expect_digest is not None and the_plan.digest != expect_digest:
                raise OperationFailed(
                    f"live changed since the plan was made (digest {expect_digest[:12]} then,"
                    f" {the_plan.digest[:12]} now); nothing was applied.",
                    hint="Plan again, check it, and apply that plan.",
                )
            result = Applied(the_plan, applied=False, elapsed_s=elapsed)
            if the_plan.conflict_count and not skip_conflicts:
                result.reason = (
                    f"{the_plan.conflicted_rows} row(s) are in conflict; nothing was applied"
                    " (--skip-conflicts applies the rest)"
                )
                return result
            if not the_plan.inserts and not the_plan.updates:
                result.reason = "nothing to recover"
                return result
            details: dict[str, Any] = {
                "tenant_id": tenant_id,
                "tenant_slug": slug,
                "as_of": the_plan.as_of,
                "source": source.to_dict(),
                "tables": [t.qualified for t in chosen],
                "restore_changed": restore_changed,
                "skip_conflicts": skip_conflicts,
                "plan_digest": the_plan.digest,
                "insert": the_plan.inserts,
                "update": the_plan.updates,
                "conflicts_skipped": the_plan.conflicted_rows,
            }
            with audited(
                env,
                "recover.tenant",
                details,
                done=lambda: f"tenant {tenant_id} was recovered to {the_plan.as_of}",
            ) as entry:
                clock = time.monotonic()
                try:
                    _write(live, copy, source, the_plan, chosen, actor(), say, result)
                except (
                    pg_errors.IntegrityError,
                    pg_errors.SerializationFailure,
                    pg_errors.LockNotAvailable,
                ) as err:
                    raise OperationFailed(
                        f"live refused the recovery ({err.diag.message_primary}); nothing was"
                        " applied (a write raced the plan).",
                        hint="Run the recovery again: it plans from live as it is then.",
                    ) from None
                elapsed["write"] = round(time.monotonic() - clock, 3)
                clock = time.monotonic()
                say("invariants", "checking the booking invariants")
                with tracing.span("invariants"):
                    report = run_invariants(live, limit=50).to_dict()
                elapsed["invariants"] = round(time.monotonic() - clock, 3)
                result.invariants = report
                bad = _blocking(report, tenant_id)
                if bad:
                    raise OperationFailed(
                        f"after the recovery {len(bad)} invariant violation(s) of tenant"
                        f" {tenant_id} or of the whole database were found"
                        f" ({bad[0]['detail']}); nothing was applied.",
                        hint="Look at the violations ('ptool-ops status'); fix them, or recover"
                        " fewer tables.",
                        details={"violations": bad[:10]},
                    )
                live.commit()
                result.applied = True
                entry.details.update(
                    inserted=result.inserted, updated=result.updated, events=result.events
                )
                say("apply", f"committed: {json.dumps(result.inserted)}")
            return result
        finally:
            if not live.closed:
                live.rollback()
            copy.rollback()
