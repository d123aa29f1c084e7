"""Consumers: the places a rotation propagates a new credential to (protocol step 5,
``shared/reference/rotation-protocol.md``).

A consumer sets every variable without deploying, starts **one** redeploy, and waits for the
platform's verdict: Railway's deployment status (SUCCESS; FAILED, CRASHED, REMOVED, SKIPPED
abort) or Vercel's ``readyState`` (READY; ERROR, CANCELED abort). A failure or a timeout is
an ``OperationFailed`` naming the consumer and the deployment; the rotation then rolls back.
Applying the same values twice is harmless (both platforms upsert).

Values arrive as ``SecretStr`` and are unwrapped only in the request body. Progress lines
and errors name variables, never values; an error whose text quotes a value anyway (a
service echoing its input) is re-raised with the value masked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from pydantic import SecretStr

from ptool_ops.errors import OperationFailed, PtoolError, quoted_forms
from ptool_ops.platform.railway import RailwayClient, RailwayDeployment
from ptool_ops.platform.vercel import EnvType, VercelClient, VercelDeployment

Progress = Callable[[str], None]
MASK = "********"

__all__ = ["Consumer", "RailwayConsumer", "VercelConsumer"]


class Consumer(Protocol):
    #: e.g. "railway service web (production)", for progress lines and reports
    label: str

    def apply(
        self, variables: Mapping[str, SecretStr], *, progress: Progress | None = None
    ) -> None:
        """Set every variable, redeploy once, wait until healthy; ``OperationFailed`` if not."""
        ...


def _quiet(_line: str) -> None:
    return None


def _mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _masked(label: str, variables: Mapping[str, SecretStr], err: Exception) -> Exception | None:
    """``err`` again with every value masked if its text contains one, else None."""
    secrets = quoted_forms(v.get_secret_value() for v in variables.values())
    if isinstance(err, PtoolError):
        if not any(s in f"{err.message} {err.hint} {err.details}" for s in secrets):
            return None
        return type(err)(
            _mask(err.message, secrets),
            hint=_mask(err.hint, secrets) if err.hint else None,
            details={k: _mask(str(v), secrets) for k, v in err.details.items()},
        )
    if not any(s in f"{err} {err!r}" for s in secrets):
        return None
    return OperationFailed(
        f"{label}: {type(err).__name__} (its message quoted a secret value and is withheld)."
    )


def _guarded(label: str, variables: Mapping[str, SecretStr], run: Callable[[], None]) -> None:
    """Run ``run``; let no exception out whose text contains one of the values."""
    try:
        run()
    except Exception as err:
        masked = _masked(label, variables, err)
        if masked is None:
            raise
    else:
        return
    raise masked  # outside the handler, so the original is not kept as __context__


def _verdict(label: str, deployment_id: str, status: str, *, platform: str) -> OperationFailed:
    return OperationFailed(
        f"the redeploy of {label} failed: deployment {deployment_id} ended {status}.",
        hint=f"Read the deployment's logs in {platform}.",
        details={"consumer": label, "deployment_id": deployment_id, "status": status},
    )


def _timed_out(label: str, err: OperationFailed) -> OperationFailed:
    deployment, status = err.details.get("deployment_id"), err.details.get("status")
    waited = err.details.get("waited_s")
    what = (
        f"deployment {deployment} is still {status}" if deployment else "no new deployment appeared"
    )
    return OperationFailed(
        f"the redeploy of {label} did not finish: {what} after {waited} s.",
        hint=err.hint,
        details={**err.details, "consumer": label},
    )


class RailwayConsumer:
    """A Railway service instance: ``variableCollectionUpsert(skipDeploys: true)``, one
    ``serviceInstanceRedeploy``, then the new deployment polled until SUCCESS."""

    def __init__(
        self,
        client: RailwayClient,
        project_id: str,
        environment_id: str,
        service_id: str,
        timeout_s: float = 600.0,
        *,
        interval_s: float = 5.0,
        service_name: str | None = None,
        environment_name: str | None = None,
    ) -> None:
        self.client = client
        self.project_id = project_id
        self.environment_id = environment_id
        self.service_id = service_id
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.label = (
            f"railway service {service_name or service_id} ({environment_name or environment_id})"
        )

    def __repr__(self) -> str:
        return f"RailwayConsumer({self.label!r})"

    def apply(
        self, variables: Mapping[str, SecretStr], *, progress: Progress | None = None
    ) -> None:
        _guarded(self.label, variables, lambda: self._apply(variables, progress or _quiet))

    def _apply(self, variables: Mapping[str, SecretStr], say: Progress) -> None:
        say(f"{self.label}: setting {', '.join(sorted(variables))} (no deploy yet)")
        self.client.upsert_variables(
            self.project_id,
            self.environment_id,
            {key: value.get_secret_value() for key, value in variables.items()},
            service_id=self.service_id,
            skip_deploys=True,
        )
        before = self.client.latest_deployment(
            self.project_id, self.environment_id, self.service_id
        )
        say(f"{self.label}: redeploying")
        self.client.redeploy(self.service_id, self.environment_id)

        def heard(deployment: RailwayDeployment) -> None:
            say(f"{self.label}: deployment {deployment.id} {deployment.status}")

        try:
            done = self.client.wait_for_deployment(
                self.project_id,
                self.environment_id,
                self.service_id,
                after=before.id if before else None,
                timeout_s=self.timeout_s,
                interval_s=self.interval_s,
                on_status=heard,
            )
        except OperationFailed as err:
            if err.details.get("timed_out"):
                raise _timed_out(self.label, err) from None
            raise
        if not done.succeeded:
            raise _verdict(self.label, done.id, done.status, platform="Railway")


class VercelConsumer:
    """A Vercel project: ``POST /v10/projects/{id}/env?upsert=true`` per variable, one
    redeploy of the newest production deployment, then its ``readyState`` until READY.

    Without ``production`` among ``targets`` nothing is redeployed: Vercel applies the
    values to the next preview deployments.
    """

    def __init__(
        self,
        client: VercelClient,
        project_id: str,
        targets: Sequence[str] = ("production", "preview"),
        timeout_s: float = 600.0,
        *,
        interval_s: float = 5.0,
        type: EnvType = "encrypted",
        project_name: str | None = None,
    ) -> None:
        self.client = client
        self.project_id = project_id
        self.targets = tuple(targets)
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.type: EnvType = type
        self.label = f"vercel project {project_name or project_id} ({', '.join(self.targets)})"

    def __repr__(self) -> str:
        return f"VercelConsumer({self.label!r})"

    def apply(
        self, variables: Mapping[str, SecretStr], *, progress: Progress | None = None
    ) -> None:
        _guarded(self.label, variables, lambda: self._apply(variables, progress or _quiet))

    def _apply(self, variables: Mapping[str, SecretStr], say: Progress) -> None:
        say(f"{self.label}: setting {', '.join(sorted(variables))}")
        for key, value in variables.items():
            self.client.upsert_env(
                self.project_id, key, value, targets=self.targets, type=self.type
            )
        if "production" not in self.targets:
            say(f"{self.label}: no production target; new preview deployments get the values")
            return
        latest = self.client.latest_deployment(self.project_id, "production")
        if latest is None:
            raise OperationFailed(
                f"{self.label} has no production deployment to redeploy.",
                hint="Deploy the project once (git push or vercel deploy --prod).",
                details={"consumer": self.label},
            )
        say(f"{self.label}: redeploying {latest.id}")
        started = self.client.redeploy(latest)

        def heard(deployment: VercelDeployment) -> None:
            say(f"{self.label}: deployment {deployment.id} {deployment.ready_state}")

        try:
            done = self.client.wait_ready(
                started.id,
                timeout_s=self.timeout_s,
                interval_s=self.interval_s,
                on_state=heard,
            )
        except OperationFailed as err:
            if err.details.get("timed_out"):
                raise _timed_out(self.label, err) from None
            raise
        if not done.ready:
            raise _verdict(self.label, done.id, done.ready_state, platform="Vercel")
