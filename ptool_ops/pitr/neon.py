"""Point-in-time restore on Neon, through branches: the window, a clone beside live to
inspect, and a restore of the environment's branch in place.

* :func:`neon_window` -- what can be restored: the project's history window
  (``history_retention_seconds``) back from now, never before the branch was created. A
  window of 0 seconds means instant restore is off: nothing can be restored.
* :func:`inspect` -- a new branch of the environment's branch (``neon_branch_id``) at the
  target, with its own read-write compute; the domain invariants run on it and its data is
  compared with live (:func:`ptool_ops.pitr.compare.compare`). Live is not changed. The
  clone stays until :func:`delete_clone` (its connection string is in the result).
* :func:`plan_apply` / :func:`apply` -- restore the environment's branch itself to the
  target (Neon's branch restore). **A restore overwrites every database of the branch**;
  it does not merge. The present state is kept as a branch first (``preserve_under_name``),
  the invariants and the API's readiness are checked after, and a branch that fails them
  is restored back from that kept branch.

Neon restores to a time or an LSN; restore points and transaction ids need a self-managed
server (the other half of ``ptool-ops pitr``). A target outside the window is refused
before anything is created.

Every function takes ``progress(phase, detail)`` for people watching; phases are
``window``, ``branch``, ``operation``, ``connect``, ``invariants``, ``compare``,
``restore``, ``validate``, ``rollback`` and ``delete``. Results are dataclasses with
``to_dict()`` for ``--output json``; connection strings are ``SecretStr``, redacted there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from ptool_ops import privileges
from ptool_ops.errors import (
    ConfigError,
    DatabaseUnavailable,
    ManualActionRequired,
    OperationFailed,
    PermissionDenied,
    PtoolError,
    UsageError,
)
from ptool_ops.pitr.target import Target, format_lsn

if TYPE_CHECKING:
    import psycopg

    from ptool_ops.booking.invariants import InvariantReport
    from ptool_ops.environment import Environment, Login
    from ptool_ops.pitr.compare import Comparison
    from ptool_ops.platform.neon import Branch, NeonClient, Operation

__all__ = [
    "NeonApplied",
    "NeonApplyPlan",
    "NeonCloneDeleted",
    "NeonInspection",
    "NeonWindow",
    "Progress",
    "apply",
    "delete_clone",
    "inspect",
    "neon_window",
    "plan_apply",
]

Progress = Callable[[str, str], None]

#: how long the restored branch's compute may take to accept connections again
RECONNECT_TIMEOUT_S = 30.0
_RECONNECT_PAUSE_S = 1.0
_NAME_LIMIT = 256  # Neon's branch name limit


def _quiet(phase: str, detail: str) -> None:
    return None


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _redacted(uri: SecretStr) -> str:
    """The URI without its password (``postgresql://role:********@host/db?...``)."""
    parts = urlsplit(uri.get_secret_value())
    if parts.password is None:
        return parts.geturl()
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:********@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _note(err: PtoolError, text: str) -> PtoolError:
    """``err`` with ``text`` added to its sentence (what state things were left in)."""
    err.message = f"{err.message.rstrip('.')} ({text})."
    err.args = (err.message,)
    return err


# --- the environment's Neon branch ------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    project_id: str
    branch_id: str


def _where(env: Environment) -> _Where:
    settings = env.settings
    if settings.kind != "neon":
        raise ConfigError(
            f"environment {settings.name!r} is not a Neon environment (kind = {settings.kind!r}).",
            hint='Neon restores work on environments with kind = "neon"; others restore'
            " from their WAL archive.",
        )
    if not settings.neon_project_id or not settings.neon_branch_id:
        raise ConfigError(
            f"environment {settings.name!r} is a Neon environment without neon_project_id"
            " and neon_branch_id, so there is no branch to restore.",
            hint="Set both in ptool-ops.toml (or PTOOL_NEON_PROJECT_ID/_BRANCH_ID).",
        )
    return _Where(settings.neon_project_id, settings.neon_branch_id)


def _supported(target: Target) -> None:
    if target.kind not in ("time", "lsn"):
        raise UsageError(
            "Neon restores to a time or an LSN; restore points and transaction ids need a"
            " self-managed server.",
            hint="Give --to TIME or --lsn LSN.",
        )


def _branch(neon: NeonClient, where: _Where) -> Branch:
    from ptool_ops.platform.neon import NotFound

    try:
        return neon.get_branch(where.project_id, where.branch_id)
    except NotFound:
        raise ConfigError(
            f"Neon has no branch {where.branch_id} in project {where.project_id}.",
            hint="Check neon_project_id and neon_branch_id of the environment.",
        ) from None


def _on_operation(say: Progress) -> Callable[[Operation], None]:
    def heard(op: Operation) -> None:
        failed = f" ({op.failures_count} failed attempts)" if op.status == "failed" else ""
        say("operation", f"{op.action} {op.id}: {op.status}{failed}")

    return heard


# --- the window ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NeonWindow:
    """What a Neon branch can be restored to: ``earliest`` .. ``newest`` (now), from the
    project's history window; empty when ``history_retention_seconds`` is 0."""

    project_id: str
    branch_id: str
    branch_name: str
    retention_seconds: int
    checked_at: datetime
    branch_created_at: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.retention_seconds <= 0

    @property
    def bounded_by(self) -> str | None:
        """What sets the earliest point: ``history window`` or ``branch creation``."""
        if self.empty:
            return None
        start = self.checked_at - timedelta(seconds=self.retention_seconds)
        created = self.branch_created_at
        return "branch creation" if created is not None and created > start else "history window"

    @property
    def earliest(self) -> datetime | None:
        if self.empty:
            return None
        start = self.checked_at - timedelta(seconds=self.retention_seconds)
        created = self.branch_created_at
        return max(start, created) if created is not None else start

    @property
    def newest(self) -> datetime | None:
        return None if self.empty else self.checked_at

    def describe(self) -> str:
        if self.empty:
            return (
                f"instant restore is off for project {self.project_id}"
                " (history_retention_seconds = 0): nothing can be restored"
            )
        assert self.earliest is not None and self.newest is not None
        return (
            f"branch {self.branch_name} can be restored to any time from"
            f" {self.earliest.isoformat(timespec='seconds')} to"
            f" {self.newest.isoformat(timespec='seconds')} (set by the {self.bounded_by})"
        )

    def check(self, target: Target) -> None:
        """Refuse a target this window cannot reach (LSNs: only an empty window; see
        :func:`_check_lsn` for the upper bound)."""
        _supported(target)
        if self.empty:
            raise UsageError(
                f"{self.describe()}.",
                hint="Turn on a history window (history_retention_seconds of the Neon project,"
                " set by the stack) -- it only covers changes made after it is on.",
            )
        if target.kind != "time" or target.time is None:
            return
        earliest, newest = self.earliest, self.newest
        assert earliest is not None and newest is not None
        shown = target.time.isoformat(timespec="seconds")
        if target.time > newest:
            raise UsageError(
                f"{shown} is in the future (it is {newest.isoformat(timespec='seconds')} now).",
                hint="Give a time in the past; check the zone of --to.",
            )
        if target.time < earliest:
            raise UsageError(
                f"{shown} is before the earliest point branch {self.branch_name} can be"
                f" restored to, {earliest.isoformat(timespec='seconds')} (set by the"
                f" {self.bounded_by}).",
                hint="Pick a later time: 'ptool-ops pitr window' shows what can be reached.",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "neon",
            "project_id": self.project_id,
            "branch_id": self.branch_id,
            "branch_name": self.branch_name,
            "history_retention_seconds": self.retention_seconds,
            "empty": self.empty,
            "earliest": _iso(self.earliest),
            "newest": _iso(self.newest),
            "bounded_by": self.bounded_by,
            "branch_created_at": _iso(self.branch_created_at),
            "checked_at": self.checked_at.isoformat(),
            "summary": self.describe(),
        }


def _window(neon: NeonClient, where: _Where) -> tuple[NeonWindow, Branch]:
    from ptool_ops.platform.neon import NotFound

    try:
        project = neon.get_project(where.project_id)
    except NotFound:
        raise ConfigError(
            f"Neon has no project {where.project_id}.",
            hint="Check neon_project_id of the environment and that the API key can see it.",
        ) from None
    branch = _branch(neon, where)
    window = NeonWindow(
        project_id=where.project_id,
        branch_id=branch.id,
        branch_name=branch.name,
        retention_seconds=project.history_retention_seconds,
        checked_at=_now(),
        branch_created_at=branch.created_at,
    )
    return window, branch


def neon_window(env: Environment) -> NeonWindow:
    """The window of the environment's branch, from its project's history window (reads
    Neon, changes nothing)."""
    where = _where(env)
    with env.neon() as neon:
        return _window(neon, where)[0]


def _current_lsn(conn: psycopg.Connection[Any]) -> int:
    from ptool_ops.pitr.target import parse_lsn

    row = conn.execute("SELECT pg_catalog.pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def _check_lsn(conn: psycopg.Connection[Any], target: Target) -> None:
    """Refuse an LSN the branch has not reached yet (Neon decides the lower bound)."""
    if target.kind != "lsn" or target.lsn is None:
        return
    current = _current_lsn(conn)
    if target.lsn > current:
        raise UsageError(
            f"LSN {format_lsn(target.lsn)} is in the future: the branch is at"
            f" {format_lsn(current)}.",
            hint="Give an LSN the database has passed (pg_current_wal_lsn() shows where it is).",
        )


def _operator(env: Environment) -> tuple[Login, str, str]:
    """The operator's login and the role and database it names (the clone's are the same)."""
    from ptool_ops import pg

    login = env.login(privileges.OPERATOR)
    params = pg._params(login.url)
    role = str(params.get("user") or "")
    database = str(params.get("dbname") or role)
    if not role:
        raise ConfigError(
            f"the operator's database URL of environment {env.name!r} names no user.",
            hint=f"Put the role in database_url: postgresql://{privileges.OPERATOR}:…@host/db.",
        )
    return login, role, database


def _invariants(conn: psycopg.Connection[Any], what: str) -> InvariantReport:
    from ptool_ops.booking.invariants import InvariantsUnavailable, run_invariants

    try:
        return run_invariants(conn)
    except InvariantsUnavailable as err:
        raise PermissionDenied(
            f"the invariants cannot be checked on {what}: {str(err).rstrip('.')}.",
            hint="Use the operator's login (a role with BYPASSRLS, as the Neon owner is).",
        ) from None


# --- inspect: a clone beside live ----------------------------------------------------------


@dataclass
class NeonInspection:
    """A branch at the target beside live: where it is, what its invariants say and how
    its data differs from live. The branch stays until :func:`delete_clone`."""

    project_id: str
    parent_branch_id: str
    branch_id: str
    branch_name: str
    target: Target
    endpoint_host: str | None
    #: the operator's connection string of the clone (with its password)
    connection: SecretStr
    invariants: InvariantReport
    #: None when the inspection was asked not to compare (``compare_live=False``)
    comparison: Comparison | None
    created_at: str

    @property
    def ok(self) -> bool:
        return self.invariants.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "neon",
            "project_id": self.project_id,
            "parent_branch_id": self.parent_branch_id,
            "branch_id": self.branch_id,
            "branch_name": self.branch_name,
            "target": self.target.to_dict(),
            "endpoint_host": self.endpoint_host,
            "connection_uri": _redacted(self.connection),
            "created_at": self.created_at,
            "invariants_ok": self.invariants.ok,
            "identical": self.comparison.identical if self.comparison else None,
            "invariants": self.invariants.to_dict(),
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }

    def describe(self) -> str:
        """A few lines for people: the clone, its invariants, how it differs, what next."""
        comp = self.comparison
        tables = [t for t in comp.tables if t.delta] if comp else []
        differs = (
            "it was not compared with live"
            if comp is None
            else "its data is identical to live"
            if comp.identical
            else f"{len(tables)} table(s) differ in rows, {comp.tenants_differing} tenant(s)"
            f" and {comp.streams_differing} event stream(s) differ from live"
        )
        lines = [
            f"branch {self.branch_name} ({self.branch_id}) holds {self.target.describe()},"
            f" beside live branch {self.parent_branch_id}",
            "invariants: ok"
            if self.invariants.ok
            else f"invariants: {self.invariants.violation_count} violation(s)",
            differs,
            *(
                f"  {t.table}: {t.copy_rows} here, {t.live_rows} live ({t.delta:+d})"
                for t in tables
            ),
            f"connect: psql '{_redacted(self.connection)}' (the operator's password)",
            f"then: 'ptool-ops pitr restore --apply' with the same target to restore live to"
            f" it, and delete branch {self.branch_id} when done",
        ]
        return "\n".join(lines)


def inspect(
    env: Environment,
    target: Target,
    *,
    progress: Progress | None = None,
    keep_name: str | None = None,
    compare_live: bool = True,
) -> NeonInspection:
    """Create a branch of the environment's branch at ``target`` (a time or an LSN) with a
    read-write compute, check the invariants on it and compare its data with live.

    Nothing is created for a target outside the window. The branch is named ``keep_name``
    (default ``pitr-<UTC yyyymmddHHMMSS>``) and stays after a successful inspection --
    :func:`delete_clone` removes it; if the inspection fails after the branch was made, the
    branch is deleted again. Logs in to both as the operator (same role, same database).
    ``compare_live=False`` skips the comparison (tenant recovery diffs one tenant itself).
    """
    from ptool_ops import pg
    from ptool_ops.pitr.compare import compare
    from ptool_ops.platform.neon import EndpointSpec

    say = progress or _quiet
    _supported(target)
    where = _where(env)
    created_at = _now()
    name = keep_name or f"pitr-{_stamp(created_at)}"
    if len(name) > _NAME_LIMIT:
        raise UsageError(f"the branch name {name[:40]!r}… is longer than Neon allows (256).")
    login, role, database = _operator(env)
    with env.neon() as neon:
        window, _ = _window(neon, where)
        say("window", window.describe())
        window.check(target)
        say("connect", f"live: {login.describe()}")
        with login.connect() as live:
            _check_lsn(live, target)
            say("branch", f"creating branch {name} of {window.branch_name} at {target.describe()}")
            created = neon.create_branch(
                where.project_id,
                name=name,
                parent_id=where.branch_id,
                parent_timestamp=target.time if target.kind == "time" else None,
                parent_lsn=format_lsn(target.lsn) if target.lsn is not None else None,
                endpoint=EndpointSpec(type="read_write"),
                on_change=_on_operation(say),
            )
            clone = created.branch
            try:
                host = created.endpoints[0].host if created.endpoints else None
                uri = neon.connection_uri(
                    where.project_id, branch_id=clone.id, database_name=database, role_name=role
                )
                env.mark_secret(uri.get_secret_value())
                say("connect", f"clone: {pg.describe(uri)}")
                with pg.connect(uri) as copy:
                    say("invariants", f"checking the invariants on branch {name}")
                    report = _invariants(copy, f"branch {name}")
                    comparison = None
                    if compare_live:
                        say("compare", f"comparing branch {name} with live")
                        comparison = compare(live, copy)
            except BaseException as err:
                gone = _delete_quietly(neon, where.project_id, clone.id)
                if isinstance(err, PtoolError):
                    raise _note(
                        err,
                        f"branch {name} ({clone.id}) was deleted again"
                        if gone
                        else f"branch {name} ({clone.id}) is left over: delete it in the Neon"
                        " console",
                    ) from None
                raise
    return NeonInspection(
        project_id=where.project_id,
        parent_branch_id=where.branch_id,
        branch_id=clone.id,
        branch_name=clone.name,
        target=target,
        endpoint_host=host,
        connection=uri,
        invariants=report,
        comparison=comparison,
        created_at=created_at.isoformat(timespec="seconds"),
    )


def _delete_quietly(neon: NeonClient, project_id: str, branch_id: str) -> bool:
    try:
        neon.delete_branch(project_id, branch_id)
    except PtoolError:
        return False
    return True


@dataclass(frozen=True)
class NeonCloneDeleted:
    project_id: str
    branch_id: str
    #: False when the branch was already gone
    deleted: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def delete_clone(
    env: Environment, branch_id: str, *, progress: Progress | None = None
) -> NeonCloneDeleted:
    """Delete a clone made by :func:`inspect` (with its compute). Refuses the environment's
    own branch, the project's default branch and protected branches."""
    from ptool_ops.errors import Refused
    from ptool_ops.platform.neon import NotFound

    say = progress or _quiet
    where = _where(env)
    if branch_id == where.branch_id:
        raise Refused(
            f"branch {branch_id} is the environment's own branch (neon_branch_id), not a clone.",
            hint="Give the branch id 'pitr inspect' printed.",
        )
    with env.neon() as neon:
        try:
            branch = neon.get_branch(where.project_id, branch_id)
        except NotFound:
            return NeonCloneDeleted(where.project_id, branch_id, deleted=False)
        if branch.default or branch.protected:
            which = "the project's default branch" if branch.default else "a protected branch"
            raise Refused(
                f"branch {branch.name} ({branch_id}) is {which}, not a clone.",
                hint="Give the branch id 'pitr inspect' printed.",
            )
        say("delete", f"deleting branch {branch.name} ({branch_id})")
        deleted = neon.delete_branch(where.project_id, branch_id)
    return NeonCloneDeleted(where.project_id, branch_id, deleted=deleted)


# --- apply: restore the branch in place ------------------------------------------------------


@dataclass(frozen=True)
class NeonApplyPlan:
    """What :func:`apply` will do (the dry run): checked against the window, nothing changed."""

    project_id: str
    branch_id: str
    branch_name: str
    target: Target
    window: NeonWindow
    #: the present state is kept as a branch of this name
    preserve_under_name: str
    #: the rejected state is kept under this name if validation fails and it is undone
    undo_preserve_name: str
    api_url: str | None
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "neon",
            "project_id": self.project_id,
            "branch_id": self.branch_id,
            "branch_name": self.branch_name,
            "target": self.target.to_dict(),
            "window": self.window.to_dict(),
            "preserve_under_name": self.preserve_under_name,
            "undo_preserve_name": self.undo_preserve_name,
            "api_url": self.api_url,
            "steps": list(self.steps),
        }


