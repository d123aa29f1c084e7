"""Restore scheduling: which piece of a restore may run when, as pure logic.

A restore is a set of tasks — load the schema object, load each big table's stream, build
each index and constraint of the post-data archive, count rows, run the invariants — with
dependencies and table locks. A pool of ``jobs`` workers takes the first ready task (by
priority) whose locks do not conflict with those of a running task, as ``pg_restore -j``
does: one table's indexes are built while another table's rows are still loading.

The post-data archive is split with ``pg_restore -l`` (its table of contents) and
``pg_restore -f -`` (its SQL, one ``-- Name: ...; Type: ...`` block per entry). Only three
kinds of entries are scheduled on their own, those whose SQL names their table(s):

* ``INDEX`` — ``CREATE [UNIQUE] INDEX i ON s.t USING ...``: after t's rows (SHARE lock);
* ``CONSTRAINT`` — ``ALTER TABLE ONLY s.t ADD CONSTRAINT c PRIMARY KEY|UNIQUE|EXCLUDE``:
  after t's rows (ACCESS EXCLUSIVE lock);
* ``FK CONSTRAINT`` — ``ALTER TABLE ONLY s.t ADD CONSTRAINT c FOREIGN KEY ... REFERENCES
  s.r(...)``: after the rows and every index/constraint of both t and r (the referenced
  unique index must exist; SHARE ROW EXCLUSIVE on both).

Everything else (triggers, row security, policies, grants, entries on partitioned tables,
anything not parsed with certainty) stays in one "rest" list restored last with
``pg_restore -j N -L``, which orders it by the archive's own dependencies. If the listing
and the SQL do not pair up, the whole archive is "rest": the old, slower, always-correct
order.

Which table loads first comes from a small cost model (:data:`LOAD_COST`,
:data:`BUILD_COST`): a table's chain is its load plus every build on it, and the longest
chain starts first. When one table's builds alone outweigh loading every other big table
(an exclusion constraint or GiST index is ~25 times a B-tree's build), that table loads
alone: its long build then starts as early as the rows allow, and the other loads run
beside the build instead of slowing down the load that gates it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

# table lock modes (PostgreSQL's numbering) and which modes each conflicts with
ACCESS_SHARE = 1
ROW_EXCLUSIVE = 3
SHARE = 5
SHARE_ROW_EXCLUSIVE = 6
ACCESS_EXCLUSIVE = 8
_CONFLICTS: dict[int, frozenset[int]] = {
    ACCESS_SHARE: frozenset({8}),
    ROW_EXCLUSIVE: frozenset({5, 6, 7, 8}),
    SHARE: frozenset({3, 4, 6, 7, 8}),
    SHARE_ROW_EXCLUSIVE: frozenset({3, 4, 5, 6, 7, 8}),
    ACCESS_EXCLUSIVE: frozenset(range(1, 9)),
}

DATA = "data"
REST = "post-data:rest"
#: a pseudo-table every big-table load locks: ROW EXCLUSIVE normally (loads run side by
#: side), ACCESS EXCLUSIVE for a table that loads alone
LOADS = "(loads)"


@dataclass
class Task:
    """One unit of restore work. ``locks``: table ("schema.name") → lock mode;
    ``everything``: conflicts with every other task (the final pg_restore run)."""

    name: str
    step: str
    deps: frozenset[str] = frozenset()
    locks: dict[str, int] = field(default_factory=dict)
    priority: tuple[int, int, int] = (0, 0, 0)
    everything: bool = False
    run: Callable[[], None] | None = None


def conflicts(a: Task, b: Task) -> bool:
    if a.everything or b.everything:
        return True
    return any(
        table in b.locks and b.locks[table] in _CONFLICTS[mode] for table, mode in a.locks.items()
    )


def pick(pending: Sequence[Task], running: Iterable[Task], done: set[str]) -> Task | None:
    """The first of ``pending`` (in priority order) whose dependencies are done and whose
    locks do not conflict with a running task's."""
    busy = list(running)
    for task in sorted(pending, key=lambda t: t.priority):
        if task.deps <= done and not any(conflicts(task, other) for other in busy):
            return task
    return None


