"""The figures ``ptool-ops status`` holds against thresholds: migrations, the newest backup,
the WAL archiver, the point-in-time window, managed secrets -- and the booking KPIs it only
reports. Each collector turns what it cannot read into a failed check with the reason,
never a raise, so one broken part never hides the others."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import PtoolError

if TYPE_CHECKING:
    import psycopg

    from ptool_ops.backup.models import BackupSummary
    from ptool_ops.environment import Environment


@dataclass
class Check:
    """One figure against its threshold. ``ok`` None: not applicable here (said why)."""

    name: str
    ok: bool | None
    detail: str
    value: float | None = None
    threshold: float | None = None
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Kpis:
    bookings_by_status: dict[str, int] = field(default_factory=dict)
    #: cancelled / all, of the bookings created in the last 30 days (None: none created)
    cancellation_rate_30d: float | None = None
    #: per tenant slug: confirmed artist-time booked in the next 30 days / artists x 30 days
    utilisation_30d: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _failed(name: str, err: PtoolError) -> Check:
    return Check(name, False, err.message.rstrip("."))


def migrations(env: Environment, conn: psycopg.Connection[Any]) -> list[Check]:
    """Drifted, missing or interrupted (a ``running`` no-transaction run) migrations are a
    breach; pending ones are a figure (the API's expected schema decides, elsewhere)."""
    from ptool_ops.booking import MIGRATIONS_DIR
    from ptool_ops.migrate.files import load_migrations
    from ptool_ops.migrate.history import MigrationState, read_history, status

    directory = env.settings.migrations_dir or MIGRATIONS_DIR
    try:
        report = status(load_migrations(directory), read_history(conn), str(directory))
    except PtoolError as err:
        return [_failed("migrations", err)]
    pending = report.pending
    checks = [
        Check(
            "migrations.pending",
            None if pending else True,
            f"{len(pending)} pending ({', '.join(m.label for m in pending[:3])})"
            if pending
            else "none pending",
            float(len(pending)),
        )
    ]
    for state in (MigrationState.drifted, MigrationState.missing, MigrationState.interrupted):
        found = report.of(state)
        checks.append(
            Check(
                f"migrations.{state.value}",
                not found,
                (
                    f"{len(found)} {state.value}: {', '.join(m.label for m in found[:3])}"
                    + (" ('ptool-ops migrate status' says what to do)" if found else "")
                )
                if found
                else f"none {state.value}",
                float(len(found)),
                0.0,
            )
        )
    return checks


def backup_age(env: Environment, now: datetime) -> Check:
    from ptool_ops.backup import listing

    try:
        rows = listing.summaries(env.repository(), must_exist=False)
    except PtoolError as err:
        return _failed("backup.age", err)
    return backup_age_of(rows, env.settings.status_backup_max_age_h, now)


def backup_age_of(rows: list[BackupSummary], limit: float, now: datetime) -> Check:
    """The newest complete backup among ``rows`` against ``limit`` hours."""
    done = [r for r in rows if r.status == "complete" and r.finished_at is not None]
    if not done:
        return Check("backup.age", False, "no complete backup in the repository", None, limit, "h")
    newest = max(done, key=lambda r: r.finished_at or now)
    assert newest.finished_at is not None
    hours = (now - newest.finished_at).total_seconds() / 3600
    return Check(
        "backup.age",
        hours <= limit,
        f"newest backup {newest.id} finished {hours:.1f} h ago (threshold {limit:g} h,"
        " status_backup_max_age_h)",
        round(hours, 3),
        limit,
        "h",
    )


def drill_age(env: Environment, now: datetime) -> Check:
    """The newest successful restore drill (``ptool-ops drill run``) against its threshold."""
    from ptool_ops import drill

    try:
        newest, failed = drill.newest_passed(env.repository())
    except PtoolError as err:
        return _failed("drill.age", err)
    return drill_age_of(newest, failed, env.settings.status_drill_max_age_days, now)


def drill_age_of(newest: dict[str, Any] | None, failed: int, limit: float, now: datetime) -> Check:
    """The newest passed drill (a record of :func:`ptool_ops.drill.history`) against
    ``limit`` days; ``failed`` is how many failed drills were found (said when none
    passed)."""
    from ptool_ops import drill

    if newest is None:
        failed_text = f" ({failed} failed)" if failed else ""
        return Check(
            "drill.age",
            False,
            f"no successful restore drill recorded{failed_text}: run 'ptool-ops drill run'",
            None,
            limit,
            "days",
        )
    days = (now - datetime.fromisoformat(str(newest["started_at"]))).total_seconds() / 86400
    rto = drill.rto_text(newest)
    return Check(
        "drill.age",
        days <= limit,
        f"drill {newest['id']} passed {days:.1f} days ago (RTO {rto or '?'}; threshold"
        f" {limit:g} days, status_drill_max_age_days)",
        round(days, 3),
        limit,
        "days",
    )


def wal_archiver(env: Environment, conn: psycopg.Connection[Any], now: datetime) -> Check:
    """Breached when the archiver's last attempt failed, or a finished segment has waited
    longer than the threshold (an idle server that archives nothing is not behind)."""
    import psycopg

    limit = env.settings.status_wal_lag_max_s
    if env.kind == "neon":
        return Check("wal.lag", None, "Neon keeps the WAL (branches)", None, limit, "s")
    mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()
    if mode is None or mode[0] == "off":
        return Check("wal.lag", None, "not archiving here (archive_mode is off)", None, limit, "s")
    try:
        row = conn.execute(
            "SELECT last_archived_wal, last_archived_time, last_failed_wal, last_failed_time,"
            " CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL"
            " ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END"
            " FROM pg_catalog.pg_stat_archiver"
        ).fetchone()
    except psycopg.Error as err:
        return Check("wal.lag", False, f"cannot read pg_stat_archiver: {err.sqlstate}", None, limit)
    assert row is not None
    archived, archived_at, failed, failed_at, current = row
    if failed_at is not None and (archived_at is None or failed_at > archived_at):
        return Check(
            "wal.lag",
            False,
            f"the archiver's last attempt failed ({failed}, at {failed_at.isoformat()}):"
            " 'ptool-ops pitr window' and the server log say why",
            None,
            limit,
            "s",
        )
    # a backup's history file (000000010000000000000004.00000028.backup) names its segment
    segment = archived[:24] if archived else None
    behind = _segments_between(segment, current)
    lag = (now - archived_at).total_seconds() if archived_at is not None else None
    late = behind is not None and behind > 1 and lag is not None and lag > limit
    if archived and lag is not None:
        detail = f"last archived {archived} {lag:.0f} s ago"
        if behind is not None:
            detail += f", {behind} segment(s) behind the one being written"
    else:
        detail = "nothing archived yet"
    return Check(
        "wal.lag", not late, detail, round(lag, 1) if lag is not None else None, limit, "s"
    )


def _segments_between(archived: str | None, current: str | None) -> int | None:
    """How many segments the archive is behind the one being written (same timeline)."""
    if not archived or not current or len(archived) != 24 or archived[:8] != current[:8]:
        return None
    return _segment_number(current) - _segment_number(archived)


def _segment_number(name: str) -> int:
    """A WAL file name's log and segment as one number (16 MB segments: 256 per log)."""
    return int(name[8:16], 16) * 0x100 + int(name[16:24], 16)


def pitr_window(env: Environment, conn: psycopg.Connection[Any]) -> Check:
    mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()
    if env.kind == "neon" or mode is None or mode[0] == "off":
        return Check("pitr.window", None, "no WAL archive here (Neon: branches)")
    from ptool_ops.pitr.window import window

    try:
        found = window(env.repository())
    except PtoolError as err:
        return _failed("pitr.window", err)
    problems = found.problems()
    current = found.current
    span = (
        f"timeline {current.timeline} from {current.earliest_time} to {current.newest_archived_at}"
        if current is not None and current.earliest_time
        else "no restorable window"
    )
    return Check(
        "pitr.window",
        not problems,
        "; ".join(problems) if problems else span,
        found.newest_wal_age_s,
        None,
        "s",
    )


def secrets(env: Environment) -> list[Check]:
    from ptool_ops.secrets.status import status

    try:
        found = status(env)
    except PtoolError as err:
        return [_failed("secrets", err)]
    return [
        Check(
            f"secret.{s.name}",
            s.ok,
            "; ".join(s.problems)
            if s.problems
            else (
                f"{s.current_role or 'current'} {s.age_days:.1f} days old"
                if s.age_days is not None
                else "not rotated yet"
            ),
            s.age_days,
            s.max_age_days,
            "days",
        )
        for s in found
    ]


def kpis(conn: psycopg.Connection[Any]) -> Kpis:
    """The booking figures to watch (reported, no threshold): reads every tenant's rows,
    as the operator (BYPASSRLS) may."""
    out = Kpis()
    for status_name, count in conn.execute(
        "SELECT status, count(*) FROM booking.bookings GROUP BY status ORDER BY status"
    ).fetchall():
        out.bookings_by_status[str(status_name)] = int(count)
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'cancelled')::float8 / nullif(count(*), 0)"
        " FROM booking.bookings WHERE created_at >= now() - interval '30 days'"
    ).fetchone()
    out.cancellation_rate_30d = round(float(row[0]), 4) if row and row[0] is not None else None
    rows = conn.execute(
        "WITH horizon AS (SELECT tstzrange(now(), now() + interval '30 days') AS h),"
        " booked AS (SELECT b.tenant_id, sum(extract(epoch FROM upper(b.period * h.h)"
        " - lower(b.period * h.h))) AS seconds FROM booking.bookings b, horizon h"
        " WHERE b.status = 'confirmed' AND b.period && h.h GROUP BY b.tenant_id),"
        " artists AS (SELECT tenant_id, count(*) AS n FROM booking.artists GROUP BY tenant_id)"
        " SELECT t.slug, coalesce(booked.seconds, 0) / (a.n * 30 * 86400.0)"
        " FROM booking.tenants t JOIN artists a ON a.tenant_id = t.id"
        " LEFT JOIN booked ON booked.tenant_id = t.id ORDER BY t.slug"
    ).fetchall()
    out.utilisation_30d = {str(slug): round(float(share), 4) for slug, share in rows}
    return out


def now_utc() -> datetime:
    return datetime.now(UTC)
