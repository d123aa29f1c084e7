"""Tenant recovery end to end, as the deployed roles: on the local environment (a copy
restored beside live by point-in-time restore) and on Neon (the fake API, a real database
behind the branch's endpoint).

The scenario: seed, base backup, note T; then one tenant's bookings are deleted and others
updated, and new bookings arrive for it and for another tenant -- one of them a confirmed
booking in the very slot of a deleted one (an overlap conflict). Recovery must bring back
every deleted row with its original id and values, leave the updated rows as they are now
(or as of T with --restore-changed), keep everything written since, touch no other tenant,
keep the invariants, show the recovery in the event stream -- and plan nothing the second
time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ptool_ops import pg, privileges
from ptool_ops.booking.invariants import run_invariants
from ptool_ops.pitr.target import Target
from tests.conftest import Cli, trail_events
from tests.iac.fakes import FakeNeon, serve
from tests.pitr.conftest import PitrEnv
from tests.pitr.neon_support import make_project, neon_env

TABLES = ("tenants", "users", "artists", "projects", "bookings", "events")


def _settle(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TIME ZONE 'UTC'")


def checksums(conn: psycopg.Connection[Any]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per tenant, per tenant table: (rows, sum of row hashes)."""
    _settle(conn)
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for table in TABLES:
        column = "id" if table == "tenants" else "tenant_id"
        query = sql.SQL(
            "SELECT {c}::text, count(*), sum(hashtextextended(t::text, 0))::text"
            " FROM {t} AS t GROUP BY 1"
        ).format(c=sql.Identifier(column), t=sql.Identifier("booking", table))
        for tenant, n, h in conn.execute(query).fetchall():
            found.setdefault(str(tenant), {})[table] = (int(n), int(h))
    return found


def bookings(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, dict[str, Any]]:
    _settle(conn)
    rows = conn.execute(
        "SELECT id::text, to_jsonb(b) FROM booking.bookings b WHERE id = ANY(%s::uuid[])", (ids,)
    ).fetchall()
    return {str(i): dict(r) for i, r in rows}


def book(
    conn: psycopg.Connection[Any],
    tenant: str,
    artist: str,
    project: str,
    period: str,
    status: str,
) -> str:
    """A booking and its events, as the booking API writes them."""
    row = conn.execute(
        "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period, status)"
        " VALUES (%s, %s, %s, %s::tstzrange, %s) RETURNING id::text",
        (tenant, artist, project, period, status),
    ).fetchone()
    assert row is not None
    events = [("booking.created", {"status": "tentative"})]
    if status == "confirmed":
        events.append(("booking.confirmed", {}))
    for version, (kind, payload) in enumerate(events, start=1):
        conn.execute(
            "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
            " VALUES (%s, %s, %s, %s, %s)",
            (tenant, row[0], version, kind, json.dumps(payload)),
        )
    return str(row[0])


@dataclass
class Damage:
    tenant: str
    slug: str
    as_of: str
    deleted: dict[str, dict[str, Any]]  # as of T
    updated: dict[str, dict[str, Any]]  # as of T
    victim: str  # a deleted confirmed booking ...
    overlap: str  # ... whose slot a booking made since took
    new: list[str]
    others_before: dict[str, dict[str, tuple[int, int]]]
    state: dict[str, Any] = field(default_factory=dict)


