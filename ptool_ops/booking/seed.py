"""Realistic, invariant-respecting demo data for the booking schema.

:func:`seed` adds ``tenants`` new tenants, each with a few users, artists and
projects, and ``bookings`` bookings spread over them (bigger and smaller tenants,
busier and quieter artists). Each artist works a timeline: confirmed bookings follow
one another (they may touch, never overlap); tentative holds and cancelled bookings
are sometimes placed over other bookings, as real calendars have. Every booking has
an event stream: ``booking.created`` (v1), then ``booking.confirmed`` or
``booking.cancelled`` (v2) when its status says so.

Everything is written with COPY in one transaction, so a failed seed leaves
nothing behind. The exclusion constraint (no overlapping confirmed bookings), keys,
checks and indexes are enforced row by row as the data arrives. The foreign keys of
``bookings`` and ``events`` are the exception: checked row by row they cost more than
half the seed, so they are dropped inside the transaction and re-added, from their
own definitions, before it commits; re-adding validates every row in one pass. The
transaction either commits with every constraint in place and validated, or rolls
back. The price is an ACCESS EXCLUSIVE lock on those tables (and locks on the tables
they reference) until the seed commits: seed a database that no one else is writing.

Seeding into a database that already has data only adds new tenants (and their
rows), so invariants keep holding.

Ids are UUIDv7 minted at seed time (a fresh random node per run and a counter), so
a second seed never collides with the first; names, sizes, periods and statuses
are determined by ``seed``.

Run it as a role that writes every tenant: the schema owner or a superuser (row-level
security does not apply to them).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["SEED_LOCK_KEY", "SeedResult", "seed"]

Progress = Callable[[str, int, int], None]

#: Advisory lock held for the seed's transaction, so two seeds do not race for slugs.
SEED_LOCK_KEY = 0x7074_6F6F_6C73_6564  # "ptoolsed"

_CHUNK = 50_000  # bookings generated, then copied (with their events), at a time

_ADJECTIVES = (
    "amber", "blue", "bright", "cedar", "coastal", "copper", "crimson", "golden", "granite",
    "harbor", "indigo", "iron", "lunar", "maple", "north", "oak", "silver", "south", "storm",
    "velvet", "west", "wild", "winter", "zenith",
)  # fmt: skip
_NOUNS = (
    "arrow", "bridge", "canyon", "comet", "crane", "falcon", "forge", "fox", "garden",
    "lantern", "meadow", "mill", "orbit", "otter", "pine", "raven", "ridge", "river", "signal",
    "stone", "tide", "tower", "valley", "wolf",
)  # fmt: skip
_KINDS = ("Pictures", "Studios", "Films", "Animation", "Media", "Productions", "Post")
_FIRST = (
    "Ada", "Aiko", "Amara", "Bruno", "Chen", "Dara", "Elena", "Emeka", "Farah", "Gustav",
    "Hana", "Ines", "Jonas", "Kai", "Lena", "Luca", "Maya", "Mateo", "Nadia", "Noor", "Omar",
    "Priya", "Quinn", "Rosa", "Sami", "Sofia", "Tariq", "Uma", "Viktor", "Yara",
)  # fmt: skip
_LAST = (
    "Abe", "Bauer", "Costa", "Diallo", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito",
    "Jensen", "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Rossi", "Silva",
    "Tanaka", "Usman", "Varga", "Weber", "Yilmaz", "Zhang",
)  # fmt: skip
_PROJECT_KINDS = ("feature", "series", "commercial", "short", "music video", "trailer", "game")
_ROLES = ("admin", "planner", "planner", "viewer", "viewer")
_DURATIONS_H = (8, 8, 24, 24, 48, 72, 120, 168, 240, 336)
_GAPS_H = (0, 0, 0, 24, 24, 48, 72, 168, 336, 720)
_NOTES = (
    None, None, None, None, "on site", "remote", "half days", "overtime approved",
    "pending budget", "needs travel",
)  # fmt: skip
_CANCEL_REASONS = ("schedule change", "project paused", "artist unavailable", "budget cut")

_BOOKING_COLUMNS = (
    "id", "tenant_id", "artist_id", "project_id", "period", "status", "note", "created_at",
    "updated_at",
)  # fmt: skip
_EVENT_COLUMNS = ("tenant_id", "stream_id", "version", "type", "payload", "recorded_at")
_BULK_TABLES = ("booking.bookings", "booking.events")

_BookingRow = tuple[str, str, str, str, str, str, str | None, str, str]
_EventRow = tuple[str, str, int, str, str, str]


@dataclass(frozen=True)
class SeedResult:
    """What one :func:`seed` call added."""

    tenants: int
    users: int
    artists: int
    projects: int
    bookings: int
    events: int
    elapsed_s: float

    def to_dict(self) -> dict[str, int | float]:
        return {
            "tenants": self.tenants,
            "users": self.users,
            "artists": self.artists,
            "projects": self.projects,
            "bookings": self.bookings,
            "events": self.events,
            "elapsed_s": self.elapsed_s,
        }


class _Ids:
    """UUIDv7 strings: this run's millisecond and random node, then a counter.

    Layout (RFC 9562): 48-bit unix ms | ver 7 | 12 random bits | variant 10 |
    30 random bits | 32-bit counter. Ids of one run sort in creation order, which
    keeps the primary-key indexes append-only while seeding.
    """

    def __init__(self) -> None:
        ms = time.time_ns() // 1_000_000
        node = int.from_bytes(os.urandom(6), "big")
        high = (ms << 16) | (0x7 << 12) | (node & 0xFFF)
        low = (0b10 << 30) | ((node >> 12) & 0x3FFF_FFFF)
        h = f"{high:016x}{low:08x}"
        self._prefix = f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:24]}"
        self._counter = 0

    def next(self) -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter:08x}"


class _Clock:
    """Whole hours since an anchor, formatted once each as ISO 8601 (UTC)."""

    def __init__(self, anchor: datetime) -> None:
        self._anchor = anchor
        self._cache: dict[int, str] = {}

    def __call__(self, hour: int) -> str:
        text = self._cache.get(hour)
        if text is None:
            text = (self._anchor + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
            self._cache[hour] = text
        return text


@dataclass
class _Tenant:
    id: str
    slug: str
    bookings: int
    artists: list[str]
    projects: list[str]
    users: list[str]


def seed(
    conn: psycopg.Connection[Any],
    *,
    tenants: int,
    bookings: int,
    seed: int = 42,
    progress: Progress | None = None,
    anchor: datetime | None = None,
) -> SeedResult:
    """Add ``tenants`` tenants and ``bookings`` bookings (with their events) in one
    transaction; returns the counts added.

    ``anchor`` is the start of the booking calendar (default: midnight UTC 180 days
    ago, so data spans past and future). Raises :class:`ValueError` on negative
    counts, or bookings without tenants.
    """
    if tenants < 0 or bookings < 0:
        raise ValueError("Seed counts must not be negative.")
    if bookings and not tenants:
        raise ValueError("Bookings need at least one tenant to belong to.")
    started = time.monotonic()
    rng = random.Random(seed)  # noqa: S311 -- demo data, reproducible by design
    ids = _Ids()
    if anchor is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        anchor = today - timedelta(days=180)
    clock = _Clock(anchor)
    now_h = int((datetime.now(UTC) - anchor).total_seconds() // 3600)
    report: Progress = progress or _no_progress

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEED_LOCK_KEY,))
        taken = {str(row[0]) for row in conn.execute("SELECT slug FROM booking.tenants")}
        plan = _plan_tenants(rng, ids, tenants, bookings, taken)

        tenant_rows = [
            (t.id, t.slug, _tenant_name(t.slug), clock(rng.randint(-24 * 400, -24 * 200)))
            for t in plan
        ]
        _copy(conn, "booking.tenants", ("id", "slug", "name", "created_at"), tenant_rows)
        report("tenants", len(tenant_rows), len(tenant_rows))

        user_rows = list(_user_rows(rng, clock, plan))
        _copy(
            conn,
            "booking.users",
            ("id", "tenant_id", "email", "name", "role", "created_at"),
            user_rows,
        )
        report("users", len(user_rows), len(user_rows))

        artist_rows = [
            (artist, t.id, name, email, clock(rng.randint(-24 * 200, -24)))
            for t in plan
            for artist, (name, email) in zip(
                t.artists, _people(rng, len(t.artists), t.slug), strict=True
            )
        ]
        _copy(
            conn, "booking.artists", ("id", "tenant_id", "name", "email", "created_at"), artist_rows
        )
        report("artists", len(artist_rows), len(artist_rows))

        project_rows = [
            (project, t.id, _project_name(rng), clock(rng.randint(-24 * 200, -24)))
            for t in plan
            for project in t.projects
        ]
        _copy(conn, "booking.projects", ("id", "tenant_id", "name", "created_at"), project_rows)
        report("projects", len(project_rows), len(project_rows))

        booking_count = event_count = 0
        report("bookings", 0, bookings)
        foreign_keys = _drop_foreign_keys(conn, _BULK_TABLES) if bookings else []
        for work in _work(rng, plan):
            events: list[_EventRow] = []
            booking_count += _copy(
                conn, "booking.bookings", _BOOKING_COLUMNS,
                _bookings(rng, ids, clock, now_h, work, events),
            )  # fmt: skip
            event_count += _copy(conn, "booking.events", _EVENT_COLUMNS, events)
            report("bookings", booking_count, bookings)
        _add_foreign_keys(conn, foreign_keys)

        conn.execute(
            "ANALYZE booking.tenants, booking.users, booking.artists, booking.projects,"
            " booking.bookings, booking.events"
        )

    return SeedResult(
        tenants=len(tenant_rows),
        users=len(user_rows),
        artists=len(artist_rows),
        projects=len(project_rows),
        bookings=booking_count,
        events=event_count,
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


_ForeignKey = tuple[str, str, str, str | None]  # table, name, definition, comment


def _drop_foreign_keys(conn: psycopg.Connection[Any], tables: Sequence[str]) -> list[_ForeignKey]:
    """Drop the foreign keys declared on ``tables``; returns what
    :func:`_add_foreign_keys` needs to re-add them in the same transaction."""
    saved: list[_ForeignKey] = [
        (str(table), str(name), str(definition), comment)
        for table, name, definition, comment in conn.execute(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid),"
            " obj_description(c.oid, 'pg_constraint')"
            " FROM pg_constraint c"
            " WHERE c.contype = 'f' AND c.conrelid = ANY (%s::regclass[])"
            " ORDER BY 1, 2",
            (list(tables),),
        )
    ]
    for table, name, _, _ in saved:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.SQL(table), sql.Identifier(name)
            )
        )
    return saved


def _add_foreign_keys(conn: psycopg.Connection[Any], saved: Sequence[_ForeignKey]) -> None:
    """Re-add foreign keys as they were (a NOT VALID one stays NOT VALID); each is
    validated against every row of its table."""
    for table, name, definition, comment in saved:
        # regclass text and pg_get_constraintdef output are quoted by the server.
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.SQL(table), sql.Identifier(name), sql.SQL(definition)
            )
        )
        if comment is not None:
            conn.execute(
                sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                    sql.Identifier(name), sql.SQL(table), sql.Literal(comment)
                )
            )


def _copy(
    conn: psycopg.Connection[Any],
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
) -> int:
    """COPY ``rows`` (consumed as they are written) into ``table``; returns the count."""
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    count = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders get the rest)."""
    scale = total / sum(weights)
    shares = [w * scale for w in weights]
    counts = [int(s) for s in shares]
    rest = total - sum(counts)
    order = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in order[:rest]:
        counts[i] += 1
    return counts


