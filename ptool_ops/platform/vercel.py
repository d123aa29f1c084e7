"""A typed client for the parts of Vercel's REST API (``api.vercel.com``) that a credential
rotation needs: project environment variables, the newest deployment of a target, a
redeploy of it, and its ``readyState`` until Vercel's verdict.

Endpoints (``shared/reference/vercel-api.md``, and Vercel's REST reference for the two
reads it does not name):

* ``POST /v10/projects/{idOrName}/env?upsert=true`` — create or update one variable;
* ``GET /v10/projects/{idOrName}/env`` — list the variables (values never read here);
* ``GET /v6/deployments?projectId=&target=&limit=1`` — newest deployment (``uid``, ``state``);
* ``POST /v13/deployments?forceNew=1`` with ``{deploymentId, name, target, meta:
  {action: "redeploy"}}`` — what ``vercel redeploy`` sends;
* ``GET /v13/deployments/{idOrUrl}`` — one deployment (``id``, ``readyState``).

Every request carries ``teamId`` when the client has one. HTTP failures map as in ``_http``
(5xx and timeouts → ``ServiceUnavailable`` after the retries), with a 401/403 naming the
``vercel_token`` setting and a 404 naming the project or deployment. No message ever
quotes a request body, so variable values stay out of errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr

from ptool_ops.errors import ConfigError, OperationFailed
from ptool_ops.platform._http import Backoff, HttpClient, NotFound, send, tls_context

if TYPE_CHECKING:
    from ptool_ops.settings import EnvironmentSettings

DEFAULT_API_URL = "https://api.vercel.com"
SETTING_HINT = "Set vercel_token (PTOOL_VERCEL_TOKEN) to a Vercel token with access to the project."

#: ``readyState`` values by verdict; QUEUED, BUILDING, INITIALIZING (and anything new) wait
READY_STATES = frozenset({"READY"})
FAILED_STATES = frozenset({"ERROR", "CANCELED", "DELETED"})

EnvType = Literal["encrypted", "sensitive"]

__all__ = [
    "DEFAULT_API_URL",
    "Backoff",
    "NotFound",
    "VercelClient",
    "VercelDeployment",
    "VercelEnvVar",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class VercelEnvVar(_Model):
    """A project variable as listed; its value is deliberately not kept."""

    id: str
    key: str
    type: str
    target: list[str] = Field(default_factory=list)


class VercelDeployment(_Model):
    """A deployment, from the list (``uid``, ``state``) or the single read (``id``,
    ``readyState``)."""

    id: str = Field(validation_alias=AliasChoices("id", "uid"))
    name: str
    ready_state: str = Field(validation_alias=AliasChoices("readyState", "state"))
    target: str | None = None
    url: str | None = None

    @property
    def ready(self) -> bool:
        return self.ready_state in READY_STATES

    @property
    def failed(self) -> bool:
        return self.ready_state in FAILED_STATES

    @property
    def finished(self) -> bool:
        return self.ready or self.failed


class VercelClient(HttpClient):
    """Vercel REST over one ``httpx.Client`` (Bearer token); a context manager."""

    def __init__(
        self,
        token: SecretStr | str,
        *,
        team_id: str | None = None,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        value = token.get_secret_value() if isinstance(token, SecretStr) else token
        if not value:
            raise ConfigError("no Vercel token is set.", hint=SETTING_HINT)
        self.base_url = base_url.rstrip("/")
        self.team_id = team_id
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {value}"},
            timeout=timeout,
            transport=transport,
            verify=tls_context(),
        )

    @classmethod
    def from_settings(cls, settings: EnvironmentSettings, **kwargs: Any) -> VercelClient:
        if settings.vercel_token is None:
            raise ConfigError(
                f"environment {settings.name!r} has no vercel_token.", hint=SETTING_HINT
            )
        kwargs.setdefault("base_url", settings.vercel_api_url)
        return cls(settings.vercel_token, team_id=settings.vercel_team_id, **kwargs)

    # -- plumbing -------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        missing: str,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        """One request; return its JSON body. ``missing`` is the sentence for a 404."""
        query = dict(params or {})
        if self.team_id:
            query["teamId"] = self.team_id
        try:
            response = send(
                self._http,
                method,
                f"{self.base_url}{path}",
                service="Vercel",
                what=what,
                backoff=self.backoff,
                sleep=self._sleep,
                idempotent=idempotent,
                params=query,
                json=json,
            )
        except ConfigError as err:  # 401/403: the token
            raise ConfigError(
                f"{err.message.rstrip('.')}: check the vercel_token setting.", hint=SETTING_HINT
            ) from None
        except NotFound:
            team = f" in team {self.team_id}" if self.team_id else ""
            raise NotFound(
                f"{missing}{team} (HTTP 404).",
                hint="Check vercel_project_id and vercel_team_id, and the token's scope.",
            ) from None
        try:
            return response.json()
        except ValueError:
            raise OperationFailed(f"Vercel answered {what} with a body that is not JSON.") from None

    # -- environment variables ------------------------------------------------------------

    def upsert_env(
        self,
        project_id: str,
        key: str,
        value: SecretStr | str,
        *,
        targets: Iterable[str] = ("production", "preview"),
        type: EnvType = "encrypted",
    ) -> None:
        """Create variable ``key`` for ``targets``, or update it in place."""
        plain = value.get_secret_value() if isinstance(value, SecretStr) else value
        body = self._call(
            "POST",
            f"/v10/projects/{project_id}/env",
            what=f"set variable {key} of project {project_id}",
            missing=f"Vercel has no project {project_id}",
            params={"upsert": "true"},
            json={"key": key, "value": plain, "type": type, "target": list(targets)},
            idempotent=True,  # an upsert of the same value may be resent
        )
        failed = body.get("failed") if isinstance(body, dict) else None
        if failed:
            error = failed[0].get("error", {}) if isinstance(failed[0], dict) else {}
            code = error.get("code", "unknown") if isinstance(error, dict) else "unknown"
            raise OperationFailed(
                f"Vercel did not set variable {key} of project {project_id} ({code})."
            )

    def list_env(self, project_id: str) -> list[VercelEnvVar]:
        body = self._call(
            "GET",
            f"/v10/projects/{project_id}/env",
            what=f"list the variables of project {project_id}",
            missing=f"Vercel has no project {project_id}",
        )
        return [VercelEnvVar.model_validate(env) for env in body.get("envs", [])]

    # -- deployments ----------------------------------------------------------------------

    def latest_deployment(
        self, project_id: str, target: str = "production"
    ) -> VercelDeployment | None:
        body = self._call(
            "GET",
            "/v6/deployments",
            what=f"list the {target} deployments of project {project_id}",
            missing=f"Vercel has no project {project_id}",
            params={"projectId": project_id, "target": target, "limit": "1"},
        )
        found = body.get("deployments") or []
        return VercelDeployment.model_validate(found[0]) if found else None

    def redeploy(self, deployment: VercelDeployment) -> VercelDeployment:
        """A new build of ``deployment`` (same source, the project's current variables)."""
        payload: dict[str, Any] = {
            "deploymentId": deployment.id,
            "name": deployment.name,
            "meta": {"action": "redeploy"},
        }
        if deployment.target == "production":
            payload["target"] = "production"
        body = self._call(
            "POST",
            "/v13/deployments",
            what=f"redeploy deployment {deployment.id}",
            missing=f"Vercel has no deployment {deployment.id} to redeploy",
            params={"forceNew": "1"},
            json=payload,
        )
        return VercelDeployment.model_validate(body)

    def get_deployment(self, deployment_id: str) -> VercelDeployment:
        body = self._call(
            "GET",
            f"/v13/deployments/{deployment_id}",
            what=f"read deployment {deployment_id}",
            missing=f"Vercel has no deployment {deployment_id}",
        )
        return VercelDeployment.model_validate(body)

    def wait_ready(
        self,
        deployment_id: str,
        *,
        timeout_s: float = 600.0,
        interval_s: float = 5.0,
        on_state: Callable[[VercelDeployment], None] | None = None,
    ) -> VercelDeployment:
        """Poll the deployment until READY, ERROR or CANCELED; return it.

        ``on_state`` hears every change of ``readyState``. Past ``timeout_s`` raise
        ``OperationFailed`` whose ``details`` hold ``timed_out``, ``deployment_id`` and
        ``status``.
        """
        start = self._clock()
        last: str | None = None
        while True:
            current = self.get_deployment(deployment_id)
            if on_state is not None and current.ready_state != last:
                on_state(current)
            last = current.ready_state
            if current.finished:
                return current
            waited = self._clock() - start
            if waited >= timeout_s:
                raise OperationFailed(
                    f"Vercel deployment {deployment_id} is still {last} after {waited:.0f} s.",
                    hint="Look at the deployment in Vercel; raise the timeout if builds are slow.",
                    details={
                        "timed_out": True,
                        "deployment_id": deployment_id,
                        "status": last,
                        "waited_s": round(waited, 1),
                    },
                )
            self._sleep(max(min(interval_s, timeout_s - waited), 0.0))