def damage(conn: psycopg.Connection[Any], *, deleted: int, updated: int) -> tuple[Any, ...]:
    """Note T, then delete and update some of the biggest tenant's bookings and write new
    ones for it and another tenant; returns what was done."""
    row = conn.execute(
        "SELECT b.tenant_id::text, t.slug FROM booking.bookings b"
        " JOIN booking.tenants t ON t.id = b.tenant_id GROUP BY 1, 2 ORDER BY count(*) DESC"
    ).fetchall()
    (tenant, slug), (other, _) = row[0], row[1]
    ids = [
        str(r[0])
        for r in conn.execute(
            "SELECT id FROM booking.bookings WHERE tenant_id = %s ORDER BY id", (tenant,)
        ).fetchall()
    ]
    gone, changed = ids[10 : 10 + deleted], ids[10 + deleted : 10 + deleted + updated]
    victim_row = conn.execute(
        "SELECT id::text, artist_id::text, project_id::text, period::text FROM booking.bookings"
        " WHERE id = ANY(%s::uuid[]) AND status = 'confirmed' ORDER BY id LIMIT 1",
        (gone,),
    ).fetchone()
    assert victim_row is not None
    then_deleted, then_updated = bookings(conn, gone), bookings(conn, changed)
    time.sleep(0.3)
    stamp = conn.execute("SELECT now()").fetchone()
    assert stamp is not None
    time.sleep(0.3)
    conn.execute("DELETE FROM booking.bookings WHERE id = ANY(%s::uuid[])", (gone,))
    conn.execute(
        "UPDATE booking.bookings SET note = 'changed after T' WHERE id = ANY(%s::uuid[])",
        (changed,),
    )
    victim, artist, project, period = victim_row
    overlap = book(conn, tenant, artist, project, period, "confirmed")
    new = [overlap]
    for who in (tenant, other):
        parts = conn.execute(
            "SELECT a.id::text, p.id::text FROM booking.artists a JOIN booking.projects p"
            " USING (tenant_id) WHERE a.tenant_id = %s LIMIT 1",
            (who,),
        ).fetchone()
        assert parts is not None
        for n in range(3):
            start = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=n)
            span = f"[{start.isoformat()},{(start + timedelta(hours=8)).isoformat()})"
            new.append(book(conn, who, parts[0], parts[1], span, "tentative"))
    return tenant, slug, stamp[0].isoformat(), then_deleted, then_updated, victim, overlap, new


@pytest.fixture(scope="module")
def scene(pitr_env: PitrEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Damage]:
    cli = pitr_env.configure(Cli(tmp_path_factory.mktemp("recover"), pytest.MonkeyPatch()))
    assert cli("local seed --tenants 4 --bookings 800").exit_code == 0
    made = cli("pitr base-backup -o json")
    assert made.exit_code == 0, made.output
    with pitr_env.owner() as conn:
        tenant, slug, as_of, gone, changed, victim, overlap, new = damage(
            conn, deleted=40, updated=10
        )
        others = {k: v for k, v in checksums(conn).items() if k != tenant}
    pitr_env.wait_archived()
    scene = Damage(tenant, slug, as_of, gone, changed, victim, overlap, new, others)
    yield scene
    kept = scene.state.get("clone")
    if kept:
        assert cli(f"pitr drop {kept} -y").exit_code == 0


@pytest.fixture
def run(pitr_env: PitrEnv, cli: Cli) -> Cli:
    return pitr_env.configure(cli)


def _untouched(pitr_env: PitrEnv, scene: Damage) -> None:
    with pitr_env.owner() as conn:
        now = {k: v for k, v in checksums(conn).items() if k != scene.tenant}
    assert now == scene.others_before


