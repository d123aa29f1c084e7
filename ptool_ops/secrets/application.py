"""Rotate the API's own secrets -- its ops token and its tenant-token key set -- with an
overlap instead of alternating logins: the API accepts the previous value until
``revoke-previous``, so no client holding it fails.

The store holds one value per version (``{"token": ...}``; ``{"kid": ..., "key": ...}``); what
each consumer gets is made from the labels:

* ``api-token``: ``<variable>`` = the token clients should use, ``<variable>_PREVIOUS`` = the
  ones still accepted (comma-separated);
* ``signing-keys``: ``<variable>`` = ``{"signing": kid, "keys": {kid: key, ...}}``.

A key set rotates in two propagations, as a rolling deploy needs: every consumer first learns
the new key beside the current one (verify only), then signs with it. Steps: create → propagate
(→ propagate) → verify → finish; a failure before finish puts the consumers back on what the
labels say and removes AWSPENDING. A run killed anywhere is carried on by the next (its value
never reached anything but the consumers, where it is harmless until it is signed with).
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ptool_ops.errors import ConfigError, OperationFailed, PtoolError, Refused
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
from ptool_ops.secrets.store import CURRENT, PENDING, PREVIOUS, Version, open_store

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.secrets.consumers import Consumer


class ManagedValue:
    """One application secret of one environment: its store and its consumers."""

    def __init__(self, env: Environment, name: str, progress: Progress | None = None) -> None:
        self.env = env
        self.name = name
        self.spec = spec_of(env, name)
        settings = env.settings
        self.store = open_store(
            self.spec.store,
            aws_region=settings.aws_region,
            aws_endpoint_url=settings.aws_endpoint_url,
            local_dir=settings.local_dir if env.is_local else None,
        )
        self.progress: Progress = progress or (lambda step, detail: None)

    @property
    def keyset(self) -> bool:
        return self.spec.kind == "signing-keys"

    # --- values ------------------------------------------------------------------------

    def read(self, version: Version) -> dict[str, str]:
        text = self.store.value(version_id=version.id)
        where = f"version {version.id} of {self.store.name}"
        try:
            doc = json.loads(text.get_secret_value()) if text is not None else None
        except ValueError:
            doc = None
        wanted = ("kid", "key") if self.keyset else ("token",)
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in wanted):
            raise ConfigError(
                f"{where} is not a {self.spec.kind} value: it needs JSON with"
                f" {' and '.join(wanted)}.",
                hint="Put the value in that shape, then run the command again.",
            )
        for key in ("token", "key"):
            if key in doc:
                self.env.mark_secret(str(doc[key]))
        return {k: str(v) for k, v in doc.items() if isinstance(v, str)}

    def labelled(
        self, label: str, versions: list[Version] | None = None
    ) -> list[tuple[Version, dict[str, str]]]:
        """The versions carrying ``label`` (of ``versions`` when the caller listed them)."""
        listed = self.store.describe() if versions is None else versions
        return [(v, self.read(v)) for v in listed if label in v.labels]

    def current(self, versions: list[Version] | None = None) -> tuple[Version, dict[str, str]]:
        found = self.labelled(CURRENT, versions)
        if not found:
            raise ConfigError(
                f"secret {self.store.name} has no {CURRENT} version.",
                hint="Put the value in use there (the stacks do), then run the command again.",
            )
        return found[0]

    def fresh(self) -> dict[str, str]:
        if self.keyset:
            from ptool_ops.local.facts import new_kid

            return {"kid": new_kid(), "key": secrets.token_urlsafe(32)}
        return {"token": secrets.token_urlsafe(32)}

    def ensure_store(self) -> str | None:
        """The local environment's store starts from what its API uses now."""
        if self.store.exists():
            return None
        local = self.env.local
        if local is None:
            raise ConfigError(
                f"secret store {self.spec.store} has no secret for {self.name!r}.",
                hint="Create it with the value in use now (the stacks do), then run the"
                " command again.",
            )
        creds = local.secrets()
        if creds is None:
            raise ConfigError(
                "the local environment has no credentials yet.",
                hint="Run 'ptool-ops local up' first.",
            )
        if not self.keyset:
            first = {"token": creds.api_token}
        elif creds.signing_keys.get("signing"):
            kid = str(creds.signing_keys["signing"])
            first = {"kid": kid, "key": str(creds.signing_keys["keys"][kid])}
        else:
            raise ConfigError(
                "the local environment's API signs tenant tokens with a key derived from its"
                " ops token (made by an older ptool-ops), so it has no key set to rotate.",
                hint="Run 'ptool-ops local reset' and 'ptool-ops local up' to make it anew.",
            )
        self.store.create(json.dumps(first), str(uuid.uuid4()))
        return "started the store with the value the local environment uses"

    # --- consumers -----------------------------------------------------------------------

    def consumers(self) -> list[Consumer]:
        return [consumer_for(self.env, self.name, self.spec.kind, c) for c in self.spec.consumers]

    def variables(
        self, use: dict[str, str], also: list[dict[str, str]], variable: str
    ) -> dict[str, SecretStr]:
        """What a consumer holds: ``use`` is the token to use / the key to sign with,
        ``also`` what is accepted beside it."""
        if self.keyset:
            keys = {d["kid"]: d["key"] for d in (use, *also)}
            return {variable: SecretStr(json.dumps({"signing": use["kid"], "keys": keys}))}
        earlier = ",".join(d["token"] for d in also)
        return {variable: SecretStr(use["token"]), f"{variable}_PREVIOUS": SecretStr(earlier)}

    def point(self, use: dict[str, str], also: list[dict[str, str]], what: str) -> list[str]:
        labels = []
        for spec, consumer in zip(self.spec.consumers, self.consumers(), strict=True):
            self.progress(what, consumer.label)
            consumer.apply(
                self.variables(use, also, spec.variable),
                progress=lambda detail: self.progress(what, detail),
            )
            labels.append(consumer.label)
        return labels

    # --- verification ----------------------------------------------------------------------

    def verify(self, use: dict[str, str], also: list[dict[str, str]]) -> str:
        """The API accepts the token to use and each still accepted / signs with the key and
        a token it signed reads."""
        env = self.env
        if not env.has_api:
            return "no API to ask: the consumers reported healthy"
        from ptool_ops.booking.api import ApiError, BookingApi

        url, token = env.api_endpoint()
        if not self.keyset:
            for doc, role in ((use, "new"), *((d, "previous") for d in also)):
                with BookingApi(url, SecretStr(doc["token"])) as api:
                    try:
                        api.maintenance_state()
                    except ApiError as err:
                        raise OperationFailed(
                            f"the API refuses the {role} ops token (HTTP {err.status}).",
                            hint="A consumer did not take the new token; check its deployment.",
                        ) from None
            return f"the API accepts the new ops token and {len(also)} previous"
        with BookingApi(url, token) as api:
            fixture = api.smoke_fixture()
            minted = str(fixture["tenant_token"])
            if not minted.startswith(f"v2.{use['kid']}."):
                raise OperationFailed(
                    f"the API signs tenant tokens with another key than {use['kid']}.",
                    hint="A consumer did not take the new key set; check its deployment.",
                )
            api.list_bookings(str(fixture["tenant_id"]), minted, limit=1)
        return f"the API signs with {use['kid']} and a token it signed reads"


