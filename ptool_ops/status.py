"""``ptool-ops status``: one screen of an environment's health, as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import ProblemsFound, PtoolError
from ptool_ops.status_checks import Check, Kpis

if TYPE_CHECKING:
    from ptool_ops.environment import Environment


@dataclass
class DatabaseStatus:
    reachable: bool
    target: str | None = None
    server_version: str | None = None
    size_bytes: int | None = None
    schema_version: str | None = None
    user: str | None = None
    wal_level: str | None = None
    archive_mode: str | None = None
    error: str | None = None
    hint: str | None = None


@dataclass
class ApiStatus:
    url: str | None = None
    alive: bool = False
    ready: bool = False
    reason: str | None = None
    role: str | None = None
    version: str | None = None
    build: str | None = None
    schema_version_expected: str | None = None
    maintenance: bool | None = None
    error: str | None = None


@dataclass
class StatusReport:
    environment: str
    kind: str
    database: DatabaseStatus
    invariants: dict[str, Any] | None = None
    api: ApiStatus | None = None
    local: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)
    kpis: Kpis | None = None
    problems: list[str] = field(default_factory=list)
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        from ptool_ops.console import to_jsonable

        return {
            "environment": self.environment,
            "kind": self.kind,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "problems": self.problems,
            "database": to_jsonable(self.database),
            "invariants": self.invariants,
            "api": to_jsonable(self.api) if self.api else None,
            "checks": [c.to_dict() for c in self.checks],
            "kpis": self.kpis.to_dict() if self.kpis else None,
            "local": self.local,
        }

    def breach(self, check: Check) -> None:
        self.checks.append(check)
        if check.ok is False:
            self.problems.append(f"{check.name}: {check.detail}")
            self.exit_code = self.exit_code or ProblemsFound.exit_code


def collect(env: Environment, *, invariants: bool | None = None) -> StatusReport:
    """Gather the status; never raises for what it can report instead. ``invariants``:
    True runs every booking invariant (most read every row: seconds on a million
    bookings), None only those that read the catalog, False none."""
    report = StatusReport(env.name, env.kind, DatabaseStatus(reachable=False))
    if env.local is not None:
        from ptool_ops.console import to_jsonable

        report.local = to_jsonable(env.local.status())
    try:
        _database(env, report, invariants=invariants)
    except PtoolError as err:
        report.database.error = err.message
        report.database.hint = err.hint
        report.problems.append(err.message)
        report.exit_code = err.exit_code
    if env.has_api:
        report.api = _api(env, report)
    _thresholds(env, report)
    return report


def _thresholds(env: Environment, report: StatusReport) -> None:
    """The figures held against settings; what needs the database only when it answered."""
    import psycopg

    from ptool_ops import status_checks

    now = status_checks.now_utc()
    if report.database.reachable:
        try:
            with env.database("status").connect() as conn:
                for check in status_checks.migrations(env, conn):
                    report.breach(check)
                report.breach(status_checks.wal_archiver(env, conn, now))
                report.breach(status_checks.pitr_window(env, conn))
                if report.database.schema_version is not None:
                    report.kpis = status_checks.kpis(conn)
        except PtoolError as err:
            report.breach(Check("database", False, err.message.rstrip(".")))
        except psycopg.Error as err:  # a figure the login may not read: say which, go on
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            report.breach(Check("database", False, f"a status query failed: {first}"))
    report.breach(status_checks.backup_age(env, now))
    report.breach(status_checks.drill_age(env, now))
    for check in status_checks.secrets(env):
        report.breach(check)


def _api(env: Environment, report: StatusReport) -> ApiStatus:
    """Liveness, readiness, version and maintenance; failures become problems, not raises."""
    status = ApiStatus()
    try:
        with env.api() as api:
            status.url = api.base_url
            api.health()
            status.alive = True
            ready = api.ready()
            status.ready, status.reason, status.role = ready.ready, ready.reason, ready.role
            info = api.version()  # a /version short of the contract's fields raises
            status.version, status.build = info["version"], info["build"]
            status.schema_version_expected = info["schema_version_expected"]
            if api.has_ops_token:
                status.maintenance = bool(api.maintenance_state()["enabled"])
    except PtoolError as err:
        status.error = err.message
        report.problems.append(err.message)
        report.exit_code = report.exit_code or err.exit_code
        return status
    if not status.ready:
        report.problems.append(f"the booking API is not ready: {status.reason}")
        report.exit_code = report.exit_code or ProblemsFound.exit_code
    db_version = report.database.schema_version
    if (
        db_version
        and status.schema_version_expected
        and db_version < status.schema_version_expected
    ):
        report.problems.append(
            f"the API expects schema {status.schema_version_expected} but the database has "
            f"{db_version}; run the pending migrations."
        )
        report.exit_code = report.exit_code or ProblemsFound.exit_code
    return status


def _database(env: Environment, report: StatusReport, *, invariants: bool | None) -> None:
    from ptool_ops import pg, privileges
    from ptool_ops.booking.invariants import CATALOG_CHECKS, InvariantsUnavailable, run_invariants
    from ptool_ops.migrate.history import schema_version

    login = env.database("status")
    report.database.target = login.describe()
    with login.connect() as conn:
        facts = pg.server_facts(conn)
        db = report.database
        db.reachable = True
        db.server_version = facts.version
        db.size_bytes = facts.size_bytes
        db.user = facts.user
        db.wal_level = facts.wal_level
        db.archive_mode = facts.archive_mode
        privileges.require(conn, "status")
        db.schema_version = schema_version(conn)
        if db.schema_version is None:
            report.problems.append("the booking schema is not installed (no migration history).")
            report.exit_code = ProblemsFound.exit_code
            return
        if invariants is False:
            return
        try:
            found = run_invariants(conn, only=None if invariants else CATALOG_CHECKS)
        except InvariantsUnavailable as err:
            report.problems.append(f"invariants not checked: {err}")
            report.exit_code = ProblemsFound.exit_code
            return
    report.invariants = found.to_dict() | {"scope": "all" if invariants else "catalog"}
    if not found.ok:
        report.problems.append(
            f"{found.violation_count} invariant violation(s) in the booking data."
        )
        report.exit_code = ProblemsFound.exit_code


def prometheus(report: StatusReport) -> str:
    """The report's figures in Prometheus' text exposition format (for node-exporter's
    textfile collector)."""
    env = _label(report.environment)
    lines: list[str] = []

    def metric(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP ptool_{name} {help_text}")
        lines.append(f"# TYPE ptool_{name} gauge")
        for labels, value in samples:
            extra = f",{labels}" if labels else ""
            lines.append(f'ptool_{name}{{environment="{env}"{extra}}} {value:g}')

    metric("status_ok", "1 when no check is breached.", [("", 1.0 if report.ok else 0.0)])
    metric(
        "check_ok",
        "1 when the check holds, 0 when breached (not-applicable checks are left out).",
        [
            (f'check="{_label(c.name)}"', 1.0 if c.ok else 0.0)
            for c in report.checks
            if c.ok is not None
        ],
    )
    metric(
        "check_value",
        "The figure each check holds against its threshold (unit in the label).",
        [
            (f'check="{_label(c.name)}",unit="{_label(c.unit)}"', float(c.value))
            for c in report.checks
            if c.value is not None
        ],
    )
    metric(
        "check_threshold",
        "The threshold of each check, from the settings.",
        [
            (f'check="{_label(c.name)}",unit="{_label(c.unit)}"', float(c.threshold))
            for c in report.checks
            if c.threshold is not None
        ],
    )
    db = report.database
    metric("database_up", "1 when the database answered.", [("", 1.0 if db.reachable else 0.0)])
    if db.size_bytes is not None:
        metric("database_size_bytes", "Size of the database.", [("", float(db.size_bytes))])
    if report.invariants is not None:
        metric(
            "invariant_violations",
            "Rows breaking each booking invariant.",
            [
                (f'invariant="{_label(r["name"])}"', float(r["total"]))
                for r in report.invariants["checks"]
            ],
        )
    if report.api is not None:
        metric("api_ready", "1 when the API is ready.", [("", 1.0 if report.api.ready else 0.0)])
    if report.kpis is not None:
        k = report.kpis
        metric(
            "bookings",
            "Bookings by status.",
            [(f'status="{_label(st)}"', float(n)) for st, n in k.bookings_by_status.items()],
        )
        if k.cancellation_rate_30d is not None:
            metric(
                "cancellation_rate_30d",
                "Cancelled share of the bookings created in the last 30 days.",
                [("", k.cancellation_rate_30d)],
            )
        metric(
            "tenant_utilisation_30d",
            "Confirmed artist-time booked in the next 30 days per artist-time available.",
            [(f'tenant="{_label(t)}"', share) for t, share in k.utilisation_30d.items()],
        )
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_prometheus(report: StatusReport, path: Path) -> None:
    """Atomically: the collector never reads half a file."""
    from ptool_ops.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, prometheus(report), mode=0o644)
