"""``ptool-ops status``: one screen of an environment's health, as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import ProblemsFound, PtoolError

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
            "local": self.local,
        }


def collect(env: Environment) -> StatusReport:
    """Gather the status; never raises for what it can report instead."""
    report = StatusReport(env.name, env.kind, DatabaseStatus(reachable=False))
    if env.local is not None:
        from ptool_ops.console import to_jsonable

        report.local = to_jsonable(env.local.status())
    try:
        _database(env, report)
    except PtoolError as err:
        report.database.error = err.message
        report.database.hint = err.hint
        report.problems.append(err.message)
        report.exit_code = err.exit_code
    if env.has_api:
        report.api = _api(env, report)
    return report


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


def _database(env: Environment, report: StatusReport) -> None:
    from ptool_ops import pg, privileges
    from ptool_ops.booking.invariants import InvariantsUnavailable, run_invariants
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
        try:
            invariants = run_invariants(conn)
        except InvariantsUnavailable as err:
            report.problems.append(f"invariants not checked: {err}")
            report.exit_code = ProblemsFound.exit_code
            return
    report.invariants = invariants.to_dict()
    if not invariants.ok:
        report.problems.append(
            f"{invariants.violation_count} invariant violation(s) in the booking data."
        )
        report.exit_code = ProblemsFound.exit_code
