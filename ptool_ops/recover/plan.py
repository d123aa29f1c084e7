"""The recovery plan for one tenant: a row diff per table between the restored copy (as of
the point recovered to) and live, and every conflict a write-back would meet.

Per table, in foreign-key order (parents first), both sides are streamed in primary-key
order -- only the tenant's rows, through server-side cursors, hashes of the compared
columns rather than the rows -- and merged:

* **missing**: in the copy, not live (deleted since) -- re-inserted by default;
* **changed**: on both sides, different now -- left as they are, or restored to their
  state at the point with ``restore_changed``;
* **new**: live only (written since) -- always left alone.

Only the keys of missing and changed rows are kept; rows are fetched by key in batches
for what is checked or written, so a tenant of millions of rows is read in constant memory
(apart from those keys).

A row to write is checked against live, batch by batch, for what would refuse it:

* a **unique key** (the primary key among them) already taken -- by one of the tenant's
  rows written since (shown), or by a row of another tenant (not shown: recovery reads no
  other tenant's rows; it only learns that the key is taken);
* an **exclusion constraint**: a confirmed booking that overlaps one made since
  (``bookings_no_overlap``), shown with both rows;
* a **foreign key** whose parent row is gone from live and is not re-inserted by this plan
  (its table not recovered, or the parent itself in conflict); the parent as of the point
  is shown.

Rows written in one transaction of the copy are consistent among themselves, so only
copy-against-live pairs are checked. Whatever the plan did not foresee (a write that raced
it) the database still refuses at apply time, and the whole apply rolls back.

The plan's :attr:`RecoveryPlan.digest` covers what it would write and every conflict; an
apply that finds a different plan in its own transaction refuses (live moved on).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ptool_ops.recover import rows as R
from ptool_ops.recover.rows import Key, Row
from ptool_ops.recover.schema import ForeignKey, KeyIndex, Table

Conn = psycopg.Connection[Any]
#: called with (phase, detail)
Progress = Callable[[str, str], None]

SAMPLE = 5
_REPORT_EVERY = 20_000


@dataclass
class Conflict:
    """A row recovery would write that live refuses, with the row it collides with."""

    table: str
    kind: str  # "unique" | "exclusion" | "foreign_key"
    constraint: str
    action: str  # "insert" | "update"
    key: list[str]
    row: Row  # as of the point recovered to
    other: Row | None  # the live row, or the parent as of the point
    other_is: str  # what ``other`` is, in words
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TablePlan:
    table: str
    source_rows: int = 0
    live_rows: int = 0
    missing: int = 0
    changed: int = 0
    new: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    #: rows that have at least one conflict (not written)
    conflicted: int = 0
    samples: dict[str, list[Any]] = field(
        default_factory=lambda: {"missing": [], "changed": [], "new": []}
    )
    insert_keys: list[Key] = field(default_factory=list, repr=False)
    update_keys: list[Key] = field(default_factory=list, repr=False)

    @property
    def inserts(self) -> int:
        return len(self.insert_keys)

    @property
    def updates(self) -> int:
        return len(self.update_keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "source_rows": self.source_rows,
            "live_rows": self.live_rows,
            "missing": self.missing,
            "changed": self.changed,
            "new": self.new,
            "insert": self.inserts,
            "update": self.updates,
            "conflicted": self.conflicted,
            "conflicts": [c.to_dict() for c in self.conflicts],
            "samples": self.samples,
        }


@dataclass
class RecoveryPlan:
    tenant_id: str
    tenant_slug: str | None
    as_of: str
    source: dict[str, Any]
    restore_changed: bool
    tables: list[TablePlan]
    digest: str = ""

    @property
    def inserts(self) -> int:
        return sum(t.inserts for t in self.tables)

    @property
    def updates(self) -> int:
        return sum(t.updates for t in self.tables)

    @property
    def conflict_count(self) -> int:
        return sum(len(t.conflicts) for t in self.tables)

    @property
    def conflicted_rows(self) -> int:
        return sum(t.conflicted for t in self.tables)

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing in the way: a recovery already done plans this."""
        return not self.inserts and not self.updates and not self.conflict_count

    def table(self, name: str) -> TablePlan:
        bare = name.removeprefix("booking.")
        return next(t for t in self.tables if t.table.removeprefix("booking.") == bare)

    def actions(self) -> list[str]:
        """What apply does, in words."""
        done = []
        for t in self.tables:
            if t.inserts:
                done.append(f"re-insert {t.inserts} row(s) of {t.table} with their original ids")
            if t.updates:
                done.append(f"restore {t.updates} changed row(s) of {t.table} to the point")
            elif t.changed and not self.restore_changed:
                done.append(f"leave {t.changed} changed row(s) of {t.table} as they are now")
            if t.conflicted:
                done.append(f"not write {t.conflicted} row(s) of {t.table} in conflict")
        return done

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "tenant_slug": self.tenant_slug,
            "as_of": self.as_of,
            "source": self.source,
            "restore_changed": self.restore_changed,
            "digest": self.digest,
            "empty": self.empty,
            "insert": self.inserts,
            "update": self.updates,
            "conflicts": self.conflict_count,
            "conflicted_rows": self.conflicted_rows,
            "actions": self.actions(),
            "tables": [t.to_dict() for t in self.tables],
        }


