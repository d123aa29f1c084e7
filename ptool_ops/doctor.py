"""``ptool-ops doctor``: log in as every configured role and say which commands each can
serve, before anything breaks at 3 a.m.

For each login the environment has (the local environment: all of the privilege model's;
elsewhere: ``database_url`` and the role-specific URLs that are set), every duty of
:data:`ptool_ops.privileges.DUTIES` is checked against the catalog (nothing is changed).
A command fails the doctor when the login the environment would use for it lacks a
privilege it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptool_ops import privileges
from ptool_ops.errors import PtoolError

if TYPE_CHECKING:
    from ptool_ops.environment import Environment, Login


@dataclass
class LoginReport:
    role: str  # the role of the privilege model the login stands for
    source: str
    target: str
    user: str | None = None  # who the server says we are
    error: str | None = None
    duties: list[privileges.DutyCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "source": self.source,
            "target": self.target,
            "user": self.user,
            "error": self.error,
            "duties": [d.to_dict() for d in self.duties],
        }


@dataclass
class DoctorReport:
    environment: str
    logins: list[LoginReport]
    routes: dict[str, str]  # duty -> role whose login serves it
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "ok": self.ok,
            "routes": self.routes,
            "problems": self.problems,
            "logins": [login.to_dict() for login in self.logins],
        }


def _examine(role: str, login: Login) -> LoginReport:
    report = LoginReport(role, login.source, login.describe())
    try:
        with login.connect() as conn:
            row = conn.execute("SELECT session_user").fetchone()
            report.user = str(row[0]) if row else None
            for name, duty in privileges.DUTIES.items():
                if duty.database is None:
                    report.duties.append(privileges.check(conn, name))
                    continue
                with login.connect(dbname=duty.database) as elsewhere:
                    report.duties.append(privileges.check(elsewhere, name))
    except PtoolError as err:
        report.error = err.message
    return report


def diagnose(env: Environment) -> DoctorReport:
    logins = env.configured_logins()
    reports = {role: _examine(role, login) for role, login in logins.items()}
    routes: dict[str, str] = {}
    problems: list[str] = []
    for name in privileges.DUTIES:
        try:
            login = env.database(name)
        except PtoolError as err:
            problems.append(f"{name}: {err.message}")
            continue
        role = next((r for r, other in logins.items() if other.url == login.url), login.role)
        routes[name] = role
        report = reports.get(role) or reports.setdefault(role, _examine(role, login))
        if report.error is not None:
            problems.append(f"{privileges.DUTIES[name].commands[0]}: {report.error}")
            continue
        check = next(d for d in report.duties if d.duty.name == name)
        if not check.ok:
            duty = privileges.DUTIES[name]
            problems.append(check.missing[0].sentence(duty))
    return DoctorReport(env.name, list(reports.values()), routes, problems)
