"""What each managed secret looks like now: its age against the rotation threshold, the
version and login in use, whether the previous one still logs in, a half-finished rotation,
and how the last rotation ended (from the audit trail)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import PtoolError
from ptool_ops.secrets.spec import APPLICATION_KINDS
from ptool_ops.secrets.store import CURRENT, PENDING, PREVIOUS

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

#: the audit actions that change a managed secret
ACTIONS = ("secrets.rotate", "secrets.rollback", "secrets.revoke_previous")


@dataclass
class SecretStatus:
    name: str
    kind: str
    store: str
    consumers: list[str]
    current_version: str | None = None
    current_role: str | None = None
    current_logs_in: bool | None = None
    rotated_at: str | None = None
    age_days: float | None = None
    max_age_days: float = 90.0
    previous_role: str | None = None
    previous_valid: bool | None = None
    half_finished: str | None = None
    last_change: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "ok": self.ok}


def describe(env: Environment) -> list[dict[str, Any]]:
    """The declarations only (no store is read): ``secrets list``."""
    return [
        {
            "name": name,
            "kind": spec.kind,
            "roles": spec.roles,
            "store": spec.store,
            "consumers": [f"{c.type}:{c.variable}" for c in spec.consumers],
        }
        for name, spec in sorted(env.settings.managed_secrets().items())
    ]


def status(env: Environment, names: list[str] | None = None) -> list[SecretStatus]:
    from ptool_ops.secrets.application import ManagedValue
    from ptool_ops.secrets.protocol import spec_of
    from ptool_ops.secrets.rotation import ManagedCredential

    specs = env.settings.managed_secrets()
    history = _history(env)
    out = []
    for name in names or sorted(specs):
        spec = spec_of(env, name)  # refuses an unknown name with a sentence
        managed: Any = (
            ManagedValue(env, name)
            if spec.kind in APPLICATION_KINDS
            else ManagedCredential(env, name)
        )
        entry = SecretStatus(
            name,
            spec.kind,
            spec.store,
            [f"{c.type}:{c.variable}" for c in spec.consumers],
            max_age_days=env.settings.secret_max_age_days,
            last_change=history.get(name),
        )
        try:
            _fill(managed, entry)
        except PtoolError as err:
            entry.problems.append(err.message.rstrip("."))
        out.append(entry)
    return out


def _fill(m: Any, entry: SecretStatus) -> None:
    if not m.store.exists():
        if not m.env.is_local:  # the local environment's first rotation starts its store
            entry.problems.append("its store has no secret yet (the stacks create it)")
        return
    versions = m.store.describe()
    if entry.kind in APPLICATION_KINDS:
        _fill_value(m, entry, versions)
        return
    current = m.current(versions)
    entry.current_version = current.version.id
    entry.current_role = current.credential.username
    created = current.version.created
    _age(entry, created)
    entry.current_logs_in = m.logs_in(current.credential)
    if not entry.current_logs_in:
        entry.problems.append(
            f"the password the store calls {CURRENT} for {current.credential.username} does"
            " not log in (drift between the store and the database)"
        )
    previous = m.labelled(PREVIOUS, versions)
    if previous:
        entry.previous_role = previous[0].credential.username
        before = previous[0].credential
        entry.previous_valid = before.username != current.credential.username and m.logs_in(before)
    _pending_and_last(entry, versions, current.version.id)


def _age(entry: SecretStatus, created: datetime | None) -> None:
    if created is not None:
        entry.rotated_at = created.isoformat()
        entry.age_days = round((datetime.now(UTC) - created).total_seconds() / 86400, 2)
        if entry.age_days > entry.max_age_days:
            entry.problems.append(
                f"its current version is {entry.age_days:.0f} days old, over the"
                f" {entry.max_age_days:g} days of secret_max_age_days: rotate it"
            )


def _fill_value(m: Any, entry: SecretStatus, versions: list[Any]) -> None:
    """An application secret: no login to try; the previous value is accepted while it
    is labelled (revoke-previous removes both)."""
    version, doc = m.current(versions)
    entry.current_version = version.id
    entry.current_role = doc.get("kid")
    _age(entry, version.created)
    previous = m.labelled(PREVIOUS, versions)
    entry.previous_valid = bool(previous)
    entry.previous_role = (previous[0][1].get("kid") or previous[0][0].id) if previous else None
    _pending_and_last(entry, versions, version.id)


def _pending_and_last(entry: SecretStatus, versions: list[Any], current_id: str) -> None:
    for version in versions:
        if PENDING in version.labels and version.id != current_id:
            entry.half_finished = version.id
            entry.problems.append(
                f"a rotation is half-finished (version {version.id} is {PENDING}):"
                f" 'ptool-ops secrets rotate {entry.name}' finishes or clears it"
            )
    last = entry.last_change
    if last and last.get("outcome") == "failed" and last.get("action") == "secrets.rotate":
        entry.problems.append(f"its last rotation failed: {last.get('error') or 'see audit'}")


def _history(env: Environment) -> dict[str, dict[str, Any]]:
    """The newest finished rotation, rollback or revocation of each secret (the audit
    trail's; a trail that cannot be read leaves the secrets' state to the store)."""
    newest: dict[str, dict[str, Any]] = {}
    try:
        records = list(env.audit_trail.events(newest_first=True))
    except PtoolError as err:
        log.warning("the audit trail could not be read for the last changes: %s", err.message)
        return newest
    for record in records:
        if record.get("action") not in ACTIONS or record.get("outcome") == "started":
            continue
        details = record.get("details") or {}
        name = details.get("secret")
        if isinstance(name, str) and name not in newest:
            newest[name] = {
                "action": record["action"],
                "at": record.get("at"),
                "outcome": record.get("outcome"),
                "result": details.get("outcome"),
                "error": details.get("error"),
            }
    return newest
