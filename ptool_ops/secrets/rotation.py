"""Rotate, roll back and revoke a managed database credential with no failed request.

The protocol is Secrets Manager's four steps driven by us, with the consumers in the middle:

    create    a new password, stored as AWSPENDING under this run's token
    set       ALTER ROLE of the login *not* in use (alternating) or of the one role (single)
    test      log in with it and probe: every table privilege the login in use has, a read
    propagate every consumer gets the new URL and redeploys; each must come up healthy
    verify    the API is ready, as the new login, and a smoke read passes
    finish    AWSPENDING becomes AWSCURRENT; the old version becomes AWSPREVIOUS

Every step is idempotent, and the state lives in the store and the database, not in this
process: a run killed anywhere is finished or undone by running ``rotate`` again, which
reads a stray AWSPENDING and either carries it on (its password logs in: the database has
it) or clears it (it never reached the database). A failure before ``finish`` rolls back on
its own: consumers re-pointed at the credential that is still current (alternating logins
keep it valid all along; a single role gets its old password back), AWSPENDING removed.

Before any step the labels are checked against the database: the password the store calls
current must log in, or nothing is done (drift is reported, never rotated over).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ptool_ops import tracing
from ptool_ops.errors import (
    ConfigError,
    ManualActionRequired,
    OperationFailed,
    PtoolError,
    Refused,
)
from ptool_ops.secrets.credential import Credential, logs_in, new_password, probe
from ptool_ops.secrets.protocol import (
    Progress,
    RevokeReport,
    RotationReport,
    ago,
    consumer_for,
    rollback_failed,
    rolled_back,
    spec_of,
    timed,
)
from ptool_ops.secrets.spec import APPLICATION_KINDS
from ptool_ops.secrets.store import CURRENT, PENDING, PREVIOUS, SecretStore, Version, open_store

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.secrets.consumers import Consumer


@dataclass(frozen=True)
class Labelled:
    """A version the store labels, with its credential."""

    version: Version
    credential: Credential


class ManagedCredential:
    """One managed database credential of one environment: its store, its logins, its
    consumers. Every secret value it reads goes to the environment's redactor first."""

    def __init__(self, env: Environment, name: str, progress: Progress | None = None) -> None:
        self.env = env
        self.name = name
        self.spec = spec_of(env, name)
        settings = env.settings
        self.store: SecretStore = open_store(
            self.spec.store,
            aws_region=settings.aws_region,
            aws_endpoint_url=settings.aws_endpoint_url,
            local_dir=settings.local_dir if env.is_local else None,
        )
        self.progress: Progress = progress or (lambda step, detail: None)
        self._operator: SecretStr | None = None

    # --- reading ---------------------------------------------------------------------

    @property
    def alternating(self) -> bool:
        return self.spec.kind == "database-alternating"

    @property
    def operator_url(self) -> SecretStr:
        if self._operator is None:
            self._operator = self.env.database("secrets.rotate").url
        return self._operator

    def require_privileges(self) -> None:
        from ptool_ops.privileges.duties import require

        with self._connect_operator() as conn:
            require(conn, "secrets.rotate", managed=tuple(self.spec.roles))

    def _connect_operator(self) -> Any:
        from ptool_ops import pg

        return pg.connect(self.operator_url)

    def read(self, version: Version) -> Credential:
        text = self.store.value(version_id=version.id)
        if text is None:
            raise ConfigError(
                f"version {version.id} of secret {self.store.name} has no value.",
                hint="Check the store; the version may have been deleted by hand.",
            )
        raw = text.get_secret_value()
        credential = Credential.parse(raw, where=f"version {version.id} of {self.store.name}")
        self.env.mark_secret(credential.password.get_secret_value())
        return credential

    def labelled(self, label: str, versions: list[Version] | None = None) -> list[Labelled]:
        """The versions carrying ``label`` (of ``versions`` when the caller listed them)."""
        listed = self.store.describe() if versions is None else versions
        return [Labelled(v, self.read(v)) for v in listed if label in v.labels]

    def current(self, versions: list[Version] | None = None) -> Labelled:
        found = self.labelled(CURRENT, versions)
        if not found:
            raise ConfigError(
                f"secret {self.store.name} has no {CURRENT} version.",
                hint="Put the credential in use there (the stacks do), then run the command again.",
            )
        return found[0]

    def url(self, credential: Credential) -> SecretStr:
        url = credential.url(self.operator_url)
        self.env.mark_secret(url.get_secret_value())
        return url

    def logs_in(self, credential: Credential) -> bool:
        return logs_in(self.url(credential))

    def ensure_store(self) -> str | None:
        """A local file store that does not exist yet starts from what the local
        environment uses now; elsewhere the store must exist (the stacks create it)."""
        if self.store.exists():
            return None
        local = self.env.local
        if local is None:
            raise ConfigError(
                f"secret store {self.spec.store} has no secret for {self.name!r}.",
                hint="Create it with the credential in use now (username, password as JSON;"
                " the stacks do), then run the command again.",
            )
        creds = local.secrets()
        if creds is None:
            raise ConfigError(
                "the local environment has no credentials yet.",
                hint="Run 'ptool-ops local up' first.",
            )
        role = creds.app_role if self.alternating else self.spec.roles[0]
        token = str(uuid.uuid4())
        first = Credential(role, SecretStr(creds.passwords[role]))
        self.store.create(first.to_json(), token)
        return f"started the store with the credential the local environment uses ({role})"

    # --- consumers -------------------------------------------------------------------

    def consumers(self) -> list[Consumer]:
        return [consumer_for(self.env, self.name, self.spec.kind, c) for c in self.spec.consumers]

    def variables(self, credential: Credential, consumer_index: int) -> dict[str, SecretStr]:
        spec = self.spec.consumers[consumer_index]
        return {spec.variable: self.url(credential)}

    def point_consumers(self, credential: Credential, what: str) -> list[str]:
        labels = []
        for index, consumer in enumerate(self.consumers()):
            self.progress(what, consumer.label)
            consumer.apply(
                self.variables(credential, index),
                progress=lambda detail: self.progress(what, detail),
            )
            labels.append(consumer.label)
        return labels

    # --- the database ----------------------------------------------------------------

    def set_password(self, role: str, password: str) -> None:
        from ptool_ops import pg
        from ptool_ops.pg import set_password

        with pg.connect(self.operator_url, autocommit=False) as conn:
            from psycopg import sql

            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
            set_password(conn, role, password)
            conn.commit()

    def sessions(self, role: str) -> list[dict[str, Any]]:
        with self._connect_operator() as conn:
            rows = conn.execute(
                "SELECT pid, coalesce(application_name, ''), coalesce(host(client_addr), 'local'),"
                " backend_start FROM pg_catalog.pg_stat_activity WHERE usename = %s"
                " ORDER BY backend_start",
                (role,),
            ).fetchall()
        return [
            {"pid": r[0], "application": r[1], "client": r[2], "since": r[3].isoformat()}
            for r in rows
        ]

    def check_works(self, credential: Credential, *, reference: Credential | None) -> None:
        """The ``test`` step: log in and probe (against the login in use, when it still
        works), or for the migrator, its duty's privileges."""
        url = self.url(credential)
        if not logs_in(url):
            raise OperationFailed(
                f"the new password of {credential.username} does not log in.",
                hint="Check the server's pg_hba.conf allows the role a password login.",
            )
        if reference is not None:
            problem = probe(url, self.url(reference))
            if problem:
                raise OperationFailed(f"{credential.username} cannot stand in: {problem}.")
            return
        from ptool_ops import pg
        from ptool_ops.privileges.duties import check

        with pg.connect(url) as conn:
            result = check(conn, "migrate.run")
        if not result.ok:
            first = result.missing[0]
            raise OperationFailed(
                f"{credential.username} logs in but {first.sentence(result.duty)}.",
            )