@dataclass
class NeonApplied:
    """A branch restored in place and validated; ``return_command`` goes back to the
    state before (kept as ``preserved_branch_id``)."""

    plan: NeonApplyPlan
    preserved_branch_id: str | None
    restored_at: str
    invariants: InvariantReport
    api: str  # "ready" or why it was not checked
    operations: list[dict[str, str]] = field(default_factory=list)

    @property
    def return_command(self) -> str | None:
        if self.preserved_branch_id is None:
            return None
        return _restore_command(
            self.plan.project_id,
            self.plan.branch_id,
            self.preserved_branch_id,
            self.plan.undo_preserve_name,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "neon",
            "project_id": self.plan.project_id,
            "branch_id": self.plan.branch_id,
            "branch_name": self.plan.branch_name,
            "target": self.plan.target.to_dict(),
            "preserved_branch_id": self.preserved_branch_id,
            "preserved_branch_name": self.plan.preserve_under_name,
            "restored_at": self.restored_at,
            "invariants_ok": self.invariants.ok,
            "invariants": self.invariants.to_dict(),
            "api": self.api,
            "operations": list(self.operations),
            "return_command": self.return_command,
        }

    def describe(self) -> str:
        kept = (
            f"the state before is kept as branch {self.plan.preserve_under_name}"
            f" ({self.preserved_branch_id}); to return to it: {self.return_command}"
            if self.preserved_branch_id
            else f"the kept branch {self.plan.preserve_under_name} was not found"
        )
        return "\n".join(
            [
                f"branch {self.plan.branch_name} ({self.plan.branch_id}) was restored to"
                f" {self.plan.target.describe()}",
                f"invariants: ok; API: {self.api}",
                kept,
            ]
        )