def test_the_plan_counts_every_category_and_shows_the_overlap(
    pitr_env: PitrEnv, scene: Damage, run: Cli
) -> None:
    result = run(f"recover tenant {scene.slug} --as-of {scene.as_of} --keep-clone -o json")
    assert result.exit_code == 1, result.output  # a conflict found and not applied
    data = result.json()
    scene.state["clone"] = data["source"]["id"]
    assert data["source"]["made"] and data["source"]["kept"] and not data["source"]["removed"]
    assert data["tenant_id"] == scene.tenant and data["blocked"] is True
    assert data["applied"] is None
    tables = {t["table"]: t for t in data["plan"]["tables"]}
    assert list(tables) == [
        "booking.tenants",
        "booking.artists",
        "booking.projects",
        "booking.users",
        "booking.bookings",
    ]  # foreign-key order: parents first
    b = tables["booking.bookings"]
    assert (b["missing"], b["changed"], b["new"]) == (40, 10, 4)
    assert (b["insert"], b["update"], b["conflicted"]) == (39, 0, 1)
    assert b["live_rows"] == b["source_rows"] - 40 + 4
    for name in ("booking.tenants", "booking.artists", "booking.projects", "booking.users"):
        assert (tables[name]["missing"], tables[name]["changed"], tables[name]["new"]) == (0, 0, 0)
    (conflict,) = b["conflicts"]
    assert conflict["kind"] == "exclusion" and conflict["constraint"] == "bookings_no_overlap"
    assert conflict["key"] == [scene.victim] and conflict["row"]["id"] == scene.victim
    assert conflict["other"]["id"] == scene.overlap  # both rows
    assert conflict["other"]["period"] == conflict["row"]["period"]
    assert len(b["samples"]["missing"]) == 5 and len(b["samples"]["changed"]) == 5
    sample = b["samples"]["changed"][0]
    assert (
        sample["now"]["note"] == "changed after T"
        and sample["as_of"]["note"] != sample["now"]["note"]
    )
    assert any("leave 10 changed row(s)" in a for a in data["plan"]["actions"])
    _untouched(pitr_env, scene)

    text = run(f"recover tenant {scene.tenant} --from {scene.state['clone']}")
    assert text.exit_code == 1
    assert "bookings_no_overlap" in text.output and "booking.bookings" in text.output
    assert "nothing was applied" in text.output


def test_a_conflict_stops_the_apply_and_nothing_is_written(
    pitr_env: PitrEnv, scene: Damage, run: Cli
) -> None:
    with pitr_env.owner() as conn:
        before = checksums(conn)[scene.tenant]
    result = run(f"recover tenant {scene.tenant} --from {scene.state['clone']} --apply -o json")
    assert result.exit_code == 1, result.output
    data = result.json()
    assert data["applied"]["applied"] is False and "in conflict" in data["applied"]["reason"]
    with pitr_env.owner() as conn:
        assert checksums(conn)[scene.tenant] == before
    assert not data["source"]["made"]  # --from: never removed


def test_skip_conflicts_brings_back_the_rest_as_they_were(
    pitr_env: PitrEnv, scene: Damage, run: Cli
) -> None:
    result = run(
        f"recover tenant {scene.tenant} --from {scene.state['clone']} --apply --skip-conflicts"
        " -o json"
    )
    assert result.exit_code == 0, result.output
    data = result.json()
    applied = data["applied"]
    assert applied["applied"] is True
    assert applied["inserted"]["booking.bookings"] == 39 and applied["events"] == 39
    back = [i for i in scene.deleted if i != scene.victim]
    with pitr_env.owner() as conn:
        now = bookings(conn, [*scene.deleted, *scene.updated, *scene.new])
        report = run_invariants(conn)
        streams = conn.execute(
            "SELECT stream_id::text, version, type, payload,"
            " (SELECT max(version) FROM booking.events p WHERE p.stream_id = e.stream_id"
            "  AND p.type <> 'booking.recovered')"
            " FROM booking.events e WHERE type = 'booking.recovered'"
        ).fetchall()
    for booking_id in back:  # every deleted row: its original id and values
        assert now[booking_id] == scene.deleted[booking_id]
    assert scene.victim not in now  # in conflict: not written
    for booking_id, then in scene.updated.items():  # left as they are now
        assert now[booking_id]["note"] == "changed after T" != then["note"]
    assert all(i in now for i in scene.new)  # everything written since stays
    assert report.ok, report.to_dict()
    assert sorted(s for s, *_ in streams) == sorted(back)  # one event per restored booking
    for _, version, _, payload, previous in streams:
        assert version == previous + 1  # the stream goes on from its last event
        assert payload["as_of"] == data["as_of"] and payload["action"] == "reinserted"
        assert payload["plan"] == data["plan"]["digest"]
        assert payload["source"] == f"pitr copy {scene.state['clone']}"
        assert payload["state"]["status"] in ("tentative", "confirmed", "cancelled")
    _untouched(pitr_env, scene)
    records = [r for r in run.audit_events() if r["action"] == "recover.tenant"]
    assert records[-1]["outcome"] == "ok"
    assert records[-1]["details"]["plan_digest"] == data["plan"]["digest"]


