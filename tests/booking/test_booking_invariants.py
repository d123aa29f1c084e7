"""Each invariant stays quiet on clean data and finds the violation planted for it.

Planting usually means first removing the database rule that would have stopped it
(a dropped constraint, a disabled trigger) -- exactly the situation after a botched
migration or restore, when these checks matter.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from ptool_ops.booking.invariants import (
    CHECKS,
    InvariantsUnavailable,
    run_invariants,
)
from ptool_ops.booking.seed import seed
from tests.conftest import BACKUP, OWNER, TestDatabase

NAMES = [
    "no_overlapping_bookings",
    "tenant_rows_exist",
    "rls_enabled",
    "event_streams_contiguous",
    "no_invalid_objects",
    "foreign_keys_hold",
]

Conn = psycopg.Connection[Any]


@pytest.fixture
def seeded(tx: Conn) -> Conn:
    seed(tx, tenants=3, bookings=300, seed=7)
    return tx


def _only(conn: Conn, name: str, limit: int = 20) -> Any:
    report = run_invariants(conn, only=[name], limit=limit)
    assert [r.name for r in report.results] == [name]
    return report.results[0]


def _one(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def test_check_names_are_stable() -> None:
    assert [check.name for check in CHECKS] == NAMES


def test_clean_seeded_data_has_no_violations(seeded: Conn) -> None:
    report = run_invariants(seeded)
    assert [r.name for r in report.results] == NAMES
    assert report.ok, report.to_dict()
    assert report.violation_count == 0
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["ok"] is True
    assert [c["name"] for c in doc["checks"]] == NAMES
    assert all(c["duration_ms"] >= 0 for c in doc["checks"])


def test_empty_schema_has_no_violations(tx: Conn) -> None:
    assert run_invariants(tx).ok


def test_unknown_check_and_bad_limit_are_refused(tx: Conn) -> None:
    with pytest.raises(ValueError, match="no_such_check"):
        run_invariants(tx, only=["no_such_check"])
    with pytest.raises(ValueError, match="limit"):
        run_invariants(tx, limit=-1)


# --- no_overlapping_bookings ----------------------------------------------------------


def _overlap(conn: Conn, count: int) -> list[str]:
    """Drop the exclusion constraint and add ``count`` confirmed bookings, each
    overlapping (only) the confirmed booking it copies, moved by a minute."""
    conn.execute("ALTER TABLE booking.bookings DROP CONSTRAINT bookings_no_overlap")
    rows = conn.execute(
        "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period, status)"
        " SELECT tenant_id, artist_id, project_id,"
        "        tstzrange(lower(period) + interval '1 minute',"
        "                  lower(period) + interval '2 minutes'), 'confirmed'"
        "   FROM booking.bookings WHERE status = 'confirmed' ORDER BY id LIMIT %s"
        " RETURNING id",
        (count,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def test_overlapping_bookings_are_found(seeded: Conn) -> None:
    planted = _overlap(seeded, 1)
    result = _only(seeded, "no_overlapping_bookings")
    assert not result.ok
    assert (result.total, result.truncated) == (1, False)
    violation = result.violations[0]
    assert violation.ref["booking_id"] == planted[0]
    other = violation.ref["other_booking_id"]
    assert _one(
        seeded,
        "SELECT a.period && b.period AND a.artist_id = b.artist_id FROM booking.bookings a,"
        " booking.bookings b WHERE a.id = %s AND b.id = %s",
        (planted[0], other),
    ) == (True,)
    assert violation.check == "no_overlapping_bookings"
    assert planted[0] in violation.detail


def test_violations_are_limited_but_counted(seeded: Conn) -> None:
    _overlap(seeded, 5)
    result = _only(seeded, "no_overlapping_bookings", limit=2)
    assert (len(result.violations), result.total, result.truncated) == (2, 5, True)
    none_listed = _only(seeded, "no_overlapping_bookings", limit=0)
    assert (none_listed.violations, none_listed.total, none_listed.truncated) == ([], 5, True)
    report = run_invariants(seeded, limit=1)
    assert report.violation_count == 5 and not report.ok


@pytest.mark.parametrize(
    ("first", "second", "overlaps"),
    [
        ("[2030-01-01Z, 2030-01-02Z)", "[2030-01-02Z, 2030-01-03Z)", False),  # touching
        ("[2030-01-01Z, 2030-01-02Z]", "[2030-01-02Z, 2030-01-03Z)", True),  # shared instant
        ("[2030-01-01Z, 2030-01-02Z]", "(2030-01-02Z, 2030-01-03Z)", False),
        ("[2030-01-01Z, 2030-01-10Z)", "[2030-01-02Z, 2030-01-03Z)", True),  # contained
        ("[2030-01-01Z, 2030-01-02Z)", "[2030-01-01Z, 2030-01-02Z)", True),  # identical
        ("[2030-01-01Z,)", "[2040-01-01Z, 2040-01-02Z)", True),  # unbounded end
        ("(,2030-01-02Z)", "[2030-01-01Z, 2030-01-03Z)", True),  # unbounded start
        ("empty", "[2030-01-01Z, 2030-01-03Z)", False),
    ],
)
def test_overlap_matches_the_range_operator(
    tx: Conn, first: str, second: str, overlaps: bool
) -> None:
    """With the period check gone too, any range may appear: the sweep agrees with &&."""
    tenant, artist, project = (str(uuid.uuid4()) for _ in range(3))
    tx.execute(
        "ALTER TABLE booking.bookings DROP CONSTRAINT bookings_no_overlap,"
        " DROP CONSTRAINT bookings_period_check"
    )
    tx.execute("INSERT INTO booking.tenants (id, slug, name) VALUES (%s, 't', 'T')", (tenant,))
    tx.execute(
        "INSERT INTO booking.artists (id, tenant_id, name) VALUES (%s, %s, 'A')", (artist, tenant)
    )
    tx.execute(
        "INSERT INTO booking.projects (id, tenant_id, name) VALUES (%s, %s, 'P')",
        (project, tenant),
    )
    for period in (first, second):
        tx.execute(
            "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period, status)"
            " VALUES (%s, %s, %s, %s, 'confirmed')",
            (tenant, artist, project, period),
        )
    assert _one(tx, "SELECT %s::tstzrange && %s::tstzrange", (first, second)) == (overlaps,)
    assert _only(tx, "no_overlapping_bookings").total == (1 if overlaps else 0)


def test_overlapping_holds_are_not_violations(seeded: Conn) -> None:
    seeded.execute(
        "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period, status)"
        " SELECT tenant_id, artist_id, project_id, period, s"
        "   FROM booking.bookings, unnest(ARRAY['tentative', 'cancelled']) AS s"
        "  WHERE status = 'confirmed'"
    )
    assert _only(seeded, "no_overlapping_bookings").ok


# --- tenant_rows_exist ----------------------------------------------------------------


def test_rows_of_missing_tenants_are_found(seeded: Conn) -> None:
    ghost = str(uuid.uuid4())
    seeded.execute(
        "ALTER TABLE booking.artists DROP CONSTRAINT artists_tenant_id_fkey;"
        " ALTER TABLE booking.events DROP CONSTRAINT events_tenant_id_fkey"
    )
    seeded.execute(
        "INSERT INTO booking.artists (tenant_id, name) VALUES (%s, 'A'), (%s, 'B')", (ghost, ghost)
    )
    seeded.execute(
        "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
        " VALUES (%s, gen_random_uuid(), 1, 'x', '{}')",
        (ghost,),
    )
    result = _only(seeded, "tenant_rows_exist")
    assert result.total == 2
    refs = sorted((v.ref["table"], v.ref["tenant_id"], v.ref["rows"]) for v in result.violations)
    assert refs == [("booking.artists", ghost, "2"), ("booking.events", ghost, "1")]


def test_rows_without_tenant_are_found(seeded: Conn) -> None:
    seeded.execute(
        "ALTER TABLE booking.projects ALTER COLUMN tenant_id DROP NOT NULL;"
        " INSERT INTO booking.projects (tenant_id, name) VALUES (NULL, 'orphan')"
    )
    result = _only(seeded, "tenant_rows_exist")
    assert result.total == 1
    assert "NULL" in result.violations[0].detail


def test_new_tenant_tables_are_discovered(seeded: Conn) -> None:
    seeded.execute("CREATE TABLE booking.invoices (id int, tenant_id uuid)")
    seeded.execute("INSERT INTO booking.invoices VALUES (1, gen_random_uuid())")
    assert _only(seeded, "tenant_rows_exist").violations[0].ref["table"] == "booking.invoices"
    # ... and the new table has no row-level security either
    rls = _only(seeded, "rls_enabled")
    assert [v.ref["table"] for v in rls.violations] == ["booking.invoices"]


# --- rls_enabled ----------------------------------------------------------------------


@pytest.mark.parametrize("table", ["tenants", "users", "artists", "projects", "bookings", "events"])
def test_disabled_rls_is_found(tx: Conn, table: str) -> None:
    tx.execute(f"ALTER TABLE booking.{table} DISABLE ROW LEVEL SECURITY")
    result = _only(tx, "rls_enabled")
    assert [v.ref["table"] for v in result.violations] == [f"booking.{table}"]
    assert result.violations[0].ref["rls_enabled"] == "false"


def test_table_without_policy_is_found(tx: Conn) -> None:
    tx.execute("DROP POLICY tenant_isolation ON booking.bookings")
    result = _only(tx, "rls_enabled")
    assert [(v.ref["table"], v.ref["policies"]) for v in result.violations] == [
        ("booking.bookings", "0")
    ]
    assert "no policy" in result.violations[0].detail


# --- event_streams_contiguous ---------------------------------------------------------


def _stream(conn: Conn, versions: list[int]) -> str:
    stream = str(uuid.uuid4())
    tenant = _one(conn, "SELECT id FROM booking.tenants LIMIT 1")[0]
    for version in versions:
        conn.execute(
            "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
            " VALUES (%s, %s, %s, 'booking.noted', '{}')",
            (tenant, stream, version),
        )
    return stream


def test_event_gaps_are_found(seeded: Conn) -> None:
    gap = _stream(seeded, [1, 2, 4])
    late_start = _stream(seeded, [2, 3])
    result = _only(seeded, "event_streams_contiguous")
    found = {v.ref["stream_id"]: (v.ref["expected_version"], v.ref["found_version"])
             for v in result.violations}  # fmt: skip
    assert found == {gap: ("3", "4"), late_start: ("1", "2")}


def test_duplicate_event_versions_are_found(seeded: Conn) -> None:
    seeded.execute("ALTER TABLE booking.events DROP CONSTRAINT events_stream_version_key")
    duplicated = _stream(seeded, [1, 2, 2, 3])
    # a duplicate that hides a gap: starts at 1, as many versions as its highest
    hidden = _stream(seeded, [1, 3, 3])
    result = _only(seeded, "event_streams_contiguous")
    found = {v.ref["stream_id"]: v.detail for v in result.violations}
    assert set(found) == {duplicated, hidden} and result.total == 2
    assert "version 2 is duplicated" in found[duplicated]
    assert "version 3 is duplicated" in found[hidden]


def test_broken_streams_beyond_the_limit_are_counted(seeded: Conn) -> None:
    streams = sorted(_stream(seeded, [1, 3]) for _ in range(3))
    report = run_invariants(seeded, only=["event_streams_contiguous"], limit=2)
    result = report.result("event_streams_contiguous")
    assert result.total == 3 and result.truncated
    assert [v.ref["stream_id"] for v in result.violations] == streams[:2]


def test_lost_events_are_found(seeded: Conn) -> None:
    seeded.execute("ALTER TABLE booking.events DISABLE TRIGGER events_append_only")
    stream = _one(seeded, "SELECT stream_id FROM booking.events WHERE version = 2 LIMIT 1")[0]
    seeded.execute("DELETE FROM booking.events WHERE stream_id = %s AND version = 1", (stream,))
    result = _only(seeded, "event_streams_contiguous")
    assert [v.ref["stream_id"] for v in result.violations] == [str(stream)]


# --- no_invalid_objects ---------------------------------------------------------------


def test_not_valid_constraints_are_found(seeded: Conn) -> None:
    seeded.execute(
        "ALTER TABLE booking.artists ADD CONSTRAINT artists_named CHECK (name <> '') NOT VALID"
    )
    result = _only(seeded, "no_invalid_objects")
    assert [(v.ref["kind"], v.ref["name"], v.ref["table"]) for v in result.violations] == [
        ("constraint", "artists_named", "booking.artists")
    ]
    seeded.execute("ALTER TABLE booking.artists VALIDATE CONSTRAINT artists_named")
    assert _only(seeded, "no_invalid_objects").ok


def test_invalid_indexes_are_found(booking_db: Any) -> None:
    """A failed CREATE INDEX CONCURRENTLY leaves an invalid index behind."""
    with booking_db.connect() as conn:
        seed(conn, tenants=1, bookings=20)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY events_type_idx ON booking.events (type)"
            )
        result = _only(conn, "no_invalid_objects")
        assert [(v.ref["kind"], v.ref["name"], v.ref["problem"]) for v in result.violations] == [
            ("index", "events_type_idx", "invalid")
        ]
        conn.execute("DROP INDEX booking.events_type_idx")
        assert run_invariants(conn).ok


# --- foreign_keys_hold ----------------------------------------------------------------


def test_cross_tenant_and_dangling_references_are_found(seeded: Conn) -> None:
    seeded.execute(
        "ALTER TABLE booking.bookings DROP CONSTRAINT bookings_artist_fk,"
        " DROP CONSTRAINT bookings_project_fk"
    )
    booking, tenant = _one(seeded, "SELECT id, tenant_id FROM booking.bookings LIMIT 1")
    foreign, owner = _one(
        seeded, "SELECT id, tenant_id FROM booking.artists WHERE tenant_id <> %s LIMIT 1", (tenant,)
    )
    seeded.execute("UPDATE booking.bookings SET artist_id = %s WHERE id = %s", (foreign, booking))
    other = _one(seeded, "SELECT id FROM booking.bookings WHERE id <> %s LIMIT 1", (booking,))[0]
    missing = uuid.uuid4()
    seeded.execute("UPDATE booking.bookings SET project_id = %s WHERE id = %s", (missing, other))
    result = _only(seeded, "foreign_keys_hold")
    refs = {v.ref["booking_id"]: v.ref for v in result.violations}
    assert result.total == 2
    assert refs[str(booking)]["artist_id"] == str(foreign)
    assert refs[str(booking)]["owner_tenant_id"] == str(owner)
    assert refs[str(other)]["project_id"] == str(missing)
    assert refs[str(other)]["owner_tenant_id"] == ""


# --- who may run them, and on what ----------------------------------------------------


@pytest.mark.parametrize("role", ["booking_app_a", "booking_readonly"])
def test_roles_subject_to_rls_are_refused(seeded: Conn, role: str) -> None:
    seeded.execute(f"SET ROLE {role}")
    with pytest.raises(InvariantsUnavailable, match="row-level security"):
        run_invariants(seeded)


@pytest.mark.parametrize("role", ["booking_backup", "booking_migrator"])
def test_backup_and_owner_roles_see_everything(seeded: Conn, role: str) -> None:
    _overlap(seeded, 1)
    seeded.execute(f"SET ROLE {role}")
    report = run_invariants(seeded)
    assert report.violation_count == 1
    assert report.result("no_overlapping_bookings").total == 1


def test_missing_schema_is_a_violation_of_every_check(empty_db: Any) -> None:
    with empty_db.connect() as conn:
        report = run_invariants(conn)
    assert not report.ok
    assert [(r.name, r.total) for r in report.results] == [(n, 1) for n in NAMES]
    assert all(r.violations[0].ref == {"schema": "booking"} for r in report.results)


def test_missing_table_is_a_violation(tx: Conn) -> None:
    tx.execute("DROP TABLE booking.events")
    report = run_invariants(tx)
    failed = {r.name: r.violations[0].ref for r in report.results if not r.ok}
    assert failed == {"event_streams_contiguous": {"table": "booking.events"}}


def test_schema_drift_is_a_violation_not_a_crash(tx: Conn) -> None:
    tx.execute("ALTER TABLE booking.bookings RENAME COLUMN period TO slot")
    report = run_invariants(tx)
    failed = {r.name: r.violations[0] for r in report.results if not r.ok}
    assert set(failed) == {"no_overlapping_bookings"}
    assert failed["no_overlapping_bookings"].ref == {"sqlstate": "42703"}
    assert "period" in failed["no_overlapping_bookings"].detail


def test_runs_in_one_read_only_snapshot_on_an_idle_connection(booking_db: Any) -> None:
    with psycopg.connect(booking_db.url("booking_migrator"), autocommit=False) as conn:
        assert run_invariants(conn).ok
        # the report's transaction is over; the connection is idle and writable again
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("INSERT INTO booking.tenants (slug, name) VALUES ('after', 'After')")
        conn.commit()


def test_concurrently_on_a_quiet_database_finds_what_one_snapshot_finds(
    booking_db: TestDatabase,
) -> None:
    """A paused restore's checks run side by side, each on its own connection."""
    from ptool_ops.booking.invariants import run_invariants_concurrently

    with psycopg.connect(booking_db.url(OWNER), autocommit=True) as conn:
        seed(conn, tenants=2, bookings=200, seed=3)
        gap = _stream(conn, [1, 3])
    url = booking_db.url(BACKUP)  # BYPASSRLS: every row, as restores check

    def plain(report: Any) -> Any:
        return [
            {k: v for k, v in r.to_dict().items() if k != "duration_ms"} for r in report.results
        ]

    with psycopg.connect(url) as conn:
        serial = run_invariants(conn)
    side_by_side = run_invariants_concurrently(lambda: psycopg.connect(url), workers=2)
    assert plain(side_by_side) == plain(serial) and [r.name for r in side_by_side.results] == NAMES
    assert not side_by_side.ok
    (broken,) = [r for r in side_by_side.results if not r.ok]
    assert (
        broken.name == "event_streams_contiguous" and broken.violations[0].ref["stream_id"] == gap
    )
    with pytest.raises(ValueError, match="Unknown invariant check"):
        run_invariants_concurrently(lambda: psycopg.connect(url), only=["nope"])
