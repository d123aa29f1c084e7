"""A typed client for the Neon API v2: projects, branches, endpoints, roles, databases,
branch restore, and the background operations every mutation starts.

Used by the Pulumi dynamic providers (``components/providers/neon.py``) and by the
operations code (a branch as a backup point before a migration, restores through branches)::

    with NeonClient.from_settings(settings) as neon:
        point = neon.create_branch(project_id, name="pre-migrate-0005", parent_id=main_id)
        ...
        neon.restore_branch(project_id, main_id, source_branch_id=point.branch.id,
                            preserve_under_name="main-before-restore")

Every mutating method waits for the operations it started (``wait=False`` skips that) and
returns typed objects. Failures are ``ptool_ops.errors`` classes (see ``_http``):
401/403 → ``ConfigError``, 404 → ``NotFound``, 423 still locked after the back-off →
``Conflict``, network and 5xx → ``ServiceUnavailable``, a failed operation →
``OperationFailed``. 423, 429 and 503 are retried with exponential back-off.

Unknown fields and enum values in responses are kept (``extra="allow"``), never rejected:
Neon adds operation actions and branch fields over time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ptool_ops.errors import ConfigError, OperationFailed
from ptool_ops.platform._http import Backoff, HttpClient, NotFound, send, tls_context

if TYPE_CHECKING:
    from ptool_ops.settings import EnvironmentSettings

DEFAULT_API_URL = "https://console.neon.tech/api/v2"
DONE_STATUSES = frozenset({"finished", "skipped"})
FAILED_STATUSES = frozenset({"error", "cancelled", "cancelling"})
MAX_HISTORY_RETENTION_SECONDS = 2_592_000  # 30 days, the API's maximum

__all__ = [
    "DEFAULT_API_URL",
    "Backoff",
    "Branch",
    "BranchCreated",
    "Database",
    "Endpoint",
    "EndpointSpec",
    "NeonClient",
    "NotFound",
    "Operation",
    "Project",
    "ProjectCreated",
    "Role",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Operation(_Model):
    id: str
    project_id: str
    action: str
    status: str
    branch_id: str | None = None
    endpoint_id: str | None = None
    error: str | None = None
    failures_count: int = 0


class Project(_Model):
    id: str
    name: str
    region_id: str
    pg_version: int
    history_retention_seconds: int = 0
    default_endpoint_settings: dict[str, Any] = Field(default_factory=dict)
    proxy_host: str | None = None


class Branch(_Model):
    id: str
    project_id: str
    name: str
    parent_id: str | None = None
    parent_lsn: str | None = None
    parent_timestamp: datetime | None = None
    current_state: str | None = None
    default: bool = False
    protected: bool = False
    expires_at: datetime | None = None
    created_at: datetime | None = None


class Endpoint(_Model):
    id: str
    project_id: str
    branch_id: str
    host: str
    type: str
    autoscaling_limit_min_cu: float
    autoscaling_limit_max_cu: float
    suspend_timeout_seconds: int = 0
    current_state: str | None = None


class Role(_Model):
    branch_id: str
    name: str
    password: SecretStr | None = None
    protected: bool = False


class Database(_Model):
    id: int
    branch_id: str
    name: str
    owner_name: str


class EndpointSpec(BaseModel):
    """A compute endpoint to create: its size limits in CU and its suspend timeout.

    ``suspend_timeout_seconds``: 0 is Neon's default (5 minutes), -1 never suspends, a
    positive value scales to zero after that many idle seconds.
    """

    model_config = ConfigDict(frozen=True)

    type: Literal["read_write", "read_only"] = "read_write"
    autoscaling_limit_min_cu: float = Field(default=0.25, ge=0.25)
    autoscaling_limit_max_cu: float = Field(default=0.25, ge=0.25)
    suspend_timeout_seconds: int = Field(default=0, ge=-1, le=604800)

    def body(self) -> dict[str, Any]:
        return self.model_dump()


class ProjectCreated(_Model):
    project: Project
    branch: Branch
    endpoints: list[Endpoint] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    databases: list[Database] = Field(default_factory=list)


class BranchCreated(_Model):
    branch: Branch
    endpoints: list[Endpoint] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    databases: list[Database] = Field(default_factory=list)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("timestamps sent to Neon must carry a time zone")
    return moment.isoformat().replace("+00:00", "Z")


class NeonClient(HttpClient):
    """Neon API v2 over one ``httpx.Client``. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        api_key: SecretStr | str,
        *,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        poll_interval: float = 1.0,
        poll_timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not key:
            raise ConfigError(
                "no Neon API key is set.",
                hint="Set neon_api_key (PTOOL_NEON_API_KEY) or NEON_API_KEY.",
            )
        self.base_url = base_url.rstrip("/")
        self.backoff = backoff or Backoff()
        self.poll_interval = poll_interval
        self.poll_timeout = poll_timeout
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            verify=tls_context(),
        )

    @classmethod
    def from_settings(cls, settings: EnvironmentSettings, **kwargs: Any) -> NeonClient:
        if settings.neon_api_key is None:
            raise ConfigError(
                f"environment {settings.name!r} has no neon_api_key.",
                hint="Set neon_api_key in ptool-ops.toml (better: PTOOL_NEON_API_KEY).",
            )
        return cls(settings.neon_api_key, base_url=settings.neon_api_url, **kwargs)

    # -- plumbing -------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = send(
            self._http,
            method,
            path,
            service="Neon",
            what=what,
            backoff=self.backoff,
            sleep=self._sleep,
            json=json,
            params={k: v for k, v in (params or {}).items() if v is not None} or None,
        )
        if response.status_code == 204 or not response.content:
            return {}
        body = response.json()
        if not isinstance(body, dict):
            raise OperationFailed(f"Neon answered {what} with an unexpected body.")
        return body

    def _mutate(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Mapping[str, Any] | None = None,
        wait: bool = True,
        on_change: Callable[[Operation], None] | None = None,
    ) -> dict[str, Any]:
        body = self._call(method, path, what, json=json)
        if wait:
            ops = [Operation.model_validate(op) for op in body.get("operations", [])]
            self.track_operations(ops, what=what, on_change=on_change)
        return body

    # -- operations -----------------------------------------------------------------------

    def get_operation(self, project_id: str, operation_id: str) -> Operation:
        body = self._call(
            "GET",
            f"/projects/{project_id}/operations/{operation_id}",
            f"read operation {operation_id}",
        )
        return Operation.model_validate(body["operation"])

    def wait_for_operations(self, operations: Iterable[Operation], *, what: str = "") -> None:
        """Poll each operation until it is finished or skipped (see :meth:`track_operations`)."""
        self.track_operations(operations, what=what)

    def track_operations(
        self,
        operations: Iterable[Operation],
        *,
        what: str = "",
        on_change: Callable[[Operation], None] | None = None,
    ) -> list[Operation]:
        """Poll each operation until it is finished or skipped (back-off up to 5 s between
        polls) and return them as last seen. ``error``/``cancelled`` raise
        ``OperationFailed``; ``failed`` is retried by Neon, so it is polled on;
        ``poll_timeout`` seconds without an end raise too, naming an operation that is
        still failed (with its error) before one that is merely running.

        ``on_change`` hears each operation once as returned and again whenever its status
        changes or it fails once more (for progress output)."""
        seen: dict[str, Operation] = {}
        pending: dict[str, Operation] = {}
        for op in operations:
            seen[op.id] = op
            if on_change is not None:
                on_change(op)
            if op.status not in DONE_STATUSES:
                pending[op.id] = op
        deadline = time.monotonic() + self.poll_timeout
        delay = self.poll_interval
        while pending:
            for op_id, op in list(pending.items()):
                if op.status in FAILED_STATUSES:
                    reason = f": {op.error}" if op.error else ""
                    raise OperationFailed(
                        f"Neon operation {op.action} ({op_id}) ended {op.status}{reason}.",
                        hint=f"Look at the operation in the Neon console; {what} did not finish.",
                    )
                if op.status in DONE_STATUSES:
                    del pending[op_id]
            if not pending:
                break
            if time.monotonic() > deadline:
                stuck = sorted(pending.values(), key=lambda o: o.status != "failed")[0]
                tried = (
                    f" ({stuck.failures_count} failed attempts"
                    f"{f', last: {stuck.error}' if stuck.error else ''})"
                    if stuck.status == "failed"
                    else ""
                )
                raise OperationFailed(
                    f"Neon operation {stuck.action} ({stuck.id}) is still {stuck.status}"
                    f"{tried} after {self.poll_timeout:.0f} s.",
                    hint="It may still finish: check the Neon console before trying again.",
                )
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
            for op_id, op in list(pending.items()):
                now = self.get_operation(op.project_id, op_id)
                changed = (now.status, now.failures_count) != (op.status, op.failures_count)
                if on_change is not None and changed:
                    on_change(now)
                pending[op_id] = seen[op_id] = now
        return list(seen.values())

    # -- projects -------------------------------------------------------------------------

    def get_project(self, project_id: str) -> Project:
        body = self._call("GET", f"/projects/{project_id}", f"read project {project_id}")
        return Project.model_validate(body["project"])

    def find_project(self, name: str, *, org_id: str | None = None) -> Project | None:
        """The project called exactly ``name`` (of the organisation ``org_id``), or None."""
        cursor: str | None = None
        while True:
            body = self._call(
                "GET",
                "/projects",
                f"list projects named {name}",
                params={"search": name, "org_id": org_id, "cursor": cursor, "limit": 400},
            )
            page = body.get("projects", [])
            for item in page:
                if item.get("name") == name:
                    return self.get_project(item["id"])
            cursor = (body.get("pagination") or {}).get("cursor")
            if not cursor or not page:
                return None

    def create_project(
        self,
        name: str,
        *,
        region_id: str,
        pg_version: int,
        history_retention_seconds: int,
        endpoint: EndpointSpec | None = None,
        branch_name: str = "main",
        database_name: str = "neondb",
        role_name: str = "neondb_owner",
        org_id: str | None = None,
        wait: bool = True,
    ) -> ProjectCreated:
        spec = endpoint or EndpointSpec()
        project: dict[str, Any] = {
            "name": name,
            "region_id": region_id,
            "pg_version": pg_version,
            "history_retention_seconds": history_retention_seconds,
            "default_endpoint_settings": {k: v for k, v in spec.body().items() if k != "type"},
            "branch": {
                "name": branch_name,
                "database_name": database_name,
                "role_name": role_name,
            },
        }
        if org_id:
            project["org_id"] = org_id
        body = self._mutate(
            "POST", "/projects", f"create project {name}", json={"project": project}, wait=wait
        )
        return ProjectCreated.model_validate(body)

    def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        history_retention_seconds: int | None = None,
        endpoint: EndpointSpec | None = None,
        wait: bool = True,
    ) -> Project:
        project: dict[str, Any] = {}
        if name is not None:
            project["name"] = name
        if history_retention_seconds is not None:
            project["history_retention_seconds"] = history_retention_seconds
        if endpoint is not None:
            project["default_endpoint_settings"] = {
                k: v for k, v in endpoint.body().items() if k != "type"
            }
        body = self._mutate(
            "PATCH",
            f"/projects/{project_id}",
            f"update project {project_id}",
            json={"project": project},
            wait=wait,
        )
        return Project.model_validate(body["project"])

    def delete_project(self, project_id: str) -> bool:
        """Delete the project; False if it was already gone."""
        try:
            self._call("DELETE", f"/projects/{project_id}", f"delete project {project_id}")
        except NotFound:
            return False
        return True

    # -- branches -------------------------------------------------------------------------

    def list_branches(self, project_id: str, *, search: str | None = None) -> list[Branch]:
        branches: list[Branch] = []
        cursor: str | None = None
        while True:
            body = self._call(
                "GET",
                f"/projects/{project_id}/branches",
                f"list the branches of project {project_id}",
                params={"search": search, "cursor": cursor, "limit": 1000},
            )
            page = body.get("branches", [])
            branches.extend(Branch.model_validate(b) for b in page)
            cursor = (body.get("pagination") or {}).get("next")
            if not cursor or not page:
                return branches

    def find_branch(self, project_id: str, name: str) -> Branch | None:
        for branch in self.list_branches(project_id, search=name):
            if branch.name == name:
                return branch
        return None

    def get_branch(self, project_id: str, branch_id: str) -> Branch:
        body = self._call(
            "GET", f"/projects/{project_id}/branches/{branch_id}", f"read branch {branch_id}"
        )
        return Branch.model_validate(body["branch"])

    def create_branch(
        self,
        project_id: str,
        *,
        name: str,
        parent_id: str | None = None,
        parent_timestamp: datetime | None = None,
        parent_lsn: str | None = None,
        expires_at: datetime | None = None,
        protected: bool | None = None,
        endpoint: EndpointSpec | None = None,
        wait: bool = True,
        on_change: Callable[[Operation], None] | None = None,
    ) -> BranchCreated:
        """Create a branch (a copy of ``parent_id``, by default the project's default branch,
        at its head, at ``parent_timestamp`` or at ``parent_lsn``), optionally with a compute
        endpoint. A branch without an endpoint is a cheap backup point. ``on_change``: see
        :meth:`track_operations`."""
        if parent_timestamp is not None and parent_lsn is not None:
            raise ValueError("give parent_timestamp or parent_lsn, not both")
        branch: dict[str, Any] = {"name": name}
        if parent_id:
            branch["parent_id"] = parent_id
        if parent_timestamp is not None:
            branch["parent_timestamp"] = _iso(parent_timestamp)
        if parent_lsn:
            branch["parent_lsn"] = parent_lsn
        if expires_at is not None:
            branch["expires_at"] = _iso(expires_at)
        if protected is not None:
            branch["protected"] = protected
        payload: dict[str, Any] = {"branch": branch}
        if endpoint is not None:
            payload["endpoints"] = [endpoint.body()]
        body = self._mutate(
            "POST",
            f"/projects/{project_id}/branches",
            f"create branch {name} in project {project_id}",
            json=payload,
            wait=wait,
            on_change=on_change,
        )
        return BranchCreated.model_validate(body)

    def update_branch(
        self,
        project_id: str,
        branch_id: str,
        *,
        name: str | None = None,
        protected: bool | None = None,
        expires_at: datetime | Literal["keep"] | None = "keep",
        wait: bool = True,
    ) -> Branch:
        """Rename, (un)protect, or change the expiry (``None`` removes it)."""
        branch: dict[str, Any] = {}
        if name is not None:
            branch["name"] = name
        if protected is not None:
            branch["protected"] = protected
        if expires_at != "keep":
            branch["expires_at"] = _iso(expires_at) if isinstance(expires_at, datetime) else None
        body = self._mutate(
            "PATCH",
            f"/projects/{project_id}/branches/{branch_id}",
            f"update branch {branch_id}",
            json={"branch": branch},
            wait=wait,
        )
        return Branch.model_validate(body["branch"])

    def delete_branch(self, project_id: str, branch_id: str, *, wait: bool = True) -> bool:
        """Delete the branch; False if it was already gone."""
        try:
            self._mutate(
                "DELETE",
                f"/projects/{project_id}/branches/{branch_id}",
                f"delete branch {branch_id}",
                wait=wait,
            )
        except NotFound:
            return False
        return True

    def restore_branch(
        self,
        project_id: str,
        branch_id: str,
        *,
        source_branch_id: str,
        source_timestamp: datetime | None = None,
        source_lsn: str | None = None,
        preserve_under_name: str | None = None,
        wait: bool = True,
        on_change: Callable[[Operation], None] | None = None,
    ) -> Branch:
        """Overwrite ``branch_id`` with ``source_branch_id`` (at its head, a timestamp or an
        LSN). Connections drop; the connection string stays. ``preserve_under_name`` keeps
        the overwritten state as a branch (required when restoring from the branch's own
        history or when it has children). ``on_change``: see :meth:`track_operations`."""
        if source_timestamp is not None and source_lsn is not None:
            raise ValueError("give source_timestamp or source_lsn, not both")
        if source_branch_id == branch_id and source_timestamp is None and source_lsn is None:
            raise ValueError("restoring a branch from itself needs a timestamp or an LSN")
        payload: dict[str, Any] = {"source_branch_id": source_branch_id}
        if source_timestamp is not None:
            payload["source_timestamp"] = _iso(source_timestamp)
        if source_lsn:
            payload["source_lsn"] = source_lsn
        if preserve_under_name:
            payload["preserve_under_name"] = preserve_under_name
        body = self._mutate(
            "POST",
            f"/projects/{project_id}/branches/{branch_id}/restore",
            f"restore branch {branch_id} from {source_branch_id}",
            json=payload,
            wait=wait,
            on_change=on_change,
        )
        return Branch.model_validate(body["branch"])

    # -- endpoints ------------------------------------------------------------------------

    def list_endpoints(self, project_id: str, branch_id: str | None = None) -> list[Endpoint]:
        path = (
            f"/projects/{project_id}/branches/{branch_id}/endpoints"
            if branch_id
            else f"/projects/{project_id}/endpoints"
        )
        body = self._call("GET", path, f"list the endpoints of project {project_id}")
        return [Endpoint.model_validate(e) for e in body.get("endpoints", [])]

    def create_endpoint(
        self, project_id: str, branch_id: str, spec: EndpointSpec, *, wait: bool = True
    ) -> Endpoint:
        body = self._mutate(
            "POST",
            f"/projects/{project_id}/endpoints",
            f"create an endpoint on branch {branch_id}",
            json={"endpoint": {"branch_id": branch_id, **spec.body()}},
            wait=wait,
        )
        return Endpoint.model_validate(body["endpoint"])

    def update_endpoint(
        self, project_id: str, endpoint_id: str, spec: EndpointSpec, *, wait: bool = True
    ) -> Endpoint:
        fields = {k: v for k, v in spec.body().items() if k != "type"}
        body = self._mutate(
            "PATCH",
            f"/projects/{project_id}/endpoints/{endpoint_id}",
            f"update endpoint {endpoint_id}",
            json={"endpoint": fields},
            wait=wait,
        )
        return Endpoint.model_validate(body["endpoint"])

    def delete_endpoint(self, project_id: str, endpoint_id: str, *, wait: bool = True) -> bool:
        try:
            self._mutate(
                "DELETE",
                f"/projects/{project_id}/endpoints/{endpoint_id}",
                f"delete endpoint {endpoint_id}",
                wait=wait,
            )
        except NotFound:
            return False
        return True

    # -- roles ----------------------------------------------------------------------------

    def list_roles(self, project_id: str, branch_id: str) -> list[Role]:
        body = self._call(
            "GET",
            f"/projects/{project_id}/branches/{branch_id}/roles",
            f"list the roles of branch {branch_id}",
        )
        return [Role.model_validate(r) for r in body.get("roles", [])]

    def get_role(self, project_id: str, branch_id: str, name: str) -> Role | None:
        try:
            body = self._call(
                "GET",
                f"/projects/{project_id}/branches/{branch_id}/roles/{name}",
                f"read role {name}",
            )
        except NotFound:
            return None
        return Role.model_validate(body["role"])

    def create_role(self, project_id: str, branch_id: str, name: str, *, wait: bool = True) -> Role:
        """Create a Neon-managed role; the returned role carries its generated password."""
        body = self._mutate(
            "POST",
            f"/projects/{project_id}/branches/{branch_id}/roles",
            f"create role {name} on branch {branch_id}",
            json={"role": {"name": name}},
            wait=wait,
        )
        return Role.model_validate(body["role"])

    def reveal_password(self, project_id: str, branch_id: str, name: str) -> SecretStr:
        body = self._call(
            "GET",
            f"/projects/{project_id}/branches/{branch_id}/roles/{name}/reveal_password",
            f"reveal the password of role {name}",
        )
        return SecretStr(str(body["password"]))

    def reset_password(
        self, project_id: str, branch_id: str, name: str, *, wait: bool = True
    ) -> Role:
        body = self._mutate(
            "POST",
            f"/projects/{project_id}/branches/{branch_id}/roles/{name}/reset_password",
            f"reset the password of role {name}",
            wait=wait,
        )
        return Role.model_validate(body["role"])

    def delete_role(self, project_id: str, branch_id: str, name: str, *, wait: bool = True) -> bool:
        try:
            self._mutate(
                "DELETE",
                f"/projects/{project_id}/branches/{branch_id}/roles/{name}",
                f"delete role {name}",
                wait=wait,
            )
        except NotFound:
            return False
        return True

    def connection_uri(
        self,
        project_id: str,
        *,
        branch_id: str,
        database_name: str,
        role_name: str,
        pooled: bool = False,
    ) -> SecretStr:
        """The ``postgresql://`` URI (with password) of a role on a branch's endpoint."""
        body = self._call(
            "GET",
            f"/projects/{project_id}/connection_uri",
            f"get the connection URI of {role_name} on branch {branch_id}",
            params={
                "branch_id": branch_id,
                "database_name": database_name,
                "role_name": role_name,
                "pooled": "true" if pooled else None,
            },
        )
        return SecretStr(str(body["uri"]))

    # -- databases ------------------------------------------------------------------------

    def list_databases(self, project_id: str, branch_id: str) -> list[Database]:
        body = self._call(
            "GET",
            f"/projects/{project_id}/branches/{branch_id}/databases",
            f"list the databases of branch {branch_id}",
        )
        return [Database.model_validate(d) for d in body.get("databases", [])]

    def get_database(self, project_id: str, branch_id: str, name: str) -> Database | None:
        try:
            body = self._call(
                "GET",
                f"/projects/{project_id}/branches/{branch_id}/databases/{name}",
                f"read database {name}",
            )
        except NotFound:
            return None
        return Database.model_validate(body["database"])

    def create_database(
        self, project_id: str, branch_id: str, name: str, owner_name: str, *, wait: bool = True
    ) -> Database:
        body = self._mutate(
            "POST",
            f"/projects/{project_id}/branches/{branch_id}/databases",
            f"create database {name} on branch {branch_id}",
            json={"database": {"name": name, "owner_name": owner_name}},
            wait=wait,
        )
        return Database.model_validate(body["database"])

    def update_database(
        self,
        project_id: str,
        branch_id: str,
        name: str,
        *,
        owner_name: str,
        wait: bool = True,
    ) -> Database:
        body = self._mutate(
            "PATCH",
            f"/projects/{project_id}/branches/{branch_id}/databases/{name}",
            f"update database {name}",
            json={"database": {"owner_name": owner_name}},
            wait=wait,
        )
        return Database.model_validate(body["database"])

    def delete_database(
        self, project_id: str, branch_id: str, name: str, *, wait: bool = True
    ) -> bool:
        try:
            self._mutate(
                "DELETE",
                f"/projects/{project_id}/branches/{branch_id}/databases/{name}",
                f"delete database {name}",
                wait=wait,
            )
        except NotFound:
            return False
        return True