def rotate(env: Environment, name: str, *, progress: Progress | None = None) -> RotationReport:
    m = ManagedValue(env, name, progress)
    with env.audit("secrets.rotate", {"secret": name, "kind": m.spec.kind}) as entry:
        report = _rotate(m)
        entry.details.update(outcome=report.outcome, token=report.token, recovered=report.recovered)
    return report


def _rotate(m: ManagedValue) -> RotationReport:
    report = RotationReport(m.name, m.spec.kind, m.spec.store, "rotated")
    started = m.ensure_store()
    if started:
        report.notes.append(started)
    current_version, current = m.current()
    report.role_before = current.get("kid") or f"version {current_version.id}"
    pending: tuple[Version, dict[str, str]] | None = None
    for version in m.store.describe():
        if PENDING not in version.labels:
            continue
        if version.id == current_version.id:
            m.store.remove_label(PENDING, version.id)
            continue
        try:
            pending = (version, m.read(version))
            report.recovered = (
                f"carried on the half-finished rotation {version.id}: its value is used by"
                " nothing but, perhaps, the consumers' accepted set"
            )
        except ConfigError:
            m.store.remove_label(PENDING, version.id)
            report.recovered = (
                f"cleared the half-finished rotation {version.id}: its value is not a"
                f" {m.spec.kind} value"
            )
        break
    token = pending[0].id if pending else str(uuid.uuid4())
    new = pending[1] if pending else m.fresh()
    report.token = token
    report.role_after = new.get("kid") or f"version {token}"
    for key in ("token", "key"):
        if key in new:
            m.env.mark_secret(new[key])
    # what was accepted beside the current value stays accepted until revoke-previous
    earlier = [d for _, d in m.labelled(PREVIOUS)]
    try:
        with timed(report, "create", m.progress) as step:
            if pending:
                step.outcome, step.detail = "skipped", f"version {token} is already pending"
            else:
                m.store.put_pending(token, json.dumps(new))
                step.detail = f"version {token} stored as {PENDING}"
        if m.keyset:
            with timed(report, "propagate", m.progress) as step:
                m.point(current, [new, *earlier], "propagate")
                step.detail = f"every consumer verifies {new['kid']} beside {current['kid']}"
        with timed(report, "propagate", m.progress) as step:
            report.consumers = m.point(new, [current, *earlier], "propagate")
            step.detail = ", ".join(report.consumers) or "no consumers"
        with timed(report, "verify", m.progress) as step:
            step.detail = m.verify(new, [current])
    except PtoolError as err:
        _undo(m, report, current, new, earlier, token, err)
        raise AssertionError("unreachable") from None
    except KeyboardInterrupt:
        interrupted = OperationFailed("the rotation was interrupted.")
        _undo(m, report, current, new, earlier, token, interrupted)
        raise AssertionError("unreachable") from None
    with timed(report, "finish", m.progress) as step:
        m.store.move_label(CURRENT, token, from_version=current_version.id)
        m.store.remove_label(PENDING, token)
        step.detail = f"{token} is {CURRENT}; {current_version.id} is {PREVIOUS}"
    return report