# --- the post-data archive ------------------------------------------------------------

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QNAME = rf"({_IDENT})\.({_IDENT})"
_INDEX = re.compile(rf"CREATE (?:UNIQUE )?INDEX {_IDENT} ON {_QNAME} USING (\w+) ")
_CONSTRAINT = re.compile(
    rf"ALTER TABLE ONLY {_QNAME}\s+ADD CONSTRAINT {_IDENT} "
    r"(?:PRIMARY KEY|UNIQUE|EXCLUDE USING (\w+)) "
)
_FOREIGN = re.compile(
    rf"ALTER TABLE ONLY {_QNAME}\s+ADD CONSTRAINT {_IDENT} FOREIGN KEY \([^;]*?\) "
    rf"REFERENCES {_QNAME}\("
)
_TOUCHES = re.compile(rf"(?:ON|ALTER TABLE|ALTER INDEX) (?:ONLY )?{_QNAME}")
_INDEX_KINDS = {"INDEX", "CONSTRAINT", "INDEX ATTACH"}
_HEADER = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: (.*)$", re.M)
_ENTRY = re.compile(r"^(\d+); \d+ \d+ (.*)$")


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def _table(schema: str, name: str) -> str:
    return f"{_unquote(schema)}.{_unquote(name)}"


@dataclass(frozen=True)
class PostItem:
    """One post-data entry scheduled on its own: its ``pg_restore -l`` line, its kind
    (``INDEX``, ``CONSTRAINT``, ``FK CONSTRAINT``), its table and (FK) referenced table."""

    line: str
    kind: str
    table: str
    references: str | None = None
    method: str = "btree"  # the index access method an INDEX or CONSTRAINT builds


@dataclass
class PostPlan:
    items: list[PostItem]
    rest: list[str]  # pg_restore -l lines restored last, together
    whole: bool = False  # the listing and the SQL did not pair up: restore it all, last


def entries(listing: str) -> list[str]:
    """The entry lines of ``pg_restore -l`` (comments dropped)."""
    return [line for line in listing.splitlines() if _ENTRY.match(line)]


def split_post_data(listing: str, script: str, tables: set[str]) -> PostPlan:
    """Pair ``pg_restore -l`` with ``pg_restore -f -`` of the same archive and pick the
    entries that can be scheduled per table (``tables``: "schema.name" of the tables the
    restore loads)."""
    lines = entries(listing)
    headers = list(_HEADER.finditer(script))
    if len(headers) != len(lines):
        return PostPlan([], lines, whole=True)
    items: list[PostItem] = []
    rest: list[str] = []
    unplaced: set[str] = set()  # tables with an index or constraint left in the rest
    for n, (line, header) in enumerate(zip(lines, headers, strict=True)):
        name, kind, schema, owner = header.groups()
        described = _ENTRY.match(line)
        assert described is not None
        if described.group(2) != f"{kind} {schema} {name} {owner}":
            return PostPlan([], lines, whole=True)
        end = headers[n + 1].start() if n + 1 < len(headers) else len(script)
        body = _statement(script[header.end() : end])
        item = _classify(line, kind, body, tables)
        if item is not None:
            items.append(item)
            continue
        rest.append(line)
        if kind in _INDEX_KINDS:
            touched = _TOUCHES.search(body)
            unplaced.add(_table(touched.group(1), touched.group(2)) if touched else "*")
    # an FK needs the referenced table's unique index: keep it last, too, if that table
    # (or an unknown one) has an index or constraint in the rest
    placed = []
    for item in items:
        if item.kind == "FK CONSTRAINT" and ("*" in unplaced or item.references in unplaced):
            rest.append(item.line)
        else:
            placed.append(item)
    if len(placed) < len(items):  # keep the archive's order in the rest list
        order = {line: n for n, line in enumerate(lines)}
        rest.sort(key=order.__getitem__)
    return PostPlan(placed, rest)


def _statement(text: str) -> str:
    """An entry's SQL without comments, session settings and psql meta-commands."""
    skip = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\")
    return "\n".join(
        line for line in text.splitlines() if line.strip() and not line.startswith(skip)
    ).strip()


def _classify(line: str, kind: str, body: str, tables: set[str]) -> PostItem | None:
    if body.count(";") != 1 or not body.endswith(";"):
        return None
    if kind == "INDEX" and (m := _INDEX.match(body)):
        table = _table(m.group(1), m.group(2))
        return PostItem(line, kind, table, method=m.group(3).lower()) if table in tables else None
    if kind == "CONSTRAINT" and (m := _CONSTRAINT.match(body)):
        table = _table(m.group(1), m.group(2))
        method = (m.group(3) or "btree").lower()
        return PostItem(line, kind, table, method=method) if table in tables else None
    if kind == "FK CONSTRAINT" and (m := _FOREIGN.match(body)):
        table, ref = _table(m.group(1), m.group(2)), _table(m.group(3), m.group(4))
        if table in tables and ref in tables:
            return PostItem(line, kind, table, ref)
    return None


