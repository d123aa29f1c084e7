"""Dynamic providers over Railway's public GraphQL API
(``ptool_ops.platform.railway.RailwayClient``). No Pulumi provider for Railway exists.

* ``RailwayProject`` — a project (one per long-lived environment); name and description
  update in place; the workspace replaces.
* ``RailwayEnvironment`` — an environment of a project, e.g. a pull request's ephemeral copy
  of staging (``source_environment_id``); every input replaces.
* ``RailwayService`` — a service of a project (its source repository and branch).
* ``RailwayServiceInstance`` — a service's settings in one environment (health-check path,
  overlap and draining seconds for zero-downtime deploys, replicas, start command) and its
  Railway-provided domain; settings update in place. Deleting it deletes the domain only:
  the settings live and die with the environment.
* ``RailwayVariables`` — a set of variables of a service in an environment, all values
  secret (declared with ``additional_secret_outputs``); updates upsert the new set and delete
  the names no longer declared; variables not declared here are left alone. With
  ``create_only`` (a value the rotation engine owns) only ``create`` writes them.

``create`` looks up by name first (project, environment, service, domain), so an interrupted
create is completed by its retry instead of duplicated; ``delete`` tolerates "not found".
"""

from __future__ import annotations

from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, UpdateResult
from pydantic import Field, field_validator

from components.providers._base import PROVIDER_VERSION, ApiProvider, ProviderInputs, outputs
from ptool_ops.platform.railway import DEFAULT_API_URL, RailwayClient, ServiceInstanceSettings

_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _RailwayProvider(ApiProvider):
    SERVICE = "Railway"
    KEY_CONFIG = "railwayToken"
    KEY_ENV = "RAILWAY_API_TOKEN"
    URL_CONFIG = "railwayApiUrl"
    URL_ENV = "RAILWAY_API_URL"
    DEFAULT_URL = DEFAULT_API_URL

    def client(self) -> RailwayClient:
        key, url = self.credentials()
        return RailwayClient(key, base_url=url)


# -- project ----------------------------------------------------------------------------


class ProjectInputs(ProviderInputs):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = None
    workspace_id: str | None = None


class RailwayProjectProvider(_RailwayProvider):
    INPUTS = ProjectInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset({"workspace_id"})

    def _outs(self, rail: RailwayClient, inputs: ProjectInputs, project_id: str) -> dict[str, Any]:
        project = rail.get_project(project_id)
        if project is None:
            raise RuntimeError(f"Railway project {project_id} vanished")
        envs = project.environments
        default = next((e.id for e in envs if e.name == "production"), envs[0].id if envs else None)
        return outputs(inputs, project_id=project.id, default_environment_id=default)

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: ProjectInputs = self.parse(props)
        with self.client() as rail:
            found = rail.find_project(inputs.name, workspace_id=inputs.workspace_id)
            project_id = (
                found.id
                if found is not None
                else rail.create_project(
                    inputs.name, description=inputs.description, workspace_id=inputs.workspace_id
                ).id
            )
            return CreateResult(project_id, self._outs(rail, inputs, project_id))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as rail:
            return ReadResult(id_, self._outs(rail, self.parse(props), id_))

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs: ProjectInputs = self.parse(news)
        with self.client() as rail:
            rail.update_project(id_, name=inputs.name, description=inputs.description)
            return UpdateResult(self._outs(rail, inputs, id_))

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        with self.client() as rail:
            rail.delete_project(id_)


class RailwayProject(Resource, module="railway", name="Project"):
    project_id: pulumi.Output[str]
    default_environment_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        name: pulumi.Input[str],
        description: pulumi.Input[str] | None = None,
        workspace_id: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "name": name,
            "description": description,
            "workspace_id": workspace_id,
            "version": PROVIDER_VERSION,
            "project_id": None,
            "default_environment_id": None,
        }
        super().__init__(RailwayProjectProvider(), resource_name, props, opts)


# -- environment ------------------------------------------------------------------------


class EnvironmentInputs(ProviderInputs):
    project_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=100)
    source_environment_id: str | None = None
    ephemeral: bool = False


class RailwayEnvironmentProvider(_RailwayProvider):
    INPUTS = EnvironmentInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset(
        {"project_id", "name", "source_environment_id", "ephemeral"}
    )

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: EnvironmentInputs = self.parse(props)
        with self.client() as rail:
            found = rail.find_environment(inputs.project_id, inputs.name)
            env = found or rail.create_environment(
                inputs.project_id,
                inputs.name,
                source_environment_id=inputs.source_environment_id,
                ephemeral=inputs.ephemeral,
            )
            return CreateResult(env.id, outputs(inputs, environment_id=env.id))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        inputs: EnvironmentInputs = self.parse(props)
        with self.client() as rail:
            env = rail.find_environment(inputs.project_id, inputs.name)
            if env is None or env.id != id_:
                return ReadResult(None, None)
            return ReadResult(id_, outputs(inputs, environment_id=env.id))

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # only `version` can change in place
        return UpdateResult(outputs(self.parse(news), environment_id=id_))

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        with self.client() as rail:
            rail.delete_environment(id_)