def _plan_tenants(
    rng: random.Random, ids: _Ids, tenants: int, bookings: int, taken: set[str]
) -> list[_Tenant]:
    # A few big tenants and a long tail, as SaaS customers come.
    weights = [min(rng.paretovariate(1.3), 20.0) for _ in range(tenants)]
    per_tenant = _split(bookings, weights) if tenants else []
    plan: list[_Tenant] = []
    for count in per_tenant:
        slug = _fresh_slug(rng, taken)
        artists = max(2, round(count / rng.uniform(25, 60)))
        projects = max(2, round(count / rng.uniform(100, 300)))
        users = rng.randint(3, 8)
        tenant_id = ids.next()
        plan.append(
            _Tenant(
                id=tenant_id,
                slug=slug,
                bookings=count,
                artists=[ids.next() for _ in range(artists)],
                projects=[ids.next() for _ in range(projects)],
                users=[ids.next() for _ in range(users)],
            )
        )
    return plan


def _fresh_slug(rng: random.Random, taken: set[str]) -> str:
    base = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def _tenant_name(slug: str) -> str:
    words = [w.capitalize() for w in slug.split("-") if not w.isdigit()]
    suffix = [w for w in slug.split("-") if w.isdigit()]
    kind = _KINDS[len(slug) % len(_KINDS)]
    return " ".join([*words, kind, *suffix])