def _restore_command(project_id: str, branch_id: str, source_id: str, preserve: str) -> str:
    return (
        f"neonctl branches restore {branch_id} {source_id} --project-id {project_id}"
        f" --preserve-under-name {preserve}"
    )


def _plan(
    env: Environment,
    neon: NeonClient,
    where: _Where,
    target: Target,
    names: tuple[str, str] | None = None,
) -> NeonApplyPlan:
    """The checked plan; ``names``: (keep, undo) branch names of a plan confirmed before."""
    window, branch = _window(neon, where)
    window.check(target)
    if target.kind == "lsn":
        login, _, _ = _operator(env)
        with login.connect() as conn:
            _check_lsn(conn, target)
    stamp = _stamp(window.checked_at)
    keep, undo = names or (
        f"{branch.name}-before-pitr-{stamp}"[:_NAME_LIMIT],
        f"{branch.name}-pitr-undone-{stamp}"[:_NAME_LIMIT],
    )
    api_url = env.settings.api_url if env.has_api else None
    checks = "the invariants" + (f" and the API's readiness ({api_url})" if api_url else "")
    steps = [
        f"keep the present state of branch {branch.name} ({branch.id}) as branch {keep}",
        f"restore branch {branch.name} to {target.describe()}: every database of the branch"
        " is overwritten; connections drop briefly, the connection string stays",
        f"validate the restored branch: {checks}",
        f"if validation fails: restore branch {branch.name} back from {keep} (its head),"
        f" keeping the rejected state as {undo}",
    ]
    return NeonApplyPlan(
        project_id=where.project_id,
        branch_id=branch.id,
        branch_name=branch.name,
        target=target,
        window=window,
        preserve_under_name=keep,
        undo_preserve_name=undo,
        api_url=api_url,
        steps=steps,
    )


