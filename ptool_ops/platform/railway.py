"""A typed client for Railway's public GraphQL API (``backboard.railway.com/graphql/v2``).

Covers what the stacks and the operations code need: projects, environments (including
ephemeral PR environments), services, service instance settings (health check, overlap and
draining seconds for zero-downtime deploys), variables, service domains, redeploys, and
deployment status (``wait_for_deployment`` polls a redeploy until Railway's verdict, as
``railway up`` does: SUCCESS is done, FAILED/CRASHED/REMOVED/SKIPPED are failures).

Operation documents follow the signatures of Railway's schema as the Railway CLI uses them
(``railwayapp/cli:src/gql``; see ``shared/reference/railway-api.md``). GraphQL errors
arrive with HTTP 200: "Not Authorized" becomes ``ConfigError``, "... not found" becomes
``NotFound``, anything else ``OperationFailed``; HTTP failures map as in ``_http``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ptool_ops.errors import ConfigError, OperationFailed, PtoolError, quoted_forms
from ptool_ops.platform._http import Backoff, HttpClient, NotFound, send, tls_context

if TYPE_CHECKING:
    from ptool_ops.settings import EnvironmentSettings

DEFAULT_API_URL = "https://backboard.railway.com/graphql/v2"

__all__ = [
    "DEFAULT_API_URL",
    "Backoff",
    "NotFound",
    "RailwayClient",
    "RailwayDeployment",
    "RailwayEnvironment",
    "RailwayProject",
    "RailwayService",
    "ServiceDomain",
    "ServiceInstanceSettings",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class RailwayEnvironment(_Model):
    id: str
    name: str


class RailwayService(_Model):
    id: str
    name: str


class RailwayProject(_Model):
    id: str
    name: str
    environments: list[RailwayEnvironment] = Field(default_factory=list)
    services: list[RailwayService] = Field(default_factory=list)


class ServiceDomain(_Model):
    id: str
    domain: str


#: ``DeploymentStatus`` values (railwayapp/cli ``schema.json``) by verdict; any other value
#: (BUILDING, DEPLOYING, INITIALIZING, QUEUED, WAITING, NEEDS_APPROVAL, ...) is still going
DEPLOYMENT_SUCCEEDED = frozenset({"SUCCESS", "SLEEPING"})  # sleeping: it started, then idled
DEPLOYMENT_FAILED = frozenset({"FAILED", "CRASHED", "REMOVED", "REMOVING", "SKIPPED"})


class RailwayDeployment(_Model):
    id: str
    status: str
    created_at: str | None = Field(default=None, alias="createdAt")

    @property
    def succeeded(self) -> bool:
        return self.status in DEPLOYMENT_SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.status in DEPLOYMENT_FAILED

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed


class ServiceInstanceSettings(BaseModel):
    """The service instance settings the stacks manage (GraphQL names as aliases)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    healthcheck_path: str | None = Field(default=None, alias="healthcheckPath")
    healthcheck_timeout: int | None = Field(default=None, alias="healthcheckTimeout")
    overlap_seconds: int | None = Field(default=None, alias="overlapSeconds")
    draining_seconds: int | None = Field(default=None, alias="drainingSeconds")
    num_replicas: int | None = Field(default=None, alias="numReplicas")
    start_command: str | None = Field(default=None, alias="startCommand")
    root_directory: str | None = Field(default=None, alias="rootDirectory")

    def graphql(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


_PROJECT_FIELDS = """
  id name
  environments { edges { node { id name } } }
  services { edges { node { id name } } }
"""


def _edges(conn: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [edge["node"] for edge in (conn or {}).get("edges", [])]


def _project(data: Mapping[str, Any]) -> RailwayProject:
    return RailwayProject(
        id=data["id"],
        name=data["name"],
        environments=[
            RailwayEnvironment.model_validate(n) for n in _edges(data.get("environments"))
        ],
        services=[RailwayService.model_validate(n) for n in _edges(data.get("services"))],
    )


class RailwayClient(HttpClient):
    """Railway GraphQL over one ``httpx.Client``; use as a context manager or ``close()``.

    ``auth="project"`` sends a project token (``Project-Access-Token``), which is
    scoped to one environment; account and workspace tokens go as ``Bearer``.
    """

    def __init__(
        self,
        token: SecretStr | str,
        *,
        base_url: str = DEFAULT_API_URL,
        auth: Literal["bearer", "project"] = "bearer",
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        value = token.get_secret_value() if isinstance(token, SecretStr) else token
        if not value:
            raise ConfigError(
                "no Railway token is set.",
                hint="Set railway_token (PTOOL_RAILWAY_TOKEN) or RAILWAY_API_TOKEN.",
            )
        header = (
            {"Project-Access-Token": value}
            if auth == "project"
            else {"Authorization": f"Bearer {value}"}
        )
        self.base_url = base_url
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            headers=header, timeout=timeout, transport=transport, verify=tls_context()
        )

    @classmethod
    def from_settings(cls, settings: EnvironmentSettings, **kwargs: Any) -> RailwayClient:
        if settings.railway_token is None:
            raise ConfigError(
                f"environment {settings.name!r} has no railway_token.",
                hint="Set PTOOL_RAILWAY_TOKEN (or railway_token in ptool-ops.toml).",
            )
        kwargs.setdefault("base_url", settings.railway_api_url)
        return cls(settings.railway_token, **kwargs)

    def execute(self, document: str, variables: Mapping[str, Any], *, what: str) -> dict[str, Any]:
        """Run one GraphQL document; return ``data`` or raise a ``PtoolError``."""
        response = send(
            self._http,
            "POST",
            self.base_url,
            service="Railway",
            what=what,
            backoff=self.backoff,
            sleep=self._sleep,
            # a query may be resent after a network error; a mutation may have been applied
            idempotent=document.lstrip().startswith("query"),
            json={"query": document, "variables": dict(variables)},
        )
        try:
            body = response.json()
        except ValueError:
            raise OperationFailed(
                f"Railway answered {what} with a body that is not JSON."
            ) from None
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            message = str(errors[0].get("message", "unknown error")).strip().rstrip(".")
            lowered = message.lower()
            if "not authorized" in lowered or "unauthorized" in lowered:
                raise ConfigError(
                    f"Railway refused to {what}: {message}.",
                    hint="Check that the Railway token is valid and has access to the project.",
                )
            if "not found" in lowered:
                raise NotFound(f"Railway could not {what}: {message}.")
            raise OperationFailed(f"Railway could not {what}: {message}.")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise OperationFailed(f"Railway answered {what} without data.")
        return data

    # -- projects -------------------------------------------------------------------------

    def get_project(self, project_id: str) -> RailwayProject | None:
        try:
            data = self.execute(
                f"query project($id: String!) {{ project(id: $id) {{ {_PROJECT_FIELDS} }} }}",
                {"id": project_id},
                what=f"read project {project_id}",
            )
        except NotFound:
            return None
        return _project(data["project"])

    def find_project(self, name: str, *, workspace_id: str | None = None) -> RailwayProject | None:
        data = self.execute(
            "query projects($workspaceId: String) { projects(workspaceId: $workspaceId) "
            "{ edges { node { id name } } } }",
            {"workspaceId": workspace_id},
            what=f"list projects named {name}",
        )
        for node in _edges(data["projects"]):
            if node["name"] == name:
                return self.get_project(node["id"])
        return None

    def create_project(
        self,
        name: str,
        *,
        description: str | None = None,
        workspace_id: str | None = None,
        default_environment_name: str | None = None,
        pr_deploys: bool | None = None,
    ) -> RailwayProject:
        payload: dict[str, Any] = {"name": name}
        for key, value in (
            ("description", description),
            ("workspaceId", workspace_id),
            ("defaultEnvironmentName", default_environment_name),
            ("prDeploys", pr_deploys),
        ):
            if value is not None:
                payload[key] = value
        data = self.execute(
            "mutation projectCreate($input: ProjectCreateInput!) "
            f"{{ projectCreate(input: $input) {{ {_PROJECT_FIELDS} }} }}",
            {"input": payload},
            what=f"create project {name}",
        )
        return _project(data["projectCreate"])

    def update_project(self, project_id: str, *, name: str, description: str | None) -> None:
        self.execute(
            "mutation projectUpdate($id: String!, $input: ProjectUpdateInput!) "
            "{ projectUpdate(id: $id, input: $input) { id } }",
            {"id": project_id, "input": {"name": name, "description": description}},
            what=f"update project {project_id}",
        )

    def delete_project(self, project_id: str) -> bool:
        return self._delete("projectDelete", project_id, f"delete project {project_id}")

    # -- environments ---------------------------------------------------------------------

    def find_environment(self, project_id: str, name: str) -> RailwayEnvironment | None:
        project = self.get_project(project_id)
        if project is None:
            raise NotFound(f"Railway has no project {project_id}.")
        return next((e for e in project.environments if e.name == name), None)

    def create_environment(
        self,
        project_id: str,
        name: str,
        *,
        source_environment_id: str | None = None,
        ephemeral: bool | None = None,
    ) -> RailwayEnvironment:
        payload: dict[str, Any] = {"projectId": project_id, "name": name}
        if source_environment_id:
            payload["sourceEnvironmentId"] = source_environment_id
        if ephemeral is not None:
            payload["ephemeral"] = ephemeral
        data = self.execute(
            "mutation environmentCreate($input: EnvironmentCreateInput!) "
            "{ environmentCreate(input: $input) { id name } }",
            {"input": payload},
            what=f"create environment {name}",
        )
        return RailwayEnvironment.model_validate(data["environmentCreate"])

    def delete_environment(self, environment_id: str) -> bool:
        return self._delete(
            "environmentDelete", environment_id, f"delete environment {environment_id}"
        )

    # -- services -------------------------------------------------------------------------

    def find_service(self, project_id: str, name: str) -> RailwayService | None:
        project = self.get_project(project_id)
        if project is None:
            raise NotFound(f"Railway has no project {project_id}.")
        return next((s for s in project.services if s.name == name), None)

    def create_service(
        self,
        project_id: str,
        name: str,
        *,
        repo: str | None = None,
        image: str | None = None,
        branch: str | None = None,
    ) -> RailwayService:
        payload: dict[str, Any] = {"projectId": project_id, "name": name}
        if repo or image:
            payload["source"] = {"repo": repo} if repo else {"image": image}
        if branch:
            payload["branch"] = branch
        data = self.execute(
            "mutation serviceCreate($input: ServiceCreateInput!) "
            "{ serviceCreate(input: $input) { id name } }",
            {"input": payload},
            what=f"create service {name}",
        )
        return RailwayService.model_validate(data["serviceCreate"])

    def delete_service(self, service_id: str) -> bool:
        return self._delete("serviceDelete", service_id, f"delete service {service_id}")

    def get_service_instance(self, service_id: str, environment_id: str) -> ServiceInstanceSettings:
        data = self.execute(
            "query serviceInstance($environmentId: String!, $serviceId: String!) "
            "{ serviceInstance(environmentId: $environmentId, serviceId: $serviceId) "
            "{ healthcheckPath healthcheckTimeout overlapSeconds drainingSeconds numReplicas "
            "startCommand rootDirectory } }",
            {"environmentId": environment_id, "serviceId": service_id},
            what=f"read the settings of service {service_id}",
        )
        return ServiceInstanceSettings.model_validate(data["serviceInstance"])

    def update_service_instance(
        self, service_id: str, environment_id: str, settings: ServiceInstanceSettings
    ) -> None:
        self.execute(
            "mutation serviceInstanceUpdate($serviceId: String!, $environmentId: String, "
            "$input: ServiceInstanceUpdateInput!) { serviceInstanceUpdate(serviceId: $serviceId, "
            "environmentId: $environmentId, input: $input) }",
            {"serviceId": service_id, "environmentId": environment_id, "input": settings.graphql()},
            what=f"update the settings of service {service_id}",
        )

    def redeploy(self, service_id: str, environment_id: str) -> None:
        self.execute(
            "mutation serviceInstanceRedeploy($environmentId: String!, $serviceId: String!) "
            "{ serviceInstanceRedeploy(environmentId: $environmentId, serviceId: $serviceId) }",
            {"environmentId": environment_id, "serviceId": service_id},
            what=f"redeploy service {service_id}",
        )

    # -- deployments ----------------------------------------------------------------------

    def latest_deployment(
        self, project_id: str, environment_id: str, service_id: str
    ) -> RailwayDeployment | None:
        """The service's newest deployment in the environment, if it has any."""
        data = self.execute(
            "query deployments($input: DeploymentListInput!, $first: Int) "
            "{ deployments(input: $input, first: $first) "
            "{ edges { node { id status createdAt } } } }",
            {
                "input": {
                    "projectId": project_id,
                    "environmentId": environment_id,
                    "serviceId": service_id,
                },
                "first": 1,
            },
            what=f"list the deployments of service {service_id}",
        )
        nodes = _edges(data["deployments"])
        return RailwayDeployment.model_validate(nodes[0]) if nodes else None

    def get_deployment(self, deployment_id: str) -> RailwayDeployment:
        data = self.execute(
            "query deployment($id: String!) { deployment(id: $id) { id status createdAt } }",
            {"id": deployment_id},
            what=f"read deployment {deployment_id}",
        )
        return RailwayDeployment.model_validate(data["deployment"])

    def wait_for_deployment(
        self,
        project_id: str,
        environment_id: str,
        service_id: str,
        *,
        after: str | None = None,
        timeout_s: float = 600.0,
        interval_s: float = 5.0,
        on_status: Callable[[RailwayDeployment], None] | None = None,
    ) -> RailwayDeployment:
        """Wait for the service's newest deployment other than ``after`` (the one that was
        newest before a redeploy) to finish; return it, succeeded or failed.

        ``on_status`` hears every status change. If no new deployment appears, or it has
        not finished, within ``timeout_s``, raise ``OperationFailed`` whose ``details``
        hold ``timed_out``, ``deployment_id`` (or None) and ``status``.
        """
        start = self._clock()
        seen: RailwayDeployment | None = None
        while True:
            if seen is None:
                newest = self.latest_deployment(project_id, environment_id, service_id)
                current = newest if newest is not None and newest.id != after else None
            else:
                current = self.get_deployment(seen.id)
            if current is not None:
                if on_status is not None and (seen is None or seen.status != current.status):
                    on_status(current)
                seen = current
                if current.finished:
                    return current
            waited = self._clock() - start
            if waited >= timeout_s:
                what = (
                    f"deployment {seen.id} of service {service_id} is still {seen.status}"
                    if seen
                    else f"no new deployment of service {service_id} appeared"
                )
                raise OperationFailed(
                    f"Railway {what} after {waited:.0f} s.",
                    hint="Look at the deployment in Railway; raise the timeout if builds are slow.",
                    details={
                        "timed_out": True,
                        "deployment_id": seen.id if seen else None,
                        "status": seen.status if seen else None,
                        "waited_s": round(waited, 1),
                    },
                )
            self._sleep(max(min(interval_s, timeout_s - waited), 0.0))

    # -- variables ------------------------------------------------------------------------

    def get_variables(
        self, project_id: str, environment_id: str, service_id: str | None = None
    ) -> dict[str, SecretStr]:
        """The variables (unrendered: ``${{...}}`` references kept), values as secrets."""
        data = self.execute(
            "query variables($projectId: String!, $environmentId: String!, $serviceId: String) "
            "{ variables(projectId: $projectId, environmentId: $environmentId, "
            "serviceId: $serviceId, unrendered: true) }",
            {"projectId": project_id, "environmentId": environment_id, "serviceId": service_id},
            what="read variables",
        )
        return {k: SecretStr(str(v)) for k, v in (data["variables"] or {}).items()}

    def upsert_variables(
        self,
        project_id: str,
        environment_id: str,
        variables: Mapping[str, str],
        *,
        service_id: str | None = None,
        replace: bool = False,
        skip_deploys: bool = False,
    ) -> None:
        payload: dict[str, Any] = {
            "projectId": project_id,
            "environmentId": environment_id,
            "variables": dict(variables),
            "replace": replace,
            "skipDeploys": skip_deploys,
        }
        if service_id:
            payload["serviceId"] = service_id
        what = f"set {len(variables)} variable(s)"
        try:
            self.execute(
                "mutation variableCollectionUpsert($input: VariableCollectionUpsertInput!) "
                "{ variableCollectionUpsert(input: $input) }",
                {"input": payload},
                what=what,
            )
        except PtoolError as err:
            # a GraphQL server that cannot coerce an input quotes it in its error
            said = f"{err.message} {err.hint}"
            if not any(form in said for form in quoted_forms(variables.values())):
                raise
            withheld = type(err)(
                f"Railway could not {what} (its answer quoted a value and is withheld).",
                hint=err.hint,
            )
        else:
            return
        raise withheld

    def delete_variable(
        self, project_id: str, environment_id: str, name: str, *, service_id: str | None = None
    ) -> bool:
        payload: dict[str, Any] = {
            "projectId": project_id,
            "environmentId": environment_id,
            "name": name,
        }
        if service_id:
            payload["serviceId"] = service_id
        try:
            self.execute(
                "mutation variableDelete($input: VariableDeleteInput!) "
                "{ variableDelete(input: $input) }",
                {"input": payload},
                what=f"delete variable {name}",
            )
        except NotFound:
            return False
        return True

    # -- domains --------------------------------------------------------------------------

    def service_domains(
        self, project_id: str, environment_id: str, service_id: str
    ) -> list[ServiceDomain]:
        data = self.execute(
            "query domains($projectId: String!, $environmentId: String!, $serviceId: String!) "
            "{ domains(projectId: $projectId, environmentId: $environmentId, "
            "serviceId: $serviceId) { serviceDomains { id domain } } }",
            {"projectId": project_id, "environmentId": environment_id, "serviceId": service_id},
            what=f"list the domains of service {service_id}",
        )
        return [ServiceDomain.model_validate(d) for d in data["domains"]["serviceDomains"]]

    def create_service_domain(
        self, environment_id: str, service_id: str, *, target_port: int | None = None
    ) -> ServiceDomain:
        payload: dict[str, Any] = {"environmentId": environment_id, "serviceId": service_id}
        if target_port is not None:
            payload["targetPort"] = target_port
        data = self.execute(
            "mutation serviceDomainCreate($input: ServiceDomainCreateInput!) "
            "{ serviceDomainCreate(input: $input) { id domain } }",
            {"input": payload},
            what=f"create a domain for service {service_id}",
        )
        return ServiceDomain.model_validate(data["serviceDomainCreate"])

    def delete_service_domain(self, domain_id: str) -> bool:
        return self._delete("serviceDomainDelete", domain_id, f"delete domain {domain_id}")

    def _delete(self, mutation: str, object_id: str, what: str) -> bool:
        try:
            self.execute(
                f"mutation {mutation}($id: String!) {{ {mutation}(id: $id) }}",
                {"id": object_id},
                what=what,
            )
        except NotFound:
            return False
        return True