def rotate(env: Environment, name: str, *, progress: Progress | None = None) -> RotationReport:
    """Rotate ``name``; audited as ``secrets.rotate``. A failure before ``finish`` is rolled
    back and raised as :class:`OperationFailed` with the report in its details."""
    if spec_of(env, name).kind in APPLICATION_KINDS:
        from ptool_ops.secrets import application

        return application.rotate(env, name, progress=progress)
    managed = ManagedCredential(env, name, progress)
    details: dict[str, Any] = {"secret": name, "kind": managed.spec.kind}
    with env.audit("secrets.rotate", details) as entry:
        report = _rotate(managed)
        entry.details.update(
            outcome=report.outcome,
            token=report.token,
            role_before=report.role_before,
            role_after=report.role_after,
            recovered=report.recovered,
        )
    return report


def _rotate(m: ManagedCredential) -> RotationReport:
    report = RotationReport(m.name, m.spec.kind, m.spec.store, "rotated")
    with tracing.span("checks"):
        m.require_privileges()
        started = m.ensure_store()
        if started:
            report.notes.append(started)
        current = m.current()
        report.role_before = current.credential.username
        if current.credential.username not in m.spec.roles:
            raise Refused(
                f"the store's current credential of {m.name} is for {current.credential.username},"
                f" which is not one of the managed roles ({', '.join(m.spec.roles)}).",
                hint="Fix the declaration or the store so they agree; nothing was changed.",
            )
        pending, report.recovered = _half_finished(m, current)
        # a single role's current password stops working at 'set': a run killed after it
        # is carried on by its pending version, which must log in instead
        if (pending is None or m.alternating) and not m.logs_in(current.credential):
            raise Refused(
                f"the password the store calls current for {current.credential.username}"
                f" ({m.store.name}, version {current.version.id}) does not log in: the store and"
                " the database disagree; nothing was rotated.",
                hint="Find the password the consumers use and put it in the store as current"
                " (or set it on the role), then run the command again.",
            )
        if m.alternating:
            target = next(r for r in m.spec.roles if r != current.credential.username)
        else:
            target = m.spec.roles[0]
        report.role_after = target
        if pending is not None:
            token, new = pending.version.id, pending.credential
        else:
            token = str(uuid.uuid4())
            new = current.credential.successor(target, new_password(m.spec.password_length), token)
        report.token = token
        m.env.mark_secret(new.password.get_secret_value())
        if m.alternating:
            busy = m.sessions(target)
            if busy:
                report.notes.append(
                    f"{target} had {len(busy)} session(s) when its password changed: they keep"
                    " working (a password is checked at login); new logins use the new one"
                )
    try:
        with timed(report, "create", m.progress) as step:
            if pending is not None:
                step.outcome, step.detail = "skipped", f"version {token} is already pending"
            else:
                m.store.put_pending(token, new.to_json())
                step.detail = f"version {token} stored as {PENDING}"
        with timed(report, "set", m.progress) as step:
            if m.logs_in(new):
                step.outcome, step.detail = "skipped", f"{target} already has it"
            else:
                m.set_password(target, new.password.get_secret_value())
                step.detail = f"ALTER ROLE {target} PASSWORD"
        with timed(report, "test", m.progress) as step:
            m.check_works(new, reference=current.credential if m.alternating else None)
            step.detail = f"{target} logs in and holds the privileges of the login in use"
        with timed(report, "propagate", m.progress) as step:
            report.consumers = m.point_consumers(new, "propagate")
            step.detail = ", ".join(report.consumers) or "no consumers"
        with timed(report, "verify", m.progress) as step:
            step.detail = _verify(m, new)
    except PtoolError as err:
        _roll_back(m, report, current, token, err)
        raise AssertionError("unreachable") from None  # _roll_back always raises
    except KeyboardInterrupt:
        _roll_back(m, report, current, token, OperationFailed("the rotation was interrupted."))
        raise AssertionError("unreachable") from None
    with timed(report, "finish", m.progress) as step:
        m.store.move_label(CURRENT, token, from_version=current.version.id)
        m.store.remove_label(PENDING, token)
        step.detail = f"{token} is {CURRENT}; {current.version.id} is {PREVIOUS}"
    return report