def test_once_the_conflict_is_resolved_the_last_row_comes_back_and_then_nothing(
    pitr_env: PitrEnv, scene: Damage, run: Cli
) -> None:
    with pitr_env.owner() as conn:  # the planner cancels the booking made in the slot
        conn.execute(
            "UPDATE booking.bookings SET status = 'cancelled' WHERE id = %s", (scene.overlap,)
        )
    result = run(f"recover tenant {scene.tenant} --from {scene.state['clone']} --apply -o json")
    assert result.exit_code == 0, result.output
    assert result.json()["applied"]["inserted"] == {"booking.bookings": 1}
    with pitr_env.owner() as conn:
        assert bookings(conn, [scene.victim])[scene.victim] == scene.deleted[scene.victim]

    restores = pitr_env.restores
    again = run(f"recover tenant {scene.tenant} --as-of {scene.as_of} -o json")  # a new copy
    assert again.exit_code == 0, again.output
    data = again.json()
    assert data["plan"]["empty"] is True and data["plan"]["insert"] == 0
    assert data["plan"]["conflicts"] == 0
    assert data["source"]["made"] and data["source"]["removed"]
    assert not (restores / data["source"]["id"]).exists()
    _untouched(pitr_env, scene)


def test_restore_changed_brings_the_updated_rows_back_to_t(
    pitr_env: PitrEnv, scene: Damage, run: Cli
) -> None:
    clone = scene.state["clone"]
    result = run(f"recover tenant {scene.tenant} --from {clone} --restore-changed --apply -o json")
    assert result.exit_code == 0, result.output
    applied = result.json()["applied"]
    assert applied["updated"] == {"booking.bookings": 10}
    with pitr_env.owner() as conn:
        now = bookings(conn, list(scene.updated))
        kinds = conn.execute(
            "SELECT count(*) FROM booking.events WHERE type = 'booking.recovered'"
            " AND payload->>'action' = 'restored'"
        ).fetchone()
        assert run_invariants(conn).ok
    for booking_id, then in scene.updated.items():
        # as of T, but updated_at: the schema's trigger records when the row last changed
        assert {k: v for k, v in now[booking_id].items() if k != "updated_at"} == {
            k: v for k, v in then.items() if k != "updated_at"
        }
    assert kinds == (10,)
    again = run(f"recover tenant {scene.tenant} --from {clone} --restore-changed -o json")
    assert again.exit_code == 0 and again.json()["plan"]["empty"] is True
    _untouched(pitr_env, scene)


def test_what_recovery_refuses(scene: Damage, run: Cli) -> None:
    clone = scene.state["clone"]
    events = run(f"recover tenant {scene.tenant} --from {clone} --tables events")
    assert events.exit_code == 2 and "append-only event store" in events.output
    unknown = run(f"recover tenant no-such-tenant --from {clone}")
    assert unknown.exit_code == 2 and "there is no tenant" in unknown.output
    missing = run(f"recover tenant {scene.tenant} --from 20200101T000000Z-abcd")
    assert missing.exit_code == 3
    neither = run(f"recover tenant {scene.tenant}")
    assert neither.exit_code == 2 and "--as-of" in neither.output
    other_point = run(f"recover tenant {scene.tenant} --from {clone} --as-of 2020-01-01T00:00:00Z")
    assert other_point.exit_code == 2 and "not time 2020-01-01" in other_point.output
    only = run(f"recover tenant {scene.tenant} --from {clone} --tables bookings -o json")
    assert only.exit_code == 0
    assert [t["table"] for t in only.json()["plan"]["tables"]] == ["booking.bookings"]