def plan_apply(env: Environment, target: Target) -> NeonApplyPlan:
    """What :func:`apply` would do for ``target``, refused as it would be (reads Neon and,
    for an LSN, live; changes nothing)."""
    _supported(target)
    where = _where(env)
    with env.neon() as neon:
        return _plan(env, neon, where, target)


def _api_problem(env: Environment) -> str | None:
    """None when the environment's API is ready (or it has none), else why not."""
    if not env.has_api:
        return None
    try:
        api = env.api(ops_token=False)
    except PtoolError as err:
        return err.message.rstrip(".")
    with api:
        try:
            api.wait_ready(env.settings.api_ready_timeout_s)
        except PtoolError as err:
            return err.message.rstrip(".")
    return None


@contextmanager
def _reconnect(env: Environment, timeout: float) -> Iterator[psycopg.Connection[Any]]:
    """The operator's connection to the branch just restored: its compute restarts, so
    refused connections are retried for ``timeout`` seconds."""
    login, _, _ = _operator(env)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = login.connect()
            break
        except DatabaseUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(_RECONNECT_PAUSE_S)
    with conn:
        yield conn


def _validate(env: Environment, say: Progress, branch: str) -> tuple[InvariantReport | None, str]:
    """The invariants on the restored branch and the API's readiness: (report, problem)
    with ``problem`` empty when both hold."""
    say("validate", f"checking the invariants on branch {branch}")
    try:
        with _reconnect(env, RECONNECT_TIMEOUT_S) as conn:
            report = _invariants(conn, f"branch {branch}")
    except PtoolError as err:
        return None, f"the invariants could not be checked: {err.message.rstrip('.')}"
    if not report.ok:
        return report, f"{report.violation_count} invariant violation(s) in the restored data"
    if env.has_api:
        say("validate", f"waiting for the API to be ready ({env.settings.api_url})")
    problem = _api_problem(env)
    return report, (f"the API is not ready: {problem}" if problem else "")


