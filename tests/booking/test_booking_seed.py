"""The seed: requested counts, realistic shape, invariants kept, all or nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ptool_ops.booking import seed as seed_module
from ptool_ops.booking.invariants import run_invariants
from ptool_ops.booking.seed import SeedResult, seed

Conn = psycopg.Connection[Any]
TABLES = ("tenants", "users", "artists", "projects", "bookings", "events")
ANCHOR = datetime(2030, 1, 1, tzinfo=UTC)


def _counts(conn: Conn) -> dict[str, int]:
    result = {}
    for table in TABLES:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("booking", table))
        ).fetchone()
        assert row is not None
        result[table] = int(row[0])
    return result


def _constraints(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated"
        " FROM pg_constraint WHERE connamespace = 'booking'::regnamespace ORDER BY 1, 2"
    ).fetchall()


def test_seed_adds_what_was_asked(tx: Conn) -> None:
    tx.execute("COMMENT ON CONSTRAINT bookings_artist_fk ON booking.bookings IS 'same tenant'")
    before = _constraints(tx)
    result = seed(tx, tenants=4, bookings=1000)
    counts = _counts(tx)
    assert (result.tenants, result.bookings) == (4, 1000)
    assert counts == {
        "tenants": result.tenants,
        "users": result.users,
        "artists": result.artists,
        "projects": result.projects,
        "bookings": result.bookings,
        "events": result.events,
    }
    # one created event per booking, a second one for each confirmed or cancelled booking
    decided = tx.execute(
        "SELECT count(*) FROM booking.bookings WHERE status <> 'tentative'"
    ).fetchone()
    assert decided is not None and result.events == 1000 + decided[0]
    assert result.elapsed_s >= 0
    assert _constraints(tx) == before  # foreign keys back, validated, as they were
    comment = tx.execute(
        "SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint"
        " WHERE conname = 'bookings_artist_fk'"
    ).fetchone()
    assert comment == ("same tenant",)
    assert run_invariants(tx).ok


def test_seeded_data_is_realistic(tx: Conn) -> None:
    seed(tx, tenants=3, bookings=2000, seed=1)
    statuses = dict(
        tx.execute("SELECT status, count(*) FROM booking.bookings GROUP BY 1").fetchall()
    )
    assert set(statuses) == {"confirmed", "tentative", "cancelled"}
    assert statuses["confirmed"] > statuses["tentative"] > 0
    # holds overlap confirmed bookings of the same artist now and then, as in real life
    holds_over_confirmed = tx.execute(
        "SELECT count(*) FROM booking.bookings h JOIN booking.bookings c"
        " ON c.artist_id = h.artist_id AND c.period && h.period AND c.id <> h.id"
        " WHERE h.status <> 'confirmed' AND c.status = 'confirmed'"
    ).fetchone()
    assert holds_over_confirmed is not None and holds_over_confirmed[0] > 0
    # every tenant has an owner, users have unique emails, artists several bookings
    owners = tx.execute(
        "SELECT count(DISTINCT tenant_id) FROM booking.users WHERE role = 'owner'"
    ).fetchone()
    assert owners == (3,)
    streams = tx.execute(
        "SELECT b.status, array_agg(e.type ORDER BY e.version)"
        " FROM booking.bookings b JOIN booking.events e ON e.stream_id = b.id"
        " WHERE e.tenant_id = b.tenant_id GROUP BY b.id, b.status"
    ).fetchall()
    assert len(streams) == 2000
    expected = {
        "tentative": ["booking.created"],
        "confirmed": ["booking.created", "booking.confirmed"],
        "cancelled": ["booking.created", "booking.cancelled"],
    }
    assert all(types == expected[status] for status, types in streams)
    payload = tx.execute(
        "SELECT e.payload FROM booking.events e JOIN booking.bookings b ON b.id = e.stream_id"
        " WHERE e.version = 1 LIMIT 1"
    ).fetchone()
    assert payload is not None and set(payload[0]) == {
        "artist_id",
        "project_id",
        "period",
        "status",
    }


def test_seeding_twice_adds_new_tenants_and_keeps_invariants(tx: Conn) -> None:
    first = seed(tx, tenants=3, bookings=500)
    second = seed(tx, tenants=3, bookings=500)  # same seed: same shapes, new ids and slugs
    assert (first.tenants, first.bookings) == (second.tenants, second.bookings)
    counts = _counts(tx)
    assert counts["tenants"] == 6 and counts["bookings"] == 1000
    assert tx.execute("SELECT count(DISTINCT slug) FROM booking.tenants").fetchone() == (6,)
    assert run_invariants(tx).ok


def _calendar(conn: Conn, rng_seed: int) -> list[tuple[Any, ...]]:
    """Seed an empty schema and describe the result without its (fresh) ids."""
    conn.execute("ALTER TABLE booking.events DISABLE TRIGGER events_append_only")
    conn.execute(
        "DELETE FROM booking.events; DELETE FROM booking.bookings; DELETE FROM booking.users;"
        " DELETE FROM booking.artists; DELETE FROM booking.projects; DELETE FROM booking.tenants"
    )
    conn.execute("ALTER TABLE booking.events ENABLE TRIGGER events_append_only")
    seed(conn, tenants=2, bookings=300, seed=rng_seed, anchor=ANCHOR)
    return conn.execute(
        "SELECT t.slug, t.name, count(*), sum(upper(b.period) - lower(b.period)),"
        " min(lower(b.period)), max(upper(b.period)), string_agg(b.status, '' ORDER BY b.id)"
        " FROM booking.bookings b JOIN booking.tenants t ON t.id = b.tenant_id"
        " GROUP BY t.slug, t.name ORDER BY 1"
    ).fetchall()


def test_same_seed_same_calendar(tx: Conn) -> None:
    first = _calendar(tx, 5)
    assert len(first) == 2
    assert _calendar(tx, 5) == first
    assert _calendar(tx, 6) != first


def test_failed_seed_leaves_nothing_behind(tx: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seed_module, "_CHUNK", 100)  # fail after some bookings were copied
    before, constraints = _counts(tx), _constraints(tx)

    def explode(stage: str, done: int, total: int) -> None:
        if stage == "bookings" and done > 0:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        seed(tx, tenants=2, bookings=1000, progress=explode)
    assert _counts(tx) == before
    assert _constraints(tx) == constraints


def test_progress_is_reported_per_stage(tx: Conn) -> None:
    seen: list[tuple[str, int, int]] = []
    seed(tx, tenants=2, bookings=120, progress=lambda *a: seen.append(a))
    stages = [s for s, _, _ in seen]
    assert stages[:4] == ["tenants", "users", "artists", "projects"]
    assert seen[-1] == ("bookings", 120, 120)


def test_seed_as_the_schema_owner(tx: Conn) -> None:
    tx.execute("SET ROLE booking_migrator")
    result = seed(tx, tenants=2, bookings=200)
    assert result.bookings == 200
    assert run_invariants(tx).ok


def test_nothing_to_seed_and_bad_counts(tx: Conn) -> None:
    nothing = seed(tx, tenants=0, bookings=0)
    assert nothing == SeedResult(0, 0, 0, 0, 0, 0, nothing.elapsed_s)
    tenants_only = seed(tx, tenants=2, bookings=0)
    assert (tenants_only.tenants, tenants_only.bookings, tenants_only.events) == (2, 0, 0)
    with pytest.raises(ValueError, match="at least one tenant"):
        seed(tx, tenants=0, bookings=5)
    with pytest.raises(ValueError, match="negative"):
        seed(tx, tenants=-1, bookings=0)


@pytest.mark.slow
def test_large_seed_keeps_invariants_and_pace(booking_db: Any) -> None:
    with booking_db.connect() as conn:
        started = time.monotonic()
        result = seed(conn, tenants=20, bookings=100_000)
        assert result.bookings == 100_000
        report = run_invariants(conn)
        assert report.ok, report.to_dict()
        assert time.monotonic() - started < 120  # a generous bound; bench/ measures speed