def test_a_protected_environment_asks_and_a_stale_plan_is_refused(
    pitr_env: PitrEnv, scene: Damage, run: Cli, tmp_path: Path
) -> None:
    from ptool_ops import recover
    from ptool_ops.environment import Environment
    from ptool_ops.errors import OperationFailed
    from ptool_ops.settings import EnvironmentSettings

    clone = scene.state["clone"]
    run.write_config(f'[environments.local]\nlocal_dir = "{pitr_env.local}"\nprotected = true\n')
    asked = run(f"recover tenant {scene.tenant} --from {clone} --apply")
    assert asked.exit_code == 7 and "needs confirmation" in asked.output
    settings = EnvironmentSettings(
        name="local", kind="local", local_dir=pitr_env.local, audit_dir=tmp_path
    )
    env = Environment(settings)
    before = trail_events(env)
    with (
        recover.opened(env, as_of=None, from_id=clone) as source,
        pytest.raises(OperationFailed, match="live changed since the plan"),
    ):
        recover.apply_tenant(env, source, scene.tenant, expect_digest="0" * 64)
    assert trail_events(env) == before  # nothing was done: nothing recorded


def test_a_parent_gone_and_a_unique_key_taken_are_conflicts_with_both_rows(
    pitr_env: PitrEnv, scene: Damage, run: Cli
) -> None:
    with pitr_env.owner() as conn:  # after T: an artist removed with its bookings, and a
        artist = conn.execute(  # user replaced by a new one with the same email
            "SELECT artist_id::text, count(*) FROM booking.bookings WHERE tenant_id = %s"
            " AND id <> ALL(%s::uuid[]) GROUP BY 1 ORDER BY 2 LIMIT 1",
            (scene.tenant, [*scene.deleted, *scene.updated, *scene.new]),
        ).fetchone()
        user = conn.execute(
            "SELECT id::text, email FROM booking.users WHERE tenant_id = %s ORDER BY id LIMIT 1",
            (scene.tenant,),
        ).fetchone()
        assert artist is not None and user is not None
        at_t = conn.execute(  # its bookings but those made since T
            "SELECT count(*) FROM booking.bookings WHERE artist_id = %s AND id <> ALL(%s::uuid[])",
            (artist[0], scene.new),
        ).fetchone()
        assert at_t is not None
        conn.execute("DELETE FROM booking.bookings WHERE artist_id = %s", (artist[0],))
        conn.execute("DELETE FROM booking.artists WHERE id = %s", (artist[0],))
        conn.execute("DELETE FROM booking.users WHERE id = %s", (user[0],))
        conn.execute(
            "INSERT INTO booking.users (tenant_id, email, name) VALUES (%s, %s, 'Taken')"
            " RETURNING id::text",
            (scene.tenant, user[1]),
        )
    clone = scene.state["clone"]
    only = run(f"recover tenant {scene.tenant} --from {clone} --tables bookings,users -o json")
    assert only.exit_code == 1, only.output
    plan = only.json()["plan"]
    tables = {t["table"]: t for t in plan["tables"]}
    orphans = tables["booking.bookings"]["conflicts"]
    assert len(orphans) == at_t[0] and {c["kind"] for c in orphans} == {"foreign_key"}
    assert orphans[0]["constraint"] == "bookings_artist_fk"
    assert orphans[0]["other"]["id"] == artist[0]  # the parent as it was at T
    assert "not among the tables recovered" in orphans[0]["detail"]
    (taken,) = tables["booking.users"]["conflicts"]
    assert (taken["kind"], taken["constraint"]) == ("unique", "users_tenant_email_key")
    assert taken["row"]["id"] == user[0] and taken["other"]["name"] == "Taken"

    every = run(f"recover tenant {scene.tenant} --from {clone} -o json")  # artists too
    assert every.exit_code == 1
    tables = {t["table"]: t for t in every.json()["plan"]["tables"]}
    assert tables["booking.artists"]["insert"] == 1
    assert tables["booking.bookings"]["insert"] == at_t[0]
    assert tables["booking.bookings"]["conflicts"] == []
    assert len(tables["booking.users"]["conflicts"]) == 1