def _undo(
    m: ManagedValue,
    report: RotationReport,
    current: dict[str, str],
    new: dict[str, str],
    earlier: list[dict[str, str]],
    token: str,
    err: PtoolError,
) -> None:
    undone: list[str] = []
    try:
        if any(s.name == "propagate" for s in report.steps):
            # a key signed with already verifies on: tokens it signed meanwhile stay valid
            also = [*earlier, new] if m.keyset else earlier
            m.point(current, also, "roll back")
            undone.append("consumers use the current value again")
        m.store.remove_label(PENDING, token)
        undone.append(f"{PENDING} removed from {token}")
    except PtoolError as second:
        raise rollback_failed(
            m.name, report, err, second, f"Give the consumers the store's {CURRENT} value again"
        ) from None
    raise rolled_back(m.name, report, err, undone) from None


def rollback(env: Environment, name: str, *, progress: Progress | None = None) -> RotationReport:
    m = ManagedValue(env, name, progress)
    with env.audit("secrets.rollback", {"secret": name}) as entry:
        report = RotationReport(name, m.spec.kind, m.spec.store, "rolled back")
        current_version, current = m.current()
        if any(PENDING in v.labels and v.id != current_version.id for v in m.store.describe()):
            raise Refused(
                f"a rotation of {name} is half-finished (a version is {PENDING}).",
                hint=f"Run 'ptool-ops secrets rotate {name}': it finishes or clears it first.",
            )
        previous = m.labelled(PREVIOUS)
        if not previous:
            raise Refused(
                f"{name} has no {PREVIOUS} value to go back to (never rotated, or revoked).",
                hint=f"Rotate instead: 'ptool-ops secrets rotate {name}'.",
            )
        back_version, back = previous[0]
        try:
            with timed(report, "propagate", m.progress) as step:
                report.consumers = m.point(back, [current], "propagate")
                step.detail = ", ".join(report.consumers) or "no consumers"
            with timed(report, "verify", m.progress) as step:
                step.detail = m.verify(back, [current])
        except PtoolError as err:
            m.point(current, [back], "roll back")
            raise OperationFailed(
                f"rolling {name} back failed: {err.message.rstrip('.')}; the consumers use the"
                " current value again and the labels are unchanged.",
                hint=err.hint,
            ) from None
        with timed(report, "finish", m.progress) as step:
            m.store.move_label(CURRENT, back_version.id, from_version=current_version.id)
            step.detail = f"{back_version.id} is {CURRENT} again"
        entry.details.update(outcome=report.outcome)
    return report


def revoke_previous(
    env: Environment, name: str, *, force: bool = False, progress: Progress | None = None
) -> RevokeReport:
    """Stop accepting the previous value once the grace period (longer than a tenant token
    lives, for a key set) is over."""
    m = ManagedValue(env, name, progress)
    with env.audit("secrets.revoke_previous", {"secret": name, "forced": force}) as entry:
        current_version, current = m.current()
        previous = m.labelled(PREVIOUS)
        if not previous:
            return RevokeReport(name, None, None, "nothing to revoke")
        back_version, _ = previous[0]
        grace = env.settings.secret_revoke_grace_s
        since = current_version.created
        if since is not None and not force:
            age = (datetime.now(UTC) - since).total_seconds()
            if age < grace:
                raise Refused(
                    f"{name} was rotated {ago(age)} ago; its previous value stays accepted for"
                    f" the grace period ({grace:g} s, secret_revoke_grace_s) so clients and"
                    " tokens made with it keep working.",
                    hint="Wait, or pass --force to revoke it now.",
                )
        m.progress("revoke", back_version.id)
        m.point(current, [], "revoke")
        m.verify(current, [])
        m.store.remove_label(PREVIOUS, back_version.id)
        report = RevokeReport(name, None, back_version.id, "revoked", forced=force)
        entry.details.update(outcome=report.outcome, version=back_version.id)
    return report
