"""The rules the booking schema enforces by itself: no overlapping confirmed bookings,
no cross-tenant references, tenant isolation by row-level security, append-only events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from .support import rejected

TENANT_TABLES = ("tenants", "users", "artists", "projects", "bookings", "events")


@dataclass
class Tenant:
    id: str
    artist: str
    project: str
    booking: str


def _tenant(conn: psycopg.Connection[Any], slug: str) -> Tenant:
    t = Tenant(*(str(uuid.uuid4()) for _ in range(4)))
    conn.execute(
        "INSERT INTO booking.tenants (id, slug, name) VALUES (%s, %s, %s)", (t.id, slug, slug)
    )
    conn.execute(
        "INSERT INTO booking.users (tenant_id, email, name, role) VALUES (%s, %s, 'U', 'owner')",
        (t.id, f"owner@{slug}.example"),
    )
    conn.execute(
        "INSERT INTO booking.artists (id, tenant_id, name) VALUES (%s, %s, 'A')", (t.artist, t.id)
    )
    conn.execute(
        "INSERT INTO booking.projects (id, tenant_id, name) VALUES (%s, %s, 'P')",
        (t.project, t.id),
    )
    conn.execute(
        "INSERT INTO booking.bookings (id, tenant_id, artist_id, project_id, period, status)"
        " VALUES (%s, %s, %s, %s, '[2030-01-01 09:00Z, 2030-01-01 17:00Z)', 'confirmed')",
        (t.booking, t.id, t.artist, t.project),
    )
    conn.execute(
        "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
        " VALUES (%s, %s, 1, 'booking.created', '{}')",
        (t.id, t.booking),
    )
    return t


@pytest.fixture
def db(tx: psycopg.Connection[Any]) -> tuple[psycopg.Connection[Any], Tenant, Tenant]:
    return tx, _tenant(tx, "acme"), _tenant(tx, "globex")


def _book(conn: psycopg.Connection[Any], t: Tenant, period: str, status: str = "confirmed") -> None:
    conn.execute(
        "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period, status)"
        " VALUES (%s, %s, %s, %s, %s)",
        (t.id, t.artist, t.project, period, status),
    )


# --- bookings -------------------------------------------------------------------------


def test_overlapping_confirmed_booking_is_rejected(db: Any) -> None:
    conn, acme, _ = db
    with rejected(conn, errors.ExclusionViolation) as caught:
        _book(conn, acme, "[2030-01-01 16:00Z, 2030-01-01 20:00Z)")
    assert caught.value.sqlstate == "23P01"
    assert caught.value.diag.constraint_name == "bookings_no_overlap"


def test_confirming_an_overlapping_hold_is_rejected(db: Any) -> None:
    conn, acme, _ = db
    _book(conn, acme, "[2030-01-01 12:00Z, 2030-01-02 12:00Z)", status="tentative")
    with rejected(conn, errors.ExclusionViolation):
        conn.execute("UPDATE booking.bookings SET status = 'confirmed' WHERE status = 'tentative'")


def test_touching_holds_and_cancelled_bookings_are_allowed(db: Any) -> None:
    conn, acme, _ = db
    _book(conn, acme, "[2030-01-01 17:00Z, 2030-01-01 20:00Z)")  # starts when the other ends
    _book(conn, acme, "[2030-01-01 10:00Z, 2030-01-01 12:00Z)", status="tentative")
    _book(conn, acme, "[2030-01-01 10:00Z, 2030-01-01 12:00Z)", status="cancelled")
    other = Tenant(acme.id, str(uuid.uuid4()), acme.project, "")
    conn.execute(
        "INSERT INTO booking.artists (id, tenant_id, name) VALUES (%s, %s, 'B')",
        (other.artist, acme.id),
    )
    _book(conn, other, "[2030-01-01 09:00Z, 2030-01-01 17:00Z)")  # same time, other artist
    assert conn.execute("SELECT count(*) FROM booking.bookings").fetchone() == (6,)


@pytest.mark.parametrize(
    "period",
    [
        "empty",
        "[2030-01-01 09:00Z, 2030-01-01 09:00Z]",
        "(2030-02-01 09:00Z, 2030-02-01 10:00Z)",
        "[2030-02-01 09:00Z, 2030-02-01 10:00Z]",
        "[2030-02-01 09:00Z,)",
        "(,2030-02-01 09:00Z)",
    ],
)
def test_period_must_be_finite_half_open_and_non_empty(db: Any, period: str) -> None:
    conn, acme, _ = db
    with rejected(conn, errors.CheckViolation) as caught:
        _book(conn, acme, period, status="tentative")
    assert caught.value.diag.constraint_name == "bookings_period_check"


def test_booking_cannot_point_at_another_tenants_artist_or_project(db: Any) -> None:
    conn, acme, globex = db
    for artist, project, constraint in [
        (globex.artist, acme.project, "bookings_artist_fk"),
        (acme.artist, globex.project, "bookings_project_fk"),
    ]:
        with rejected(conn, errors.ForeignKeyViolation) as caught:
            conn.execute(
                "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period)"
                " VALUES (%s, %s, %s, '[2031-01-01Z, 2031-01-02Z)')",
                (acme.id, artist, project),
            )
        assert caught.value.sqlstate == "23503"
        assert caught.value.diag.constraint_name == constraint


def test_updated_at_follows_changes(db: Any) -> None:
    conn, acme, _ = db
    conn.execute("UPDATE booking.bookings SET updated_at = '2000-01-01Z' WHERE id = %s",
                 (acme.booking,))  # fmt: skip
    conn.execute("UPDATE booking.bookings SET note = 'moved' WHERE id = %s", (acme.booking,))
    row = conn.execute(
        "SELECT updated_at > '2000-01-02Z' FROM booking.bookings WHERE id = %s", (acme.booking,)
    ).fetchone()
    assert row == (True,)


# --- tenant isolation -----------------------------------------------------------------


def _as(conn: psycopg.Connection[Any], role: str, tenant: str | None) -> None:
    conn.execute(f"SET ROLE {role}")
    if tenant is not None:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (tenant,))


def _counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts = {}
    for table in TENANT_TABLES:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("booking", table))
        ).fetchone()
        assert row is not None
        counts[table] = int(row[0])
    return counts


@pytest.mark.parametrize("role", ["booking_app_a", "booking_app_b", "booking_readonly"])
def test_a_tenant_sees_only_its_own_rows(db: Any, role: str) -> None:
    conn, acme, globex = db
    _as(conn, role, acme.id)
    assert _counts(conn) == dict.fromkeys(TENANT_TABLES, 1)
    ids = conn.execute(
        "SELECT (SELECT array_agg(id) FROM booking.tenants),"
        " (SELECT array_agg(DISTINCT tenant_id) FROM booking.bookings)"
    ).fetchone()
    assert ids == ([uuid.UUID(acme.id)], [uuid.UUID(acme.id)])
    assert conn.execute(
        "SELECT count(*) FROM booking.bookings WHERE tenant_id = %s", (globex.id,)
    ).fetchone() == (0,)


@pytest.mark.parametrize("setting", [None, "", "reset"])
def test_no_tenant_setting_means_no_rows(db: Any, setting: str | None) -> None:
    conn, acme, _ = db
    _as(conn, "booking_app_a", None)
    if setting == "":
        conn.execute("SET app.tenant_id = ''")
    elif setting == "reset":
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (acme.id,))
        conn.execute("RESET app.tenant_id")
    assert _counts(conn) == dict.fromkeys(TENANT_TABLES, 0)


def test_app_cannot_write_into_another_tenant(db: Any) -> None:
    conn, acme, globex = db
    _as(conn, "booking_app_a", acme.id)
    with rejected(conn, errors.InsufficientPrivilege, "row-level security"):
        conn.execute(
            "INSERT INTO booking.artists (tenant_id, name) VALUES (%s, 'Mole')", (globex.id,)
        )
    with rejected(conn, errors.InsufficientPrivilege, "row-level security"):
        conn.execute("UPDATE booking.artists SET tenant_id = %s", (globex.id,))
    # updates of another tenant's rows find nothing to update
    cur = conn.execute("UPDATE booking.artists SET name = 'x' WHERE tenant_id = %s", (globex.id,))
    assert cur.rowcount == 0
    # and its own rows it writes normally
    conn.execute("INSERT INTO booking.artists (tenant_id, name) VALUES (%s, 'New')", (acme.id,))


def test_app_cannot_delete_and_readonly_cannot_write(db: Any) -> None:
    conn, acme, _ = db
    _as(conn, "booking_app_a", acme.id)
    with rejected(conn, errors.InsufficientPrivilege):
        conn.execute("DELETE FROM booking.bookings")
    conn.execute("RESET ROLE")
    _as(conn, "booking_readonly", acme.id)
    with rejected(conn, errors.InsufficientPrivilege):
        conn.execute("INSERT INTO booking.artists (tenant_id, name) VALUES (%s, 'x')", (acme.id,))


def test_backup_role_reads_every_row_despite_rls(db: Any) -> None:
    conn, *_ = db
    _as(conn, "booking_backup", None)
    conn.execute("SET row_security = off")  # as pg_dump does: error rather than filter
    assert _counts(conn) == dict.fromkeys(TENANT_TABLES, 2)
    with rejected(conn, errors.InsufficientPrivilege):
        conn.execute("INSERT INTO booking.tenants (slug, name) VALUES ('x', 'x')")


# --- events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    ["UPDATE booking.events SET type = 'x'", "DELETE FROM booking.events",
     "TRUNCATE booking.events", "DELETE FROM booking.events WHERE false"],
)  # fmt: skip
def test_events_are_append_only_even_for_the_owner(db: Any, statement: str) -> None:
    conn, *_ = db
    conn.execute("SET ROLE booking_migrator")
    with rejected(conn, errors.RestrictViolation, "append-only"):
        conn.execute(statement)


def test_app_appends_events_but_cannot_change_them(db: Any) -> None:
    conn, acme, _ = db
    _as(conn, "booking_app_a", acme.id)
    conn.execute(
        "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
        " VALUES (%s, %s, 2, 'booking.confirmed', '{\"by\": \"me\"}')",
        (acme.id, acme.booking),
    )
    for statement in ["UPDATE booking.events SET type = 'x'", "DELETE FROM booking.events"]:
        with rejected(conn, errors.InsufficientPrivilege):
            conn.execute(statement)
    with rejected(conn, errors.UniqueViolation):  # optimistic concurrency on (stream, version)
        conn.execute(
            "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
            " VALUES (%s, %s, 2, 'booking.cancelled', '{}')",
            (acme.id, acme.booking),
        )


def test_event_ids_are_generated_and_versions_positive(db: Any) -> None:
    conn, acme, _ = db
    with rejected(conn, errors.GeneratedAlways):
        conn.execute(
            "INSERT INTO booking.events (id, tenant_id, stream_id, version, type, payload)"
            " VALUES (1, %s, %s, 2, 't', '{}')",
            (acme.id, acme.booking),
        )
    with rejected(conn, errors.CheckViolation):
        conn.execute(
            "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
            " VALUES (%s, %s, 0, 't', '{}')",
            (acme.id, acme.booking),
        )