class RailwayEnvironment(Resource, module="railway", name="Environment"):
    environment_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        project_id: pulumi.Input[str],
        name: pulumi.Input[str],
        source_environment_id: pulumi.Input[str] | None = None,
        ephemeral: pulumi.Input[bool] = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "project_id": project_id,
            "name": name,
            "source_environment_id": source_environment_id,
            "ephemeral": ephemeral,
            "version": PROVIDER_VERSION,
            "environment_id": None,
        }
        super().__init__(RailwayEnvironmentProvider(), resource_name, props, opts)


# -- service ----------------------------------------------------------------------------


class ServiceInputs(ProviderInputs):
    project_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=100)
    repo: str | None = Field(default=None, pattern=r"^[\w.-]+/[\w.-]+$")
    branch: str | None = None


class RailwayServiceProvider(_RailwayProvider):
    INPUTS = ServiceInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset({"project_id", "name", "repo", "branch"})

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: ServiceInputs = self.parse(props)
        with self.client() as rail:
            found = rail.find_service(inputs.project_id, inputs.name)
            service = found or rail.create_service(
                inputs.project_id, inputs.name, repo=inputs.repo, branch=inputs.branch
            )
            return CreateResult(service.id, outputs(inputs, service_id=service.id))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        inputs: ServiceInputs = self.parse(props)
        with self.client() as rail:
            service = rail.find_service(inputs.project_id, inputs.name)
            if service is None or service.id != id_:
                return ReadResult(None, None)
            return ReadResult(id_, outputs(inputs, service_id=id_))

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outputs(self.parse(news), service_id=id_))

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        with self.client() as rail:
            rail.delete_service(id_)


class RailwayService(Resource, module="railway", name="Service"):
    service_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        project_id: pulumi.Input[str],
        name: pulumi.Input[str],
        repo: pulumi.Input[str] | None = None,
        branch: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "project_id": project_id,
            "name": name,
            "repo": repo,
            "branch": branch,
            "version": PROVIDER_VERSION,
            "service_id": None,
        }
        super().__init__(RailwayServiceProvider(), resource_name, props, opts)


# -- service instance -------------------------------------------------------------------


class InstanceInputs(ProviderInputs):
    project_id: str = Field(min_length=1)
    environment_id: str = Field(min_length=1)
    service_id: str = Field(min_length=1)
    healthcheck_path: str = Field(pattern=r"^/")
    healthcheck_timeout: int = Field(default=60, ge=1, le=3600)
    overlap_seconds: int = Field(default=0, ge=0, le=3600)
    draining_seconds: int = Field(default=0, ge=0, le=3600)
    num_replicas: int = Field(default=1, ge=1, le=50)
    start_command: str | None = None
    target_port: int | None = Field(default=None, ge=1, le=65535)

    def settings(self) -> ServiceInstanceSettings:
        return ServiceInstanceSettings.model_validate(
            self.model_dump(
                include={
                    "healthcheck_path",
                    "healthcheck_timeout",
                    "overlap_seconds",
                    "draining_seconds",
                    "num_replicas",
                    "start_command",
                }
            )
        )


class RailwayServiceInstanceProvider(_RailwayProvider):
    INPUTS = InstanceInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset(
        {"project_id", "environment_id", "service_id", "target_port"}
    )

    def _apply(self, rail: RailwayClient, inputs: InstanceInputs) -> dict[str, Any]:
        rail.update_service_instance(inputs.service_id, inputs.environment_id, inputs.settings())
        domains = rail.service_domains(inputs.project_id, inputs.environment_id, inputs.service_id)
        domain = (
            domains[0]
            if domains
            else rail.create_service_domain(
                inputs.environment_id, inputs.service_id, target_port=inputs.target_port
            )
        )
        return outputs(inputs, domain=domain.domain, domain_id=domain.id)

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: InstanceInputs = self.parse(props)
        with self.client() as rail:
            outs = self._apply(rail, inputs)
        return CreateResult(f"{inputs.service_id}:{inputs.environment_id}", outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        inputs: InstanceInputs = self.parse(props)
        with self.client() as rail:
            live = rail.get_service_instance(inputs.service_id, inputs.environment_id)
            domains = rail.service_domains(
                inputs.project_id, inputs.environment_id, inputs.service_id
            )
        fields = {k: v for k, v in live.model_dump().items() if v is not None}
        current = inputs.model_copy(update=fields)
        domain = domains[0] if domains else None
        return ReadResult(
            id_,
            outputs(
                current,
                domain=domain.domain if domain else None,
                domain_id=domain.id if domain else None,
            ),
        )

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs: InstanceInputs = self.parse(news)
        with self.client() as rail:
            return UpdateResult(self._apply(rail, inputs))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        domain_id = props.get("domain_id")
        if domain_id:
            with self.client() as rail:
                rail.delete_service_domain(str(domain_id))


class RailwayServiceInstance(Resource, module="railway", name="ServiceInstance"):
    domain: pulumi.Output[str]
    domain_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        project_id: pulumi.Input[str],
        environment_id: pulumi.Input[str],
        service_id: pulumi.Input[str],
        healthcheck_path: pulumi.Input[str],
        healthcheck_timeout: pulumi.Input[int] = 60,
        overlap_seconds: pulumi.Input[int] = 0,
        draining_seconds: pulumi.Input[int] = 0,
        num_replicas: pulumi.Input[int] = 1,
        start_command: pulumi.Input[str] | None = None,
        target_port: pulumi.Input[int] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "project_id": project_id,
            "environment_id": environment_id,
            "service_id": service_id,
            "healthcheck_path": healthcheck_path,
            "healthcheck_timeout": healthcheck_timeout,
            "overlap_seconds": overlap_seconds,
            "draining_seconds": draining_seconds,
            "num_replicas": num_replicas,
            "start_command": start_command,
            "target_port": target_port,
            "version": PROVIDER_VERSION,
            "domain": None,
            "domain_id": None,
        }
        super().__init__(RailwayServiceInstanceProvider(), resource_name, props, opts)


