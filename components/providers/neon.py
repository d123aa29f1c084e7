"""Dynamic providers over the Neon API v2 (``ptool_ops.platform.neon.NeonClient``).

* ``NeonProject`` — a project with its default branch, database, owner role and compute
  endpoint; the history retention (the PITR window), autoscaling limits and suspend timeout
  update in place; region, Postgres version and the names chosen at creation replace.
* ``NeonBranch`` — a branch (e.g. a preview environment's copy of staging) with one
  read-write endpoint and an optional expiry; name, expiry, protection and compute settings
  update in place; project and parent replace.

``create`` looks the object up by name first, so a create interrupted after Neon accepted it
(network error, killed process) is completed by the retry instead of duplicated. ``delete``
tolerates objects already gone. Every mutation waits for Neon's operations, backing off on
423 (another operation running) and 429.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import CreateResult, ReadResult, Resource, UpdateResult
from pydantic import Field, field_validator, model_validator

from components.providers._base import PROVIDER_VERSION, ApiProvider, ProviderInputs, outputs
from ptool_ops.errors import OperationFailed
from ptool_ops.platform.neon import (
    DEFAULT_API_URL,
    MAX_HISTORY_RETENTION_SECONDS,
    Branch,
    EndpointSpec,
    NeonClient,
)

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class ComputeInputs(ProviderInputs):
    autoscaling_limit_min_cu: float = Field(default=0.25, ge=0.25, le=56)
    autoscaling_limit_max_cu: float = Field(default=0.25, ge=0.25, le=56)
    suspend_timeout_seconds: int = Field(default=0, ge=-1, le=604800)

    @model_validator(mode="after")
    def _limits(self) -> ComputeInputs:
        if self.autoscaling_limit_max_cu < self.autoscaling_limit_min_cu:
            raise ValueError("autoscaling_limit_max_cu must be at least autoscaling_limit_min_cu")
        return self

    def endpoint(self) -> EndpointSpec:
        return EndpointSpec(
            autoscaling_limit_min_cu=self.autoscaling_limit_min_cu,
            autoscaling_limit_max_cu=self.autoscaling_limit_max_cu,
            suspend_timeout_seconds=self.suspend_timeout_seconds,
        )


class ProjectInputs(ComputeInputs):
    name: str = Field(pattern=_NAME)
    region_id: str = Field(min_length=1)
    pg_version: int = Field(ge=14, le=18)
    history_retention_seconds: int = Field(ge=0, le=MAX_HISTORY_RETENTION_SECONDS)
    branch_name: str = Field(default="main", pattern=_NAME)
    database_name: str = Field(default="neondb", pattern=_NAME)
    owner_role: str = Field(default="neondb_owner", pattern=_NAME)
    org_id: str | None = None


class BranchInputs(ComputeInputs):
    project_id: str = Field(min_length=1)
    name: str = Field(pattern=_NAME)
    parent_id: str | None = None
    expires_at: str | None = None
    protected: bool = False
    owner_role: str = Field(default="neondb_owner", pattern=_NAME)

    @field_validator("expires_at")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError("expires_at needs a time zone (e.g. 2026-12-01T00:00:00Z)")
        return value


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _default_branch(neon: NeonClient, project_id: str) -> Branch:
    branch = next((b for b in neon.list_branches(project_id) if b.default), None)
    if branch is None:
        raise OperationFailed(f"Neon project {project_id} has no default branch.")
    return branch


class _NeonProvider(ApiProvider):
    SERVICE = "Neon"
    KEY_CONFIG = "neonApiKey"
    KEY_ENV = "NEON_API_KEY"
    URL_CONFIG = "neonApiUrl"
    URL_ENV = "NEON_API_URL"
    DEFAULT_URL = DEFAULT_API_URL

    def client(self) -> NeonClient:
        key, url = self.credentials()
        return NeonClient(key, base_url=url)


class NeonProjectProvider(_NeonProvider):
    INPUTS = ProjectInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset(
        {"region_id", "pg_version", "branch_name", "database_name", "owner_role", "org_id"}
    )

    def _outs(self, neon: NeonClient, inputs: ProjectInputs, project_id: str) -> dict[str, Any]:
        project = neon.get_project(project_id)
        branch = _default_branch(neon, project_id)
        endpoints = [
            e for e in neon.list_endpoints(project_id, branch.id) if e.type == "read_write"
        ]
        endpoint = endpoints[0] if endpoints else None
        password = neon.reveal_password(project_id, branch.id, inputs.owner_role)
        return outputs(
            inputs,
            project_id=project.id,
            branch_id=branch.id,
            endpoint_id=endpoint.id if endpoint else None,
            host=endpoint.host if endpoint else None,
            owner_password=password.get_secret_value(),
            actual_history_retention_seconds=project.history_retention_seconds,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: ProjectInputs = self.parse(props)
        with self.client() as neon:
            existing = neon.find_project(inputs.name, org_id=inputs.org_id)
            if existing is None:
                created = neon.create_project(
                    inputs.name,
                    region_id=inputs.region_id,
                    pg_version=inputs.pg_version,
                    history_retention_seconds=inputs.history_retention_seconds,
                    endpoint=inputs.endpoint(),
                    branch_name=inputs.branch_name,
                    database_name=inputs.database_name,
                    role_name=inputs.owner_role,
                    org_id=inputs.org_id,
                )
                project_id = created.project.id
            else:  # an earlier create got through: finish it instead of duplicating
                project_id = existing.id
                self._converge(neon, inputs, project_id)
            return CreateResult(project_id, self._outs(neon, inputs, project_id))

    def _converge(self, neon: NeonClient, inputs: ProjectInputs, project_id: str) -> None:
        neon.update_project(
            project_id,
            name=inputs.name,
            history_retention_seconds=inputs.history_retention_seconds,
            endpoint=inputs.endpoint(),
        )
        branch = _default_branch(neon, project_id)
        for endpoint in neon.list_endpoints(project_id, branch.id):
            neon.update_endpoint(project_id, endpoint.id, inputs.endpoint())

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        inputs: ProjectInputs = self.parse(props)
        with self.client() as neon:
            return ReadResult(id_, self._outs(neon, inputs, id_))

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs: ProjectInputs = self.parse(news)
        with self.client() as neon:
            self._converge(neon, inputs, id_)
            return UpdateResult(self._outs(neon, inputs, id_))

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        with self.client() as neon:
            neon.delete_project(id_)


class NeonBranchProvider(_NeonProvider):
    INPUTS = BranchInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset({"project_id", "parent_id", "owner_role"})

    def _outs(self, neon: NeonClient, inputs: BranchInputs, branch_id: str) -> dict[str, Any]:
        branch = neon.get_branch(inputs.project_id, branch_id)
        endpoints = [
            e for e in neon.list_endpoints(inputs.project_id, branch_id) if e.type == "read_write"
        ]
        password = neon.reveal_password(inputs.project_id, branch_id, inputs.owner_role)
        return outputs(
            inputs,
            branch_id=branch.id,
            endpoint_id=endpoints[0].id if endpoints else None,
            host=endpoints[0].host if endpoints else None,
            owner_password=password.get_secret_value(),
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: BranchInputs = self.parse(props)
        with self.client() as neon:
            existing = neon.find_branch(inputs.project_id, inputs.name)
            if existing is None:
                created = neon.create_branch(
                    inputs.project_id,
                    name=inputs.name,
                    parent_id=inputs.parent_id,
                    expires_at=_when(inputs.expires_at),
                    protected=inputs.protected or None,
                    endpoint=inputs.endpoint(),
                )
                branch_id = created.branch.id
            else:  # an earlier create got through: finish it instead of duplicating
                branch_id = existing.id
                self._converge(neon, inputs, branch_id)
            return CreateResult(branch_id, self._outs(neon, inputs, branch_id))

    def _converge(self, neon: NeonClient, inputs: BranchInputs, branch_id: str) -> None:
        neon.update_branch(
            inputs.project_id,
            branch_id,
            name=inputs.name,
            protected=inputs.protected,
            expires_at=_when(inputs.expires_at),
        )
        endpoints = [
            e for e in neon.list_endpoints(inputs.project_id, branch_id) if e.type == "read_write"
        ]
        if endpoints:
            for endpoint in endpoints:
                neon.update_endpoint(inputs.project_id, endpoint.id, inputs.endpoint())
        else:
            neon.create_endpoint(inputs.project_id, branch_id, inputs.endpoint())

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        inputs: BranchInputs = self.parse(props)
        with self.client() as neon:
            return ReadResult(id_, self._outs(neon, inputs, id_))

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs: BranchInputs = self.parse(news)
        with self.client() as neon:
            self._converge(neon, inputs, id_)
            return UpdateResult(self._outs(neon, inputs, id_))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client() as neon:
            neon.delete_branch(str(props["project_id"]), id_)


class NeonProject(Resource, module="neon", name="Project"):
    """A Neon project (``pulumi-python:dynamic/neon:Project``); ``owner_password`` is secret."""

    project_id: pulumi.Output[str]
    branch_id: pulumi.Output[str]
    endpoint_id: pulumi.Output[str]
    host: pulumi.Output[str]
    owner_password: pulumi.Output[str]
    actual_history_retention_seconds: pulumi.Output[int]

    def __init__(
        self,
        resource_name: str,
        *,
        name: pulumi.Input[str],
        region_id: pulumi.Input[str],
        pg_version: pulumi.Input[int],
        history_retention_seconds: pulumi.Input[int],
        autoscaling_limit_min_cu: pulumi.Input[float],
        autoscaling_limit_max_cu: pulumi.Input[float],
        suspend_timeout_seconds: pulumi.Input[int],
        branch_name: pulumi.Input[str] = "main",
        database_name: pulumi.Input[str] = "neondb",
        owner_role: pulumi.Input[str] = "neondb_owner",
        org_id: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "name": name,
            "region_id": region_id,
            "pg_version": pg_version,
            "history_retention_seconds": history_retention_seconds,
            "autoscaling_limit_min_cu": autoscaling_limit_min_cu,
            "autoscaling_limit_max_cu": autoscaling_limit_max_cu,
            "suspend_timeout_seconds": suspend_timeout_seconds,
            "branch_name": branch_name,
            "database_name": database_name,
            "owner_role": owner_role,
            "org_id": org_id,
            "version": PROVIDER_VERSION,
            "project_id": None,
            "branch_id": None,
            "endpoint_id": None,
            "host": None,
            "owner_password": None,
            "actual_history_retention_seconds": None,
        }
        secret = pulumi.ResourceOptions(additional_secret_outputs=["owner_password"])
        super().__init__(
            NeonProjectProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secret),
        )


class NeonBranch(Resource, module="neon", name="Branch"):
    """A Neon branch with a read-write endpoint (``pulumi-python:dynamic/neon:Branch``)."""

    branch_id: pulumi.Output[str]
    endpoint_id: pulumi.Output[str]
    host: pulumi.Output[str]
    owner_password: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        project_id: pulumi.Input[str],
        name: pulumi.Input[str],
        parent_id: pulumi.Input[str] | None = None,
        expires_at: pulumi.Input[str] | None = None,
        protected: pulumi.Input[bool] = False,
        autoscaling_limit_min_cu: pulumi.Input[float] = 0.25,
        autoscaling_limit_max_cu: pulumi.Input[float] = 0.25,
        suspend_timeout_seconds: pulumi.Input[int] = 0,
        owner_role: pulumi.Input[str] = "neondb_owner",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "project_id": project_id,
            "name": name,
            "parent_id": parent_id,
            "expires_at": expires_at,
            "protected": protected,
            "autoscaling_limit_min_cu": autoscaling_limit_min_cu,
            "autoscaling_limit_max_cu": autoscaling_limit_max_cu,
            "suspend_timeout_seconds": suspend_timeout_seconds,
            "owner_role": owner_role,
            "version": PROVIDER_VERSION,
            "branch_id": None,
            "endpoint_id": None,
            "host": None,
            "owner_password": None,
        }
        secret = pulumi.ResourceOptions(additional_secret_outputs=["owner_password"])
        super().__init__(
            NeonBranchProvider(), resource_name, props, pulumi.ResourceOptions.merge(opts, secret)
        )