def apply(
    env: Environment,
    target: Target,
    *,
    progress: Progress | None = None,
    plan: NeonApplyPlan | None = None,
) -> NeonApplied:
    """Restore the environment's branch to ``target`` in place, through Neon's branch
    restore from its own history.

    **This overwrites every database of the branch** (a restore does not merge); open
    connections drop briefly, the connection string stays. The state before is kept as the
    branch ``plan.preserve_under_name`` (children of the branch move to it), so there is a
    way back: :attr:`NeonApplied.return_command`.

    Every operation of the restore is polled until it ends (``failed`` ones are retried by
    Neon and polled on, up to the client's ``poll_timeout``); 423 and 429 answers are
    retried with bounded exponential back-off (:mod:`ptool_ops.platform._http`). Then the
    invariants and the API's readiness are checked; if either fails, the branch is
    restored back from the kept branch (the rejected state kept as
    ``plan.undo_preserve_name``) and :class:`OperationFailed` says so --
    :class:`ManualActionRequired` when that is not possible or the API stays unready.

    ``plan``: the plan the operator confirmed (:func:`plan_apply`), so that the names it
    showed are the names used; it is checked against the window again. Recorded in the
    audit trail as ``pitr.apply``.
    """
    from ptool_ops import audit

    say = progress or _quiet
    _supported(target)
    where = _where(env)
    with env.neon() as neon:
        if plan is not None and (plan.project_id, plan.branch_id, plan.target) != (
            where.project_id,
            where.branch_id,
            target,
        ):
            raise UsageError(
                "the confirmed plan is for another branch or target than this restore.",
                hint="Plan again with the same target.",
            )
        names = (plan.preserve_under_name, plan.undo_preserve_name) if plan else None
        the_plan = _plan(env, neon, where, target, names)
        say("window", the_plan.window.describe())
        details: dict[str, Any] = {
            "project_id": where.project_id,
            "branch_id": where.branch_id,
            "target": target.to_dict(),
            "preserve_under_name": the_plan.preserve_under_name,
        }
        with audit.audited(
            env,
            "pitr.apply",
            details,
            done=lambda: f"branch {the_plan.branch_name} was restored to {target.describe()}",
        ) as entry:
            result = _apply(env, neon, the_plan, say)
            entry.details.update(
                preserved_branch_id=result.preserved_branch_id,
                api=result.api,
                invariants_ok=result.invariants.ok,
            )
    return result