# -- variables --------------------------------------------------------------------------


class VariablesInputs(ProviderInputs):
    project_id: str = Field(min_length=1)
    environment_id: str = Field(min_length=1)
    service_id: str | None = None
    variables: dict[str, str]
    skip_deploys: bool = False
    sensitive: bool = True  # False: plain values from stack config (checked by the policy pack)
    #: written when created, never again: something else (the rotation engine) owns them
    create_only: bool = False

    @field_validator("variables")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        bad = sorted(k for k in value if not re.match(_VAR_NAME, k))
        if bad:
            raise ValueError(f"invalid variable name(s): {', '.join(bad)}")
        return value


class RailwayVariablesProvider(_RailwayProvider):
    """``create_only``: the values are written by ``create`` alone; a changed value is no
    change, and an update (e.g. a new ``version``) writes and deletes nothing."""

    INPUTS = VariablesInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset({"project_id", "environment_id", "service_id"})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if news.get("create_only"):
            news = {**news, "variables": olds.get("variables")}
        return super().diff(id_, olds, news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: VariablesInputs = self.parse(props)
        with self.client() as rail:  # an upsert: a retried create converges by itself
            rail.upsert_variables(
                inputs.project_id,
                inputs.environment_id,
                inputs.variables,
                service_id=inputs.service_id,
                skip_deploys=inputs.skip_deploys,
            )
        ident = f"{inputs.service_id or 'shared'}:{inputs.environment_id}"
        return CreateResult(ident, outputs(inputs))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        inputs: VariablesInputs = self.parse(props)
        with self.client() as rail:
            live = rail.get_variables(inputs.project_id, inputs.environment_id, inputs.service_id)
        ours = {k: live[k].get_secret_value() for k in inputs.variables if k in live}
        return ReadResult(id_, outputs(inputs.model_copy(update={"variables": ours})))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs: VariablesInputs = self.parse(news)
        if inputs.create_only:  # keep what state holds; write nothing
            kept = dict(olds.get("variables") or {})
            return UpdateResult(outputs(inputs.model_copy(update={"variables": kept})))
        removed = sorted(set(olds.get("variables") or {}) - set(inputs.variables))
        with self.client() as rail:
            rail.upsert_variables(
                inputs.project_id,
                inputs.environment_id,
                inputs.variables,
                service_id=inputs.service_id,
                skip_deploys=inputs.skip_deploys,
            )
            for name in removed:
                rail.delete_variable(
                    inputs.project_id, inputs.environment_id, name, service_id=inputs.service_id
                )
        return UpdateResult(outputs(inputs))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        inputs: VariablesInputs = self.parse(props)
        with self.client() as rail:
            for name in sorted(inputs.variables):
                rail.delete_variable(
                    inputs.project_id, inputs.environment_id, name, service_id=inputs.service_id
                )


class RailwayVariables(Resource, module="railway", name="Variables"):
    """Variables of a service. ``variables`` is a secret output either way; ``sensitive=False``
    marks a set of plain values from stack config, which the policy pack checks for
    anything that looks like a secret."""

    variables: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        resource_name: str,
        *,
        project_id: pulumi.Input[str],
        environment_id: pulumi.Input[str],
        variables: pulumi.Input[dict[str, pulumi.Input[str]]],
        service_id: pulumi.Input[str] | None = None,
        skip_deploys: pulumi.Input[bool] = False,
        sensitive: bool = True,
        create_only: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "project_id": project_id,
            "environment_id": environment_id,
            "service_id": service_id,
            "variables": pulumi.Output.secret(variables) if sensitive else variables,
            "skip_deploys": skip_deploys,
            "sensitive": sensitive,
            "version": PROVIDER_VERSION,
        }
        if create_only:  # absent otherwise: no change for the resources made before it
            props["create_only"] = True
        secret = pulumi.ResourceOptions(additional_secret_outputs=["variables"])
        super().__init__(
            RailwayVariablesProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secret),
        )