def _half_finished(m: ManagedCredential, current: Labelled) -> tuple[Labelled | None, str | None]:
    """A stray AWSPENDING (an aborted Lambda, a killed run of ours): carry it on when the
    database has its password, else clear it. AWSPENDING left on the current version (what a
    finished Secrets Manager rotation leaves) is only tidied."""
    for version in m.store.describe():
        if PENDING not in version.labels:
            continue
        if version.id == current.version.id:
            m.store.remove_label(PENDING, version.id)
            continue
        who = "a run of ptool-ops" if _is_ours(m, version) else "another rotation"
        try:
            credential = m.read(version)
        except ConfigError:
            m.store.remove_label(PENDING, version.id)
            return None, (
                f"cleared the half-finished rotation {version.id} ({who}): its value is not a"
                " credential"
            )
        expected = (
            next(r for r in m.spec.roles if r != current.credential.username)
            if m.alternating
            else m.spec.roles[0]
        )
        if credential.username == expected and m.logs_in(credential):
            return Labelled(version, credential), (
                f"carried on the half-finished rotation {version.id} ({who}): the database"
                f" already has the password of {credential.username}"
            )
        m.store.remove_label(PENDING, version.id)
        return None, (
            f"cleared the half-finished rotation {version.id} ({who}): its password never"
            " reached the database"
        )
    return None, None