def _apply(env: Environment, neon: NeonClient, plan: NeonApplyPlan, say: Progress) -> NeonApplied:
    target = plan.target
    seen: list[Operation] = []
    heard = _on_operation(say)

    def on_change(op: Operation) -> None:
        seen.append(op)
        heard(op)

    say(
        "restore",
        f"restoring branch {plan.branch_name} to {target.describe()};"
        f" the present is kept as {plan.preserve_under_name}",
    )
    try:
        neon.restore_branch(
            plan.project_id,
            plan.branch_id,
            source_branch_id=plan.branch_id,
            source_timestamp=target.time if target.kind == "time" else None,
            source_lsn=format_lsn(target.lsn) if target.lsn is not None else None,
            preserve_under_name=plan.preserve_under_name,
            on_change=on_change,
        )
    except PtoolError as err:
        known, kept = _lookup(neon, plan.project_id, plan.preserve_under_name)
        if known and kept is None:
            raise  # Neon did not take the restore: nothing changed
        if kept is not None:
            taken = f"Neon took it (the state before is kept as branch {kept.name}, {kept.id})"
            back = _restore_command(
                plan.project_id, plan.branch_id, kept.id, plan.undo_preserve_name
            )
        else:
            taken = "Neon may have taken it (its branches cannot be listed now)"
            back = f"restore {plan.branch_name} from branch {plan.preserve_under_name}"
        raise ManualActionRequired(
            f"the restore of branch {plan.branch_name} to {target.describe()} did not finish:"
            f" {err.message.rstrip('.')}; {taken}, so the branch may hold the restored"
            " state, the state before or neither.",
            hint=f"Check the branch in the Neon console. To return to the state before: {back}",
            details={"preserved_branch_id": kept.id if kept else None},
        ) from None
    restored_at = _now().isoformat(timespec="seconds")
    operations = [
        {"id": op.id, "action": op.action, "status": op.status}
        for op in {op.id: op for op in seen}.values()
    ]
    _, kept = _lookup(neon, plan.project_id, plan.preserve_under_name)
    report, problem = _validate(env, say, plan.branch_name)
    if not problem:
        assert report is not None
        return NeonApplied(
            plan=plan,
            preserved_branch_id=kept.id if kept else None,
            restored_at=restored_at,
            invariants=report,
            api="ready" if env.has_api else "not checked: the environment has no API",
            operations=operations,
        )
    _undo(env, neon, plan, kept, problem, say)