# --- Neon ------------------------------------------------------------------------------------


@pytest.fixture
def fake_neon() -> Iterator[FakeNeon]:
    fake = FakeNeon()
    with serve(fake) as url:
        fake.url = url
        yield fake
    assert fake.violations == []


def _database(pitr_env: PitrEnv, name: str, template: str) -> str:
    with pitr_env.owner("postgres") as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        pg.copy_database_grants(conn, template, name)
    return pitr_env.env.facts.role_url(privileges.OWNER, name)


def _drop(pitr_env: PitrEnv, name: str) -> None:
    with pitr_env.owner("postgres") as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_the_same_flow_on_neon_through_a_branch_at_the_point(
    pitr_env: PitrEnv, scene: Damage, fake_neon: FakeNeon, tmp_path: Path
) -> None:
    """Live and the branch's compute are two real databases: the branch's holds live as it
    was at the point (a copy made before the damage)."""
    from ptool_ops import recover

    live_url = _database(pitr_env, "neon_live", "booking")
    try:
        branch_url = _database(pitr_env, "neon_branch", "neon_live")
        with psycopg.connect(live_url, autocommit=True) as conn:
            tenant, _, _, gone, _, victim, overlap, _ = damage(conn, deleted=6, updated=2)
            others = {k: v for k, v in checksums(conn).items() if k != tenant}
        project = make_project(fake_neon, age=timedelta(days=30))
        fake_neon.uri_for = lambda branch, role, db: (
            branch_url if branch["id"] != project[1] else None
        )
        env = neon_env(fake_neon, project, database_url=live_url, audit_dir=tmp_path)
        point = Target("time", time=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1))

        done = recover.recover_tenant(
            env, tenant, as_of=point, apply_plan=True, skip_conflicts=True, keep_clone=True
        )
        sent = [
            b for m, p, b in fake_neon.request_bodies if m == "POST" and p.endswith("/branches")
        ]
        assert sent[-1]["branch"]["parent_timestamp"] == point.time.isoformat().replace(
            "+00:00", "Z"
        )  # type: ignore[union-attr]
        assert done.source.kind == "neon branch" and done.source.kept
        assert done.applied is not None and done.applied.applied
        assert done.applied.inserted == {"booking.bookings": 5}
        (conflict,) = done.plan.table("bookings").conflicts
        assert (conflict.key, conflict.other and conflict.other["id"]) == ([victim], overlap)
        with psycopg.connect(live_url, autocommit=True) as conn:
            now = bookings(conn, list(gone))
            assert {k: v for k, v in checksums(conn).items() if k != tenant} == others
            assert run_invariants(conn).ok
        assert all(now[i] == gone[i] for i in gone if i != victim)
        (record,) = trail_events(env)
        assert record["action"] == "recover.tenant" and record["outcome"] == "ok"

        # the kept branch, given with --from: the second plan writes nothing
        again = recover.recover_tenant(env, tenant, from_id=done.source.id)
        assert again.plan.inserts == 0 and again.plan.conflict_count == 1
        assert done.source.id in fake_neon.branches  # --from: never deleted
        plain = recover.recover_tenant(env, tenant, as_of=point)  # made, then deleted
        assert plain.source.removed and plain.source.id not in fake_neon.branches
    finally:
        _drop(pitr_env, "neon_branch")
        _drop(pitr_env, "neon_live")