def _is_ours(m: ManagedCredential, version: Version) -> bool:
    try:
        return m.read(version).ours
    except ConfigError:
        return False


def _verify(m: ManagedCredential, new: Credential) -> str:
    """The API is ready -- as the new login, when it says which it uses -- and a smoke read
    passes. An environment without an API: the new login works (tested already)."""
    env = m.env
    if not env.has_api or not m.alternating:
        return "no API consumes it: the login was tested"
    timeout = env.settings.api_ready_timeout_s
    with env.api() as api:
        readiness = api.wait_ready(timeout)
        if readiness.role is not None and readiness.role != new.username:
            raise OperationFailed(
                f"the API is ready but serves as {readiness.role}, not {new.username}: a"
                " consumer did not take the new credential.",
                hint="Check the consumer's deployment and its variables.",
            )
        smoke = api.smoke(write=False)
    if not smoke.ok:
        failed = next(s for s in smoke.steps if not s.ok)
        raise OperationFailed(f"the API's smoke check failed at {failed.name}: {failed.detail}")
    return f"API ready as {readiness.role or new.username}, smoke read passed"


def _roll_back(
    m: ManagedCredential, report: RotationReport, current: Labelled, token: str, err: PtoolError
) -> None:
    """Undo a run that failed before ``finish``; always raises."""
    undone: list[str] = []
    with tracing.span("roll back"):
        try:
            reached = {s.name for s in report.steps}
            if not m.alternating and "set" in reached:
                m.set_password(
                    current.credential.username, current.credential.password.get_secret_value()
                )
                undone.append(f"{current.credential.username} has its old password again")
            if "propagate" in reached:
                m.point_consumers(current.credential, "roll back")
                undone.append(f"consumers use {current.credential.username} again")
            m.store.remove_label(PENDING, token)
            undone.append(f"{PENDING} removed from {token}")
        except PtoolError as second:
            raise rollback_failed(
                m.name,
                report,
                err,
                second,
                f"The credential {current.credential.username} in the store as {CURRENT} is still"
                " valid: point the consumers at it",
            ) from None
    raise rolled_back(m.name, report, err, undone) from None


# --- rollback of a finished rotation, revoke --------------------------------------------


def rollback(env: Environment, name: str, *, progress: Progress | None = None) -> RotationReport:
    """Make the previous credential current again: consumers first, then the labels."""
    if spec_of(env, name).kind in APPLICATION_KINDS:
        from ptool_ops.secrets import application

        return application.rollback(env, name, progress=progress)
    m = ManagedCredential(env, name, progress)
    with env.audit("secrets.rollback", {"secret": name}) as entry:
        report = _rollback(m)
        entry.details.update(
            outcome=report.outcome, role_before=report.role_before, role_after=report.role_after
        )
    return report