def _people(rng: random.Random, count: int, domain: str) -> Iterator[tuple[str, str]]:
    """``count`` (name, email) pairs with emails unique within ``domain``."""
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        yield f"{first} {last}", f"{first.lower()}.{last.lower()}.{i + 1}@{domain}.example"


def _user_rows(
    rng: random.Random, clock: _Clock, plan: Sequence[_Tenant]
) -> Iterator[tuple[str, str, str, str, str, str]]:
    for t in plan:
        for n, (user, (name, email)) in enumerate(
            zip(t.users, _people(rng, len(t.users), t.slug), strict=True)
        ):
            role = "owner" if n == 0 else rng.choice(_ROLES)
            yield user, t.id, email, name, role, clock(rng.randint(-24 * 200, -24))


def _project_name(rng: random.Random) -> str:
    return (
        f"{rng.choice(_ADJECTIVES).capitalize()} {rng.choice(_NOUNS).capitalize()} "
        f"({rng.choice(_PROJECT_KINDS)})"
    )


def _work(rng: random.Random, plan: Sequence[_Tenant]) -> Iterator[list[tuple[_Tenant, str, int]]]:
    """(tenant, artist, bookings) to generate, about ``_CHUNK`` bookings at a time;
    busier and quieter artists within each tenant."""
    work: list[tuple[_Tenant, str, int]] = []
    size = 0
    for t in plan:
        if not t.bookings:
            continue
        weights = [rng.uniform(0.3, 1.7) for _ in t.artists]
        for artist, count in zip(t.artists, _split(t.bookings, weights), strict=True):
            work.append((t, artist, count))
            size += count
            if size >= _CHUNK:
                yield work
                work, size = [], 0
    if work:
        yield work