def _lookup(neon: NeonClient, project_id: str, name: str) -> tuple[bool, Branch | None]:
    """Whether Neon could say, and the branch called ``name`` if there is one."""
    try:
        return True, neon.find_branch(project_id, name)
    except PtoolError:
        return False, None


def _undo(
    env: Environment,
    neon: NeonClient,
    plan: NeonApplyPlan,
    kept: Branch | None,
    problem: str,
    say: Progress,
) -> NoReturn:
    """Restore the branch back from the kept branch's head after failed validation; always
    raises, saying what state things are in."""
    what = f"after restoring branch {plan.branch_name} to {plan.target.describe()}, {problem}"
    if kept is None:
        raise ManualActionRequired(
            f"{what}, and the state before cannot be found (no branch"
            f" {plan.preserve_under_name}); the branch holds the restored state.",
            hint="Find the kept branch in the Neon console and restore from it.",
        )
    say("rollback", f"{problem}: restoring branch {plan.branch_name} back from {kept.name}")
    try:
        neon.restore_branch(
            plan.project_id,
            plan.branch_id,
            source_branch_id=kept.id,
            preserve_under_name=plan.undo_preserve_name,
            on_change=_on_operation(say),
        )
    except PtoolError as err:
        command = _restore_command(
            plan.project_id, plan.branch_id, kept.id, plan.undo_preserve_name
        )
        raise ManualActionRequired(
            f"{what}; restoring it back from {kept.name} failed: {err.message.rstrip('.')}."
            f" The state before is kept as branch {kept.name} ({kept.id}).",
            hint=f"Return to it with: {command}",
            details={"preserved_branch_id": kept.id},
        ) from None
    again = _api_problem(env)
    if again:
        raise ManualActionRequired(
            f"{what}; the branch was restored back to its state before (from {kept.name}),"
            f" but the API is still not ready ({again}), so the restore may not be the cause.",
            hint="Check the API's logs and its database credentials; the rejected state is"
            f" kept as branch {plan.undo_preserve_name}.",
            details={"preserved_branch_id": kept.id, "rolled_back": True},
        )
    raise OperationFailed(
        f"{what}; the branch was restored back to its state before (from {kept.name}) and"
        " the API is ready again.",
        hint=f"The rejected state is kept as branch {plan.undo_preserve_name}: inspect it,"
        " then delete it and the branch "
        f"{kept.name} when done.",
        details={"preserved_branch_id": kept.id, "rolled_back": True},
    )