def _rollback(m: ManagedCredential) -> RotationReport:
    report = RotationReport(m.name, m.spec.kind, m.spec.store, "rolled back")
    m.require_privileges()
    current = m.current()
    if any(PENDING in v.labels and v.id != current.version.id for v in m.store.describe()):
        raise Refused(
            f"a rotation of {m.name} is half-finished (a version is {PENDING}).",
            hint=f"Run 'ptool-ops secrets rotate {m.name}': it finishes or clears it first.",
        )
    previous = m.labelled(PREVIOUS)
    if not previous:
        raise Refused(
            f"{m.name} has no {PREVIOUS} version to go back to (never rotated, or revoked).",
            hint="Rotate instead: 'ptool-ops secrets rotate " + m.name + "'.",
        )
    back = previous[0]
    report.role_before, report.role_after = current.credential.username, back.credential.username
    if not m.logs_in(back.credential):
        raise Refused(
            f"the previous credential of {m.name} ({back.credential.username}) no longer logs"
            " in (revoked, or a single role whose password was replaced), so there is no way"
            " back by labels.",
            hint=f"Rotate instead: 'ptool-ops secrets rotate {m.name}'.",
        )
    try:
        with timed(report, "propagate", m.progress) as step:
            report.consumers = m.point_consumers(back.credential, "propagate")
            step.detail = ", ".join(report.consumers) or "no consumers"
        with timed(report, "verify", m.progress) as step:
            step.detail = _verify(m, back.credential)
    except PtoolError as err:
        try:
            m.point_consumers(current.credential, "roll back")
        except PtoolError as second:
            raise ManualActionRequired(
                f"rolling {m.name} back failed ({err.message.rstrip('.')}), and pointing the"
                f" consumers at {current.credential.username} again failed too:"
                f" {second.message.rstrip('.')}.",
                hint=f"Point the consumers at the credential the store calls {CURRENT}.",
            ) from None
        raise OperationFailed(
            f"rolling {m.name} back failed: {err.message.rstrip('.')}; the consumers use"
            f" {current.credential.username} again and the labels are unchanged.",
            hint=err.hint,
        ) from None
    with timed(report, "finish", m.progress) as step:
        m.store.move_label(CURRENT, back.version.id, from_version=current.version.id)
        step.detail = f"{back.version.id} is {CURRENT} again; {current.version.id} is {PREVIOUS}"
    return report


def revoke_previous(
    env: Environment, name: str, *, force: bool = False, progress: Progress | None = None
) -> RevokeReport:
    """Disable the previous credential once the grace period is over and no session uses
    it (``force``: regardless)."""
    if spec_of(env, name).kind in APPLICATION_KINDS:
        from ptool_ops.secrets import application

        return application.revoke_previous(env, name, force=force, progress=progress)
    m = ManagedCredential(env, name, progress)
    with env.audit("secrets.revoke_previous", {"secret": name, "forced": force}) as entry:
        report = _revoke(m, force)
        entry.details.update(
            outcome=report.outcome, role=report.role, sessions=len(report.sessions)
        )
    return report


def _revoke(m: ManagedCredential, force: bool) -> RevokeReport:
    m.require_privileges()
    current = m.current()
    previous = m.labelled(PREVIOUS)
    if not previous:
        return RevokeReport(m.name, None, None, "nothing to revoke")
    back = previous[0]
    role = back.credential.username
    report = RevokeReport(m.name, role, back.version.id, "revoked", forced=force)
    if role == current.credential.username:
        # a single role: its previous password stopped working when it was replaced
        m.store.remove_label(PREVIOUS, back.version.id)
        report.outcome = "nothing to revoke"
        return report
    grace = m.env.settings.secret_revoke_grace_s
    since = current.version.created
    if since is not None and not force:
        age = (datetime.now(UTC) - since).total_seconds()
        if age < grace:
            raise Refused(
                f"{m.name} was rotated {ago(age)} ago; its previous credential ({role}) stays"
                f" valid for the grace period ({grace:g} s, secret_revoke_grace_s) so consumers"
                " that have not drained keep working.",
                hint="Wait, or pass --force to revoke it now.",
            )
    report.sessions = m.sessions(role)
    if report.sessions and not force:
        apps = sorted({s["application"] or "?" for s in report.sessions})
        raise Refused(
            f"{len(report.sessions)} session(s) still use {role}, the previous credential of"
            f" {m.name} (applications: {', '.join(apps)}); revoking it would fail their next"
            " login.",
            hint="Let those consumers drain (redeploy or recycle their pools), or pass --force.",
            details={"sessions": report.sessions},
        )
    m.progress("revoke", role)
    from psycopg import sql

    from ptool_ops import pg

    with pg.connect(m.operator_url, autocommit=False) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(role)))
        conn.commit()
    if m.env.local is not None:
        from ptool_ops.secrets.local import set_password

        # local up sets the recorded passwords again: record one that nobody knows
        set_password(m.env.local, role, new_password(32), serve=False)
    m.store.remove_label(PREVIOUS, back.version.id)
    return report
