"""The restore schedule as pure logic: splitting the post-data archive per table, the
dependencies (rows before indexes, indexes before the foreign keys that need them, the rest
last) and the table locks that keep two workers from blocking each other."""

from __future__ import annotations

from ptool_ops.backup import restore_plan
from ptool_ops.backup.restore_plan import Task

TABLES = {"s.big", "s.small", "s.other"}

# (pg_restore -l line, its SQL) as pg_restore prints them for a post-data archive
ENTRIES = [
    (
        "11; 2606 101 CONSTRAINT s big big_pkey owner",
        "ALTER TABLE ONLY s.big\n    ADD CONSTRAINT big_pkey PRIMARY KEY (id);",
    ),
    (
        "12; 2606 102 CONSTRAINT s small small_key owner",
        "ALTER TABLE ONLY s.small\n    ADD CONSTRAINT small_key UNIQUE (tenant_id, id);",
    ),
    (
        "13; 1259 103 INDEX s big_when_idx owner",
        "CREATE INDEX big_when_idx ON s.big USING btree (tenant_id, lower(period));",
    ),
    (
        "14; 2606 104 CONSTRAINT s big big_no_overlap owner",
        "ALTER TABLE ONLY s.big\n    ADD CONSTRAINT big_no_overlap EXCLUDE USING gist "
        "(a WITH =, p WITH &&);",
    ),
    (
        "15; 2620 105 TRIGGER s big big_touch owner",
        "CREATE TRIGGER big_touch BEFORE UPDATE ON s.big FOR EACH ROW EXECUTE FUNCTION s.f();",
    ),
    (
        "16; 2606 106 FK CONSTRAINT s big big_small_fk owner",
        "ALTER TABLE ONLY s.big\n    ADD CONSTRAINT big_small_fk FOREIGN KEY (tenant_id, "
        "small_id) REFERENCES s.small(tenant_id, id);",
    ),
    (
        "17; 0 107 ROW SECURITY s big owner",
        "ALTER TABLE s.big ENABLE ROW LEVEL SECURITY;",
    ),
]


def _listing(entries: list[tuple[str, str]]) -> str:
    return ";\n; Archive created at ...\n;\n" + "".join(line + "\n" for line, _ in entries)


def _script(entries: list[tuple[str, str]]) -> str:
    out = ["--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET lock_timeout = 0;\n"]
    for line, sql in entries:
        kind_schema_name_owner = line.split(" ", 3)[3]
        for kind in ("FK CONSTRAINT", "ROW SECURITY", "CONSTRAINT", "INDEX", "TRIGGER"):
            if kind_schema_name_owner.startswith(kind + " "):
                break
        schema, rest = kind_schema_name_owner[len(kind) + 1 :].split(" ", 1)
        name, owner = rest.rsplit(" ", 1)
        out.append(
            f"--\n-- Name: {name}; Type: {kind}; Schema: {schema}; Owner: {owner}\n--\n\n"
            f"SET default_tablespace = '';\n\n{sql}\n\n\n"
        )
    out.append("--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n")
    return "".join(out)


def _plan(entries: list[tuple[str, str]] = ENTRIES) -> restore_plan.PostPlan:
    return restore_plan.split_post_data(_listing(entries), _script(entries), TABLES)


def test_indexes_constraints_and_foreign_keys_are_placed_per_table() -> None:
    plan = _plan()
    assert not plan.whole
    placed = [(i.kind, i.table, i.references) for i in plan.items]
    assert placed == [
        ("CONSTRAINT", "s.big", None),
        ("CONSTRAINT", "s.small", None),
        ("INDEX", "s.big", None),
        ("CONSTRAINT", "s.big", None),
        ("FK CONSTRAINT", "s.big", "s.small"),
    ]
    # the access method each build uses: what the cost model weighs
    assert [i.method for i in plan.items] == ["btree", "btree", "btree", "gist", "btree"]
    # triggers, row security: restored last, by pg_restore, in the archive's order
    assert [line.split(";")[0] for line in plan.rest] == ["15", "17"]


def test_quoted_names_are_unquoted() -> None:
    entries = [
        (
            '21; 1259 201 INDEX s "Odd idx" owner',
            'CREATE UNIQUE INDEX "Odd idx" ON "s"."small" USING btree ("Id");',
        )
    ]
    plan = _plan(entries)
    assert [(i.kind, i.table) for i in plan.items] == [("INDEX", "s.small")]