# --- the diff --------------------------------------------------------------------------------


@dataclass
class _Diff:
    missing: list[Key] = field(default_factory=list)
    changed: list[Key] = field(default_factory=list)
    new_sample: list[Key] = field(default_factory=list)
    new: int = 0
    source_rows: int = 0
    live_rows: int = 0


def _merge(
    source: Iterator[tuple[Key, int]],
    live: Iterator[tuple[Key, int]],
    table: str,
    say: Progress,
    sample: int,
) -> _Diff:
    diff = _Diff()
    a, b = next(source, None), next(live, None)
    seen = 0
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            diff.missing.append(a[0])
            diff.source_rows += 1
            a = next(source, None)
        elif a is None or b[0] < a[0]:
            diff.new += 1
            diff.live_rows += 1
            if len(diff.new_sample) < sample:
                diff.new_sample.append(b[0])
            b = next(live, None)
        else:
            if a[1] != b[1]:
                diff.changed.append(a[0])
            diff.source_rows += 1
            diff.live_rows += 1
            a, b = next(source, None), next(live, None)
        seen += 1
        if seen % _REPORT_EVERY == 0:
            say("diff", f"{table}: {diff.source_rows} rows of the copy, {diff.live_rows} live")
    return diff


# --- conflicts ---------------------------------------------------------------------------------


def _aliases(prefix: str, count: int) -> list[sql.Identifier]:
    return [sql.Identifier(f"{prefix}{i}") for i in range(count)]


def _key_hits(
    live: Conn, table: Table, index: KeyIndex, tenant: str, batch: Sequence[Row]
) -> list[tuple[list[str], list[str], bool]]:
    """(candidate key, live key, live row is the tenant's) for every live row that the
    candidates would collide with on ``index`` -- the same row of the tenant excepted."""
    pk = table.primary_key
    p, q, k = _aliases("p", len(pk)), _aliases("q", len(pk)), _aliases("k", len(index.keys))
    keys = [sql.SQL(expr) for expr in index.keys]  # the server's own catalog text
    where = (
        sql.SQL(" WHERE {}").format(sql.SQL(index.predicate)) if index.predicate else sql.SQL("")
    )
    name = sql.Identifier(table.name)

    def select(prefix: list[sql.Identifier]) -> sql.Composable:
        return sql.SQL(", ").join(
            [
                *(
                    sql.SQL("{} AS {}").format(sql.Identifier(c), a)
                    for c, a in zip(pk, prefix, strict=True)
                ),
                *(sql.SQL("{} AS {}").format(e, a) for e, a in zip(keys, k, strict=True)),
            ]
        )

    on = sql.SQL(" AND ").join(
        sql.SQL("c.{} {} l.{}").format(a, sql.SQL(op), a)
        for a, op in zip(k, index.operators, strict=True)
    )
    same = sql.SQL(" AND ").join(
        sql.SQL("l.{} = c.{}").format(qa, pa) for qa, pa in zip(q, p, strict=True)
    )
    query = sql.SQL(
        "WITH c AS (SELECT {csel} FROM {cand} AS {name}{where}),"
        " l AS (SELECT {lsel}, {tenant} = %s AS own FROM {table} AS {name}{where})"
        " SELECT {cout}, {lout}, l.own FROM c JOIN l ON {on} WHERE NOT (l.own AND {same})"
    ).format(
        csel=select(p),
        cand=R.candidates(table),
        name=name,
        where=where,
        lsel=select(q),
        tenant=sql.Identifier(table.tenant_column),
        table=table.ident,
        cout=sql.SQL(", ").join(sql.SQL("c.{}::text").format(a) for a in p),
        lout=sql.SQL(", ").join(sql.SQL("l.{}::text").format(a) for a in q),
        on=on,
        same=same,
    )
    found = []
    width = len(pk)
    for row in live.execute(query, [*R.row_arrays(table, batch), tenant]).fetchall():
        found.append((list(row[:width]), list(row[width : 2 * width]), bool(row[2 * width])))
    return found