def _bookings(
    rng: random.Random,
    ids: _Ids,
    clock: _Clock,
    now_h: int,
    work: Sequence[tuple[_Tenant, str, int]],
    events: list[_EventRow],
) -> Iterator[_BookingRow]:
    """The bookings of ``work``, artist by artist; their events go to ``events``.

    Rows are yielded as they are made so that COPY streams them to the server while
    the next ones are generated.
    """
    rand = rng.random
    durations, gaps, notes, reasons = _DURATIONS_H, _GAPS_H, _NOTES, _CANCEL_REASONS
    for t, artist, count in work:
        tenant, projects, planners = t.id, t.projects, t.users
        # The confirmed timeline: each confirmed booking starts at or after `cursor`.
        cursor = int(rand() * 24 * 60)
        for _ in range(count):
            roll = rand()
            status = "confirmed" if roll < 0.7 else "tentative" if roll < 0.88 else "cancelled"
            start = cursor + gaps[int(rand() * len(gaps))]
            end = start + durations[int(rand() * len(durations))]
            if status == "confirmed" or rand() < 0.5:
                cursor = end  # the calendar moves on
            else:
                # a hold or a cancelled booking laid over the booking before it
                start -= durations[int(rand() * len(durations))]
            created = min(start - 24 - int(rand() * 24 * 60), now_h - 1 - int(rand() * 72))
            changed = created + 1 + int(rand() * 72) if status != "tentative" else created
            booking = ids.next()
            project = projects[int(rand() * len(projects))]
            lower, upper = clock(start), clock(end)
            created_at = clock(created)
            events.append((
                tenant, booking, 1, "booking.created",
                f'{{"artist_id": "{artist}", "project_id": "{project}", '
                f'"period": {{"start": "{lower}", "end": "{upper}"}}, "status": "tentative"}}',
                created_at,
            ))  # fmt: skip
            if status == "confirmed":
                by = planners[int(rand() * len(planners))]
                events.append((
                    tenant, booking, 2, "booking.confirmed",
                    f'{{"status": "confirmed", "by": "{by}"}}', clock(changed),
                ))  # fmt: skip
            elif status == "cancelled":
                reason = reasons[int(rand() * len(reasons))]
                events.append((
                    tenant, booking, 2, "booking.cancelled",
                    f'{{"status": "cancelled", "reason": "{reason}"}}', clock(changed),
                ))  # fmt: skip
            yield (
                booking, tenant, artist, project, f"[{lower},{upper})", status,
                notes[int(rand() * len(notes))], created_at, clock(changed),
            )  # fmt: skip