def test_a_listing_that_does_not_pair_with_the_sql_restores_it_all_last() -> None:
    plan = restore_plan.split_post_data(_listing(ENTRIES), _script(ENTRIES[:-1]), TABLES)
    assert plan.whole and not plan.items and len(plan.rest) == len(ENTRIES)
    tasks = restore_plan.post_tasks(plan, {"s.big"}, {})
    assert [t.name for t in tasks] == [restore_plan.REST]
    assert tasks[0].deps == {restore_plan.DATA, "load:s.big"}


def test_unknown_tables_and_unparsed_sql_stay_in_the_rest() -> None:
    entries = [
        (
            "31; 1259 301 INDEX s part_idx owner",
            "CREATE INDEX part_idx ON ONLY s.parted USING btree (id);",
        ),
        (
            "32; 2606 302 FK CONSTRAINT s big big_parted_fk owner",
            "ALTER TABLE ONLY s.big\n    ADD CONSTRAINT big_parted_fk FOREIGN KEY (p) "
            "REFERENCES s.parted(id);",
        ),
        (
            "33; 1259 303 INDEX s elsewhere_idx owner",
            "CREATE INDEX elsewhere_idx ON s.unknown USING btree (id);",
        ),
    ]
    plan = _plan(entries)
    assert plan.items == []
    assert [line.split(";")[0] for line in plan.rest] == ["31", "32", "33"]


def test_a_foreign_key_to_a_table_with_an_unplaced_index_waits_for_the_rest() -> None:
    entries = [
        (
            "41; 1259 401 INDEX s small_odd_idx owner",
            "CREATE INDEX small_odd_idx ON ONLY s.small USING btree (id);",
        ),
        ENTRIES[5],  # big → small
    ]
    plan = _plan(entries)
    assert plan.items == []
    assert [line.split(";")[0] for line in plan.rest] == ["41", "16"]


def _tasks() -> dict[str, Task]:
    plan = _plan()
    tasks = restore_plan.post_tasks(plan, {"s.big"}, {"s.big": 100, "s.small": 1})
    return {t.name: t for t in tasks}


def test_dependencies_rows_then_indexes_then_foreign_keys_then_the_rest() -> None:
    tasks = _tasks()
    assert tasks["post:0"].deps == {restore_plan.DATA, "load:s.big"}  # big_pkey
    assert tasks["post:1"].deps == {restore_plan.DATA}  # small: loaded with the schema
    fk = tasks["post:4"]
    assert fk.deps == {
        restore_plan.DATA,
        "load:s.big",
        "post:0",  # big_pkey
        "post:2",  # big_when_idx
        "post:3",  # big_no_overlap
        "post:1",  # small_key: the referenced unique constraint
    }
    assert fk.locks == {
        "s.big": restore_plan.SHARE_ROW_EXCLUSIVE,
        "s.small": restore_plan.SHARE_ROW_EXCLUSIVE,
    }
    rest = tasks[restore_plan.REST]
    assert rest.everything
    assert rest.deps == {restore_plan.DATA, "load:s.big", *(f"post:{n}" for n in range(5))}


def test_locks_keep_conflicting_work_apart() -> None:
    tasks = _tasks()
    pkey, index, gist = tasks["post:0"], tasks["post:2"], tasks["post:3"]
    count = Task("count:s.big", "validate", locks={"s.big": restore_plan.ACCESS_SHARE})
    other = Task("count:s.small", "validate", locks={"s.small": restore_plan.ACCESS_SHARE})
    assert restore_plan.conflicts(pkey, index) and restore_plan.conflicts(gist, pkey)
    assert restore_plan.conflicts(pkey, count) and not restore_plan.conflicts(index, count)
    assert not restore_plan.conflicts(gist, other)
    assert restore_plan.conflicts(tasks["post:4"], index)  # FK vs an index build on its table
    assert not restore_plan.conflicts(tasks["post:4"], count)
    assert restore_plan.conflicts(tasks[restore_plan.REST], other)