def _orphans(
    live: Conn, table: Table, fk: ForeignKey, batch: Sequence[Row]
) -> list[tuple[list[str], tuple[str, ...]]]:
    """(candidate key, its parent's key) for candidates whose parent is not in live."""
    pk = table.primary_key
    present = sql.SQL(" AND ").join(
        sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(col)) for col in fk.columns
    )
    match = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
        for pc, cc in zip(fk.parent_columns, fk.columns, strict=True)
    )
    query = sql.SQL(
        "SELECT {pk}, {fkcols} FROM {cand} AS c WHERE {present}"
        " AND NOT EXISTS (SELECT FROM {parent} AS p WHERE {match})"
    ).format(
        pk=sql.SQL(", ").join(sql.SQL("c.{}::text").format(sql.Identifier(c)) for c in pk),
        fkcols=sql.SQL(", ").join(
            sql.SQL("c.{}::text").format(sql.Identifier(c)) for c in fk.columns
        ),
        cand=R.candidates(table),
        present=present,
        parent=sql.Identifier("booking", fk.parent),
        match=match,
    )
    width = len(pk)
    return [
        (list(row[:width]), tuple(str(v) for v in row[width:]))
        for row in live.execute(query, R.row_arrays(table, batch)).fetchall()
    ]


def _one_row(
    conn: Conn, table: Table, tenant: str, columns: Sequence[str], values: Sequence[str]
) -> Row | None:
    match = sql.SQL(" AND ").join(
        sql.SQL("{}::text = %s").format(sql.Identifier(c)) for c in columns
    )
    query = sql.SQL("SELECT {values} FROM {table} WHERE {tenant} = %s AND {match} LIMIT 1").format(
        values=sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in table.stored
        ),
        table=table.ident,
        tenant=sql.Identifier(table.tenant_column),
        match=match,
    )
    row = conn.execute(query, [tenant, *values]).fetchone()
    if row is None:
        return None
    return {c.name: v for c, v in zip(table.stored, row, strict=True)}