# --- the cost model -------------------------------------------------------------------

#: relative cost of restore work, per byte, with one B-tree build per byte of its table as
#: the unit; measured on PostgreSQL 18 (2 cores, 1 GB of bookings, docs/backup-repository.md):
#: a COPY per byte of its stream is ~4 B-tree builds, an exclusion constraint on GiST ~25,
#: validating a foreign key ~0.3. GIN and BRIN were not measured: their weights are
#: PostgreSQL's reputation (GIN builds are slow, BRIN builds nearly free).
LOAD_COST = 4.0
BUILD_COST = {"btree": 1.0, "hash": 1.0, "brin": 0.1, "gin": 10.0, "gist": 25.0, "spgist": 25.0}
FK_COST = 0.3


def build_cost(item: PostItem, sizes: dict[str, int]) -> float:
    """The estimated cost of one post-data item (``sizes``: table bytes)."""
    size = sizes.get(item.table, 0)
    if item.kind == "FK CONSTRAINT":
        return FK_COST * size
    return BUILD_COST.get(item.method, 1.0) * size


# --- the task graph -------------------------------------------------------------------


def load_name(table: str) -> str:
    return f"load:{table}"


def load_tasks(streams: dict[str, int], plan: PostPlan, sizes: dict[str, int]) -> list[Task]:
    """One task per table loaded from its own stream (``streams``: table → raw bytes of its
    stream), longest chain (load + builds) first; the first one loads alone when its builds
    outweigh every other load (see the module's docstring)."""
    builds = dict.fromkeys(streams, 0.0)
    for item in plan.items:
        if item.table in builds:
            builds[item.table] += build_cost(item, sizes)
    chain = {table: LOAD_COST * raw + builds[table] for table, raw in streams.items()}
    order = sorted(streams, key=lambda t: (-chain[t], t))
    others = sum(LOAD_COST * streams[t] for t in order[1:])
    alone = len(order) > 1 and builds[order[0]] >= others
    return [
        Task(
            load_name(table),
            "restore-data",
            frozenset({DATA}),
            {
                table: ROW_EXCLUSIVE,
                LOADS: ACCESS_EXCLUSIVE if alone and n == 0 else ROW_EXCLUSIVE,
            },
            (0, n, 0),
        )
        for n, table in enumerate(order)
    ]


def post_tasks(plan: PostPlan, big: set[str], sizes: dict[str, int]) -> list[Task]:
    """Tasks for the post-data items and the rest. ``big``: tables loaded from their own
    stream (task ``load:<table>``); every other table is loaded by task ``data``."""

    def loaded(table: str) -> str:
        return load_name(table) if table in big else DATA

    tasks: list[Task] = []
    builds: dict[str, list[str]] = {}
    for n, item in enumerate(plan.items):
        if item.kind != "FK CONSTRAINT":
            builds.setdefault(item.table, []).append(f"post:{n}")
    for n, item in enumerate(plan.items):
        name = f"post:{n}"
        cost = round(build_cost(item, sizes))
        if item.kind == "FK CONSTRAINT":
            ref = item.references or item.table
            deps = {DATA, loaded(item.table), loaded(ref)}
            deps.update(builds.get(item.table, []), builds.get(ref, []))
            locks = {item.table: SHARE_ROW_EXCLUSIVE, ref: SHARE_ROW_EXCLUSIVE}
            rank = 1
        else:
            deps = {DATA, loaded(item.table)}
            mode = SHARE if item.kind == "INDEX" else ACCESS_EXCLUSIVE
            locks = {item.table: mode}
            rank = 0
        tasks.append(Task(name, "restore-post-data", frozenset(deps), locks, (1, rank, -cost)))
    if plan.rest or plan.whole:
        before = {DATA, *(load_name(t) for t in big), *(t.name for t in tasks)}
        tasks.append(
            Task(REST, "restore-post-data", frozenset(before), {}, (1, 2, 0), everything=True)
        )
    return tasks