def _simulate(tasks: list[Task], jobs: int, length: dict[str, int]) -> list[tuple[int, int, str]]:
    """Run ``tasks`` on ``jobs`` simulated workers: (start, end, name) per task."""
    pending, running, done = list(tasks), {}, set()  # type: ignore[var-annotated]
    clock, log = 0, []
    while pending or running:
        while len(running) < jobs:
            task = restore_plan.pick(pending, running.values(), done)
            if task is None:
                break
            pending.remove(task)
            running[(clock + length.get(task.name, 1), task.name)] = task
        assert running, "the schedule is stuck"
        end, name = min(running)
        task = running.pop((end, name))
        log.append((end - length.get(name, 1), end, name))
        done.add(name)
        clock = end
    return log


def test_one_tables_indexes_are_built_while_another_table_still_loads() -> None:
    plan = _plan()
    posts = restore_plan.post_tasks(plan, {"s.big", "s.other"}, {"s.big": 100, "s.small": 1})
    loads = [
        Task(restore_plan.DATA, "restore-data"),
        Task(
            "load:s.big", "restore-data", frozenset({restore_plan.DATA}), {"s.big": 3}, (0, 0, -1)
        ),
        Task(
            "load:s.other",
            "restore-data",
            frozenset({restore_plan.DATA}),
            {"s.other": 3},
            (0, 0, -2),
        ),
    ]
    length = {"load:s.big": 5, "load:s.other": 20, "post:3": 8}
    log = _simulate(loads + posts, 2, length)
    at = {name: (start, end) for start, end, name in log}
    assert at["post:0"][0] < at["load:s.other"][1]  # big's index built during other's load
    assert at["post:3"][0] < at["load:s.other"][1]
    for name in ("post:0", "post:1", "post:2", "post:3"):
        assert at[name][1] <= at["post:4"][0]  # the FK after the indexes it needs
    assert at[restore_plan.REST][0] == max(end for _, end, name in log if name != restore_plan.REST)
    # no two conflicting tasks ever ran at once
    by_name = {t.name: t for t in loads + posts}
    for s1, e1, n1 in log:
        for s2, e2, n2 in log:
            if n1 < n2 and s1 < e2 and s2 < e1:
                assert not restore_plan.conflicts(by_name[n1], by_name[n2]), (n1, n2)


def _load_order(entries: list[tuple[str, str]]) -> tuple[list[Task], list[Task]]:
    """Loads and post-data tasks of s.big (100 bytes) and s.other (a 300-byte stream)."""
    plan = _plan(entries)
    sizes = {"s.big": 100, "s.small": 1, "s.other": 300}
    loads = restore_plan.load_tasks({"s.big": 100, "s.other": 300}, plan, sizes)
    return loads, restore_plan.post_tasks(plan, {"s.big", "s.other"}, sizes)


def test_a_table_whose_builds_outweigh_every_other_load_loads_first_and_alone() -> None:
    # big's exclusion constraint (GiST) is ~25 B-tree builds: more than loading s.other
    loads, _ = _load_order(ENTRIES)
    assert [t.name for t in loads] == ["load:s.big", "load:s.other"]
    big, other = loads
    assert big.locks[restore_plan.LOADS] == restore_plan.ACCESS_EXCLUSIVE
    assert restore_plan.conflicts(big, other)
    assert big.priority < other.priority


def test_without_a_dominant_build_loads_run_side_by_side_longest_chain_first() -> None:
    btree_only = [entry for entry in ENTRIES if "gist" not in entry[1]]
    loads, _ = _load_order(btree_only)
    assert [t.name for t in loads] == ["load:s.other", "load:s.big"]  # 4 x 300 > 4 x 100 + 230
    assert not restore_plan.conflicts(*loads)


def test_the_long_build_starts_as_soon_as_its_rows_are_in_and_other_loads_run_beside_it() -> None:
    loads, posts = _load_order(ENTRIES)
    data = Task(restore_plan.DATA, "restore-data")
    gist = next(t for t in posts if t.priority == min(p.priority for p in posts))
    assert gist.name == "post:3"  # the most expensive build is taken first
    length = {"load:s.big": 4, "load:s.other": 6, "post:3": 13}
    log = _simulate([data, *loads, *posts], 2, length)
    at = {name: (start, end) for start, end, name in log}
    assert at["load:s.other"][0] == at["load:s.big"][1]  # not beside big's load
    assert at["post:3"][0] == at["load:s.big"][1]  # the GiST build right after big's rows
    assert at["load:s.other"][1] < at["post:3"][1]  # other loads during the build