class _Checker:
    """Conflicts of candidate rows against live, table by table in foreign-key order; keeps
    what the plan re-inserts so that children of re-inserted parents pass."""

    def __init__(
        self,
        live: Conn,
        source: Conn,
        tables: Sequence[Table],
        known: dict[str, Table],
        tenant: str,
    ) -> None:
        self.live, self.source, self.known, self.tenant = live, source, known, tenant
        selected = {t.name for t in tables}
        self.selected = selected
        #: parent table → the column lists its children reference
        self.referenced: dict[str, set[tuple[str, ...]]] = {}
        for t in tables:
            for fk in t.foreign_keys:
                if fk.parent in selected:
                    self.referenced.setdefault(fk.parent, set()).add(fk.parent_columns)
        #: (parent table, columns) → the values of rows this plan re-inserts
        self.planned: dict[tuple[str, tuple[str, ...]], set[tuple[str, ...]]] = {}
        #: (parent table, columns) → the values of rows in conflict (not re-inserted)
        self.conflicted: dict[tuple[str, tuple[str, ...]], set[tuple[str, ...]]] = {}

    def check(
        self, table: Table, batch: Sequence[Row], action: str, replaced: set[tuple[str, ...]]
    ) -> list[Conflict]:
        """Conflicts of ``batch`` (rows as of the point); ``replaced``: keys of the tenant's
        live rows that this plan overwrites (their live values do not stay)."""
        found: list[Conflict] = []
        by_key = {tuple(str(v) for v in R.key_of(table, row)): row for row in batch}
        for index in table.key_indexes:
            hits = _key_hits(self.live, table, index, self.tenant, batch)
            others = [tuple(h[1]) for h in hits if h[2] and tuple(h[1]) not in replaced]
            shown = self._live_rows(table, others)
            for cand, other, own in hits:
                if own and tuple(other) in replaced:
                    continue
                row = by_key[tuple(cand)]
                found.append(self._key_conflict(table, index, action, cand, row, other, own, shown))
        for fk in table.foreign_keys:
            for cand, parent in _orphans(self.live, table, fk, batch):
                if parent in self.planned.get((fk.parent, fk.parent_columns), set()):
                    continue
                found.append(
                    self._fk_conflict(table, fk, action, cand, by_key[tuple(cand)], parent)
                )
        keys = {tuple(c.key) for c in found}
        if action == "insert":
            for cols in self.referenced.get(table.name, ()):
                planned = self.planned.setdefault((table.name, cols), set())
                stuck = self.conflicted.setdefault((table.name, cols), set())
                for key, row in by_key.items():
                    (stuck if key in keys else planned).add(tuple(str(row[c]) for c in cols))
        return found

    def _live_rows(
        self, table: Table, keys: Sequence[tuple[str, ...]]
    ) -> dict[tuple[str, ...], Row]:
        if not keys:
            return {}
        typed = [tuple(k) for k in keys]
        fetched = R.fetch(self.live, table, self.tenant, typed)
        return {tuple(str(v) for v in k): row for k, row in fetched.items()}

    def _key_conflict(
        self,
        table: Table,
        index: KeyIndex,
        action: str,
        cand: list[str],
        row: Row,
        other: list[str],
        own: bool,
        shown: dict[tuple[str, ...], Row],
    ) -> Conflict:
        what = "re-inserted" if action == "insert" else "restored"
        key = ", ".join(cand)
        if index.kind == "exclusion":
            kind = "exclusion"
            clash = f"would violate {index.name} with"
        else:
            kind = "unique"
            clash = f"has the {index.kind} ({', '.join(index.keys)}) of"
        if own:
            other_row = shown.get(tuple(other))
            other_is = "the tenant's live row (written or changed since)"
            detail = f"{table.qualified} row {key} ({what}) {clash} live row {', '.join(other)}"
        else:
            other_row = None
            other_is = "a row of another tenant (not shown: recovery reads one tenant's rows)"
            detail = (
                f"{table.qualified} row {key} ({what}) {clash} a row of another tenant"
                " (the key is taken)"
            )
        return Conflict(
            table=table.qualified,
            kind=kind,
            constraint=index.name,
            action=action,
            key=cand,
            row=row,
            other=other_row,
            other_is=other_is,
            detail=detail,
        )

    def _fk_conflict(
        self,
        table: Table,
        fk: ForeignKey,
        action: str,
        cand: list[str],
        row: Row,
        parent: tuple[str, ...],
    ) -> Conflict:
        parent_table = self.known.get(fk.parent)
        at_point = None
        if parent_table is not None:
            at_point = _one_row(self.source, parent_table, self.tenant, fk.parent_columns, parent)
        pairs = ", ".join(f"{c} = {v}" for c, v in zip(fk.parent_columns, parent, strict=True))
        if parent in self.conflicted.get((fk.parent, fk.parent_columns), set()):
            why = "is itself in conflict, so it is not re-inserted"
        elif fk.parent not in self.selected:
            why = f"is gone from live and booking.{fk.parent} is not among the tables recovered"
        else:
            why = "is gone from live and not in the copy either"
        return Conflict(
            table=table.qualified,
            kind="foreign_key",
            constraint=fk.name,
            action=action,
            key=cand,
            row=row,
            other=at_point,
            other_is=(
                f"the parent row of booking.{fk.parent} as of the point"
                if at_point
                else f"the parent row of booking.{fk.parent} (in neither copy nor live)"
            ),
            detail=f"{table.qualified} row {', '.join(cand)}: its parent in booking.{fk.parent}"
            f" ({pairs}) {why}",
        )


# --- the plan ----------------------------------------------------------------------------------


def build(
    live: Conn,
    source: Conn,
    tables: Sequence[Table],
    known: dict[str, Table],
    *,
    tenant_id: str,
    tenant_slug: str | None,
    as_of: str,
    source_info: dict[str, Any],
    restore_changed: bool,
    progress: Progress | None = None,
    sample: int = SAMPLE,
) -> RecoveryPlan:
    """The plan, read in the callers' transactions on ``live`` and ``source`` (the copy);
    :func:`ptool_ops.recover.rows.settle` must have run in both. Writes nothing."""
    say = progress or (lambda phase, detail: None)
    checker = _Checker(live, source, tables, known, tenant_id)
    plan = RecoveryPlan(tenant_id, tenant_slug, as_of, source_info, restore_changed, [])
    for table in tables:
        say("diff", f"{table.qualified}: comparing the tenant's rows")
        # both servers stream at once; the streams are closed (their cursors too) before
        # anything else uses the connections, whatever happens
        theirs = R.in_background(R.stream_hashes(source, table, tenant_id, "source"))
        ours = R.in_background(R.stream_hashes(live, table, tenant_id, "live"))
        try:
            diff = _merge(theirs, ours, table.qualified, say, sample)
        finally:
            theirs.close()
            ours.close()
        tp = TablePlan(
            table.qualified,
            source_rows=diff.source_rows,
            live_rows=diff.live_rows,
            missing=len(diff.missing),
            changed=len(diff.changed),
            new=diff.new,
        )
        replaced = {tuple(R.key_text(k)) for k in diff.changed} if restore_changed else set()
        work = [("insert", diff.missing)]
        if restore_changed:
            work.append(("update", diff.changed))
        for action, keys in work:
            if keys:
                say("conflicts", f"{table.qualified}: checking {len(keys)} row(s) to {action}")
            for start in range(0, len(keys), R.BATCH):
                chunk = keys[start : start + R.BATCH]
                fetched = R.fetch(source, table, tenant_id, chunk)
                batch = [fetched[k] for k in chunk]
                conflicts = checker.check(table, batch, action, replaced)
                tp.conflicts.extend(conflicts)
                bad = {tuple(c.key) for c in conflicts}
                good = [k for k in chunk if tuple(R.key_text(k)) not in bad]
                (tp.insert_keys if action == "insert" else tp.update_keys).extend(good)
                tp.conflicted += len({tuple(c.key) for c in conflicts})
                if action == "insert" and len(tp.samples["missing"]) < sample:
                    tp.samples["missing"].extend(batch[: sample - len(tp.samples["missing"])])
        _samples(live, source, table, tenant_id, diff, tp, sample)
        plan.tables.append(tp)
    plan.digest = digest(plan)
    return plan


def _samples(
    live: Conn, source: Conn, table: Table, tenant: str, diff: _Diff, tp: TablePlan, sample: int
) -> None:
    if not tp.samples["missing"] and diff.missing:
        first = diff.missing[:sample]
        got = R.fetch(source, table, tenant, first)
        tp.samples["missing"] = [got[k] for k in first if k in got]
    if diff.changed:
        first = diff.changed[:sample]
        then, now = R.fetch(source, table, tenant, first), R.fetch(live, table, tenant, first)
        tp.samples["changed"] = [
            {"as_of": then.get(k), "now": now.get(k)} for k in first if k in then
        ]
    if diff.new_sample:
        got = R.fetch(live, table, tenant, diff.new_sample)
        tp.samples["new"] = [got[k] for k in diff.new_sample if k in got]


def digest(plan: RecoveryPlan) -> str:
    """SHA-256 over what the plan writes and what is in its way (not over the rows left
    alone, which keep changing on a live system)."""
    h = hashlib.sha256()
    head = {"tenant": plan.tenant_id, "as_of": plan.as_of, "restore_changed": plan.restore_changed}
    h.update(json.dumps(head, sort_keys=True).encode())
    for t in plan.tables:
        h.update(f"\n{t.table}\ninsert".encode())
        for key in t.insert_keys:
            h.update(("\x1f".join(R.key_text(key)) + "\n").encode())
        h.update(b"update")
        for key in t.update_keys:
            h.update(("\x1f".join(R.key_text(key)) + "\n").encode())
        h.update(b"conflicts")
        for c in t.conflicts:
            h.update(f"{c.kind}\x1f{c.constraint}\x1f{c.action}\x1f{'|'.join(c.key)}\n".encode())
    return h.hexdigest()
