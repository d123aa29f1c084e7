"""Loopback fakes of the Neon API v2, Railway's GraphQL API and Vercel's REST API, real
HTTP servers.

* :class:`FakeNeon` keeps projects, branches, endpoints, roles, databases and operations in
  memory and **checks every request body and every response body against Neon's OpenAPI
  document** (``neon-openapi.json``, an unmodified copy of the published spec): a request
  our client shapes wrongly is answered 400 and recorded in ``violations``; a response the
  fake shapes wrongly fails the test the same way. Mutations start operations that finish
  after ``op_polls`` reads; ``lock_next(n)`` answers the next ``n`` mutations 423,
  ``rate_limit_next(n)`` the next ``n`` requests 429; ``script_operations(suffix, statuses)``
  makes the operations of the next matching mutation go through ``statuses`` one poll at a
  time (``failed`` → ``finished``: Neon retrying an operation); ``drop_after_apply(method,
  path_suffix)`` applies one matching request and then drops the connection without an
  answer (a create interrupted after the API accepted it). Branches are created at a
  ``parent_timestamp``/``parent_lsn`` (kept on the branch), and a restore with
  ``preserve_under_name`` keeps the overwritten state as a new branch of that name (children
  move to it), as Neon does; its rules (a restore from the branch's own history needs a point
  and a name to preserve under) are enforced. ``restores`` lists the restore requests,
  ``request_bodies`` every request's JSON; ``uri_for(branch, role, database)`` may point a
  branch's connection URI somewhere real (a local PostgreSQL database).
* :class:`FakeRailway` executes GraphQL documents with graphql-core against the subset of
  Railway's public schema that ptool-ops uses (signatures from ``railwayapp/cli``'s
  ``schema.json``, see ``shared/reference/railway-api.md``): a document with an unknown
  field or a wrongly typed argument is rejected as Railway would reject it. It keeps the
  variables per service (``variables_of``, and ``upserts`` with the keys and flags of each
  ``variableCollectionUpsert``) and deployments: ``serviceInstanceRedeploy`` (and an upsert
  without ``skipDeploys``) starts one, whose status advances one step per read;
  ``script_next_deployment(["BUILDING", "FAILED"])`` scripts the next one.
* :class:`FakeVercel` answers the project-variable and deployment endpoints of Vercel's REST
  API with their shapes (see its docstring).

All listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

SPEC_PATH = Path(__file__).with_name("neon-openapi.json")


class _App(Protocol):
    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[Any, ...] | None: ...


class _DropConnection(Exception):
    pass


class _Refusal(Exception):
    """A request the contract allows but Neon refuses (answered 400 with the message)."""


def _handler(app: _App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes: without TCP_NODELAY each answer on a
        # kept-alive connection waits ~40 ms for the client's delayed ACK
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            result = app.handle(self.command, url.path, query, headers, body)
            if result is None:  # drop the connection: the client sees no answer
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            status, payload = result[0], result[1]
            extra: dict[str, str] = result[2] if len(result) > 2 else {}  # type: ignore[misc]
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

    return Handler


@contextlib.contextmanager
def serve(app: _App) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(app))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- Neon -------------------------------------------------------------------------------


class OpenApiContract:
    """Request and response validation against the OpenAPI document, per operation."""

    def __init__(self, spec_path: Path = SPEC_PATH) -> None:
        from openapi_schema_validator import OAS30Validator

        self._validator_cls = OAS30Validator
        self.spec = json.loads(spec_path.read_text())
        self._routes: list[tuple[re.Pattern[str], str, dict[str, Any]]] = []
        for template, ops in self.spec["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}]+\}", r"[^/]+", template) + "$")
            for method, op in ops.items():
                if isinstance(op, dict) and "responses" in op:
                    self._routes.append((pattern, method.upper(), op))
        # literal segments first (/branches/count before /branches/{id})
        self._routes.sort(key=lambda r: r[0].pattern.count("[^/]+"))
        self._cache: dict[int, Any] = {}

    def operation(self, method: str, path: str) -> dict[str, Any]:
        for pattern, verb, op in self._routes:
            if verb == method and pattern.match(path):
                return op
        raise LookupError(f"{method} {path} is not an operation of the Neon API")

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node and node["$ref"].startswith("#/components/") and len(node) == 1:
            kind, name = node["$ref"].split("/")[2:4]
            if kind == "schemas":
                break
            node = self.spec["components"][kind][name]
        return node

    def _errors(self, schema: dict[str, Any], instance: Any) -> list[str]:
        key = id(schema)
        if key not in self._cache:
            self._cache[key] = self._validator_cls(
                {**schema, "components": self.spec["components"]}
            )
        validator = self._cache[key]
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(instance)
        ][:5]

    def query_errors(self, op: dict[str, Any], query: dict[str, str]) -> list[str]:
        params = {}
        for param in op.get("parameters", []):
            if "$ref" in param:
                param = self.spec["components"]["parameters"][param["$ref"].split("/")[-1]]
            if param.get("in") == "query":
                params[param["name"]] = param.get("schema", {})
        problems = [f"unknown query parameter {name!r}" for name in query if name not in params]
        for name, raw in query.items():
            schema = params.get(name)
            if schema is None:
                continue
            value: Any = raw
            if schema.get("type") == "boolean":
                if raw not in ("true", "false"):
                    problems.append(f"query parameter {name!r} must be true or false")
                    continue
                value = raw == "true"
            elif schema.get("type") == "integer":
                try:
                    value = int(raw)
                except ValueError:
                    problems.append(f"query parameter {name!r} must be an integer")
                    continue
            problems += [f"query {name}: {e}" for e in self._errors(schema, value)]
        return problems

    def request_errors(self, op: dict[str, Any], body: Any) -> list[str]:
        content = self._resolve(op.get("requestBody", {})).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is None:
            return [] if body is None else ["this operation takes no request body"]
        if body is None:
            return ["a JSON body is required"] if op["requestBody"].get("required") else []
        return self._errors(schema, body)

    def response_errors(self, op: dict[str, Any], status: int, body: Any) -> list[str]:
        responses = op["responses"]
        response = self._resolve(responses.get(str(status)) or responses["default"])
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            return [] if body is None else [f"HTTP {status} of this operation has no body"]
        return self._errors(schema, body)


class FakeNeon:
    url: str = ""

    def __init__(self) -> None:
        self.contract = OpenApiContract()
        self.lock = threading.Lock()
        self.keys = {"neon-test-key"}
        self.op_polls = 1
        self._locked = 0
        self._limited = 0
        self._drop: tuple[str, str] | None = None
        self._script: tuple[str, list[str]] | None = None
        self._ids = itertools.count(1)
        #: (branch, role name, database name) → a connection URI, or None for the fake's own
        self.uri_for: Callable[[dict[str, Any], str, str], str | None] | None = None
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.projects: dict[str, dict[str, Any]] = {}
            self.branches: dict[str, dict[str, Any]] = {}
            self.endpoints: dict[str, dict[str, Any]] = {}
            self.roles: dict[tuple[str, str], dict[str, Any]] = {}
            self.databases: dict[tuple[str, str], dict[str, Any]] = {}
            self.operations: dict[str, dict[str, Any]] = {}
            self.polls: dict[str, int] = {}
            self.requests: list[tuple[str, str]] = []
            self.request_bodies: list[tuple[str, str, Any]] = []
            self.restores: list[dict[str, Any]] = []
            self.scripts: dict[str, list[str]] = {}
            self.violations: list[str] = []
            self.auth: list[str] = []
            self.locked_answers = 0
            self.limited_answers = 0

    def lock_next(self, count: int) -> None:
        self._locked = count

    def rate_limit_next(self, count: int) -> None:
        self._limited = count

    def drop_after_apply(self, method: str, path_suffix: str) -> None:
        self._drop = (method, path_suffix)

    def script_operations(self, path_suffix: str, statuses: list[str]) -> None:
        """The operations of the next mutation whose path ends with ``path_suffix`` take
        ``statuses`` on successive polls (the last one stays)."""
        self._script = (path_suffix, list(statuses))

    def mutations(self, method: str, suffix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.endswith(suffix))

    # -- HTTP ---------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[Any, ...] | None:
        with self.lock:
            self.auth.append(headers.get("authorization", ""))
            if not path.startswith("/api/v2/"):
                return 404, {"code": "", "message": "not found"}
            path = path.removeprefix("/api/v2")
            self.requests.append((method, path))
            if headers.get("authorization", "").removeprefix("Bearer ") not in self.keys:
                return 401, {"code": "", "message": "authentication required"}
            try:
                op = self.contract.operation(method, path)
            except LookupError as err:
                self.violations.append(str(err))
                return 404, {"code": "", "message": str(err)}
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                self.violations.append(f"{method} {path}: body is not JSON")
                return 400, {"code": "", "message": "invalid JSON"}
            self.request_bodies.append((method, path, payload))
            problems = self.contract.query_errors(op, query)
            problems += self.contract.request_errors(op, payload)
            if problems:
                self.violations.append(f"{method} {path} request: {problems}")
                return 400, {"code": "", "message": "; ".join(problems)}
            if self._limited > 0:
                self._limited -= 1
                self.limited_answers += 1
                return 429, {"code": "", "message": "rate limit exceeded"}, {"Retry-After": "0"}
            if method != "GET" and self._locked > 0:
                self._locked -= 1
                self.locked_answers += 1
                return 423, {"code": "", "message": "project already has running operations"}
            try:
                status, answer = self._route(method, path, query, payload or {})
            except KeyError:
                status, answer = 404, {"code": "", "message": "not found"}
            except _Refusal as refusal:
                status, answer = 400, {"code": "", "message": str(refusal)}
            if self._script and method != "GET" and path.endswith(self._script[0]):
                for started in answer.get("operations", []) if status < 300 else []:
                    self.scripts[started["id"]] = list(self._script[1])
                self._script = None
            problems = self.contract.response_errors(op, status, answer)
            if problems:
                self.violations.append(f"{method} {path} response {status}: {problems}")
            if self._drop and method == self._drop[0] and path.endswith(self._drop[1]):
                self._drop = None
                return None
            return status, answer

    # -- model --------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    def _op(self, project_id: str, action: str, **ids: str) -> dict[str, Any]:
        op = {
            "id": str(uuid.uuid4()),
            "project_id": project_id,
            "action": action,
            "status": "running" if self.op_polls else "finished",
            "failures_count": 0,
            "created_at": _now(),
            "updated_at": _now(),
            "total_duration_ms": 0,
            **ids,
        }
        self.operations[op["id"]] = op
        self.polls[op["id"]] = 0
        return dict(op)

    def _project(self, pid: str) -> dict[str, Any]:
        return self.projects[pid]

    def _new_endpoint(self, pid: str, bid: str, spec: dict[str, Any]) -> dict[str, Any]:
        eid = self._id("ep")
        project = self.projects[pid]
        endpoint = {
            "host": f"{eid}.{project['region_id'].removeprefix('aws-')}.aws.neon.test",
            "id": eid,
            "project_id": pid,
            "branch_id": bid,
            "region_id": project["region_id"],
            "autoscaling_limit_min_cu": spec.get("autoscaling_limit_min_cu", 0.25),
            "autoscaling_limit_max_cu": spec.get("autoscaling_limit_max_cu", 0.25),
            "type": spec.get("type", "read_write"),
            "current_state": "idle",
            "pooler_enabled": False,
            "pooler_mode": "transaction",
            "disabled": False,
            "passwordless_access": True,
            "creation_source": "api",
            "created_at": _now(),
            "updated_at": _now(),
            "settings": {},
            "proxy_host": project["proxy_host"],
            "suspend_timeout_seconds": spec.get("suspend_timeout_seconds", 0),
            "provisioner": "k8s-neonvm",
        }
        self.endpoints[eid] = endpoint
        return endpoint

    def _new_branch(self, pid: str, spec: dict[str, Any], *, default: bool) -> dict[str, Any]:
        bid = self._id("br")
        branch = {
            "id": bid,
            "project_id": pid,
            "name": spec.get("name") or bid,
            "current_state": "ready",
            "state_changed_at": _now(),
            "creation_source": "api",
            "created_at": _now(),
            "updated_at": _now(),
            "default": default,
            "protected": bool(spec.get("protected", False)),
            "cpu_used_sec": 0,
            "active_time_seconds": 0,
            "compute_time_seconds": 0,
            "written_data_bytes": 0,
            "data_transfer_bytes": 0,
        }
        if spec.get("parent_id"):
            branch["parent_id"] = spec["parent_id"]
        if spec.get("expires_at"):
            branch["expires_at"] = spec["expires_at"]
        for point in ("parent_timestamp", "parent_lsn"):
            if spec.get(point):
                branch[point] = spec[point]
        self.branches[bid] = branch
        return branch

    def _role(self, bid: str, name: str) -> dict[str, Any]:
        role = {
            "branch_id": bid,
            "name": name,
            "password": f"pw-{uuid.uuid4().hex}",
            "protected": False,
            "created_at": _now(),
            "updated_at": _now(),
        }
        self.roles[(bid, name)] = role
        return role

    def _public_role(self, role: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in role.items() if k != "password"}

    def _annotation(self, bid: str) -> dict[str, Any]:
        return {
            "object": {"type": "console/branch", "id": bid},
            "value": {},
            "created_at": _now(),
            "updated_at": _now(),
        }

    def _route(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts == ["projects"]:
            if method == "GET":
                search = query.get("search", "")
                items = [
                    {k: v for k, v in p.items() if k in _PROJECT_LIST_FIELDS} | {"active_time": 0}
                    for p in self.projects.values()
                    if search in p["name"] or search == p["id"]
                ]
                return 200, {"projects": items, "applications": {}, "integrations": {}}
            return self._create_project(body["project"])
        pid = parts[1]
        project = self._project(pid)
        rest = parts[2:]
        if not rest:
            if method == "GET":
                return 200, {"project": project}
            if method == "PATCH":
                changes = body["project"]
                for key in ("name", "history_retention_seconds"):
                    if key in changes:
                        project[key] = changes[key]
                if "default_endpoint_settings" in changes:
                    project["default_endpoint_settings"] = changes["default_endpoint_settings"]
                project["updated_at"] = _now()
                return 200, {"project": project, "operations": []}
            for table in (self.branches, self.endpoints):
                for key in [k for k, v in table.items() if v["project_id"] == pid]:
                    del table[key]
            del self.projects[pid]
            return 200, {"project": project}
        if rest[0] == "connection_uri":
            branch = self.branches[query["branch_id"]]
            role = self.roles[(branch["id"], query["role_name"])]
            hook = self.uri_for
            real = hook(branch, role["name"], query["database_name"]) if hook else None
            if real is not None:
                return 200, {"uri": real}
            endpoint = next(e for e in self.endpoints.values() if e["branch_id"] == branch["id"])
            host = (
                endpoint["host"].replace(".", "-pooler.", 1)
                if query.get("pooled")
                else (endpoint["host"])
            )
            uri = (
                f"postgresql://{role['name']}:{role['password']}@{host}/"
                f"{query['database_name']}?sslmode=require"
            )
            return 200, {"uri": uri}
        if rest[0] == "operations":
            op = self.operations[rest[1]]
            self.polls[op["id"]] += 1
            script = self.scripts.get(op["id"])
            if script:
                op["status"] = script.pop(0) if len(script) > 1 else script[0]
                if op["status"] == "failed":
                    op["failures_count"] += 1
                    op["error"] = "the fake's scripted failure"
                    op["retry_at"] = _now()
                op["updated_at"] = _now()
            elif self.polls[op["id"]] >= self.op_polls:
                op["status"] = "finished"
            return 200, {"operation": op}
        if rest[0] == "endpoints":
            return self._endpoints(method, pid, rest[1:], body)
        if rest[0] == "branches":
            return self._branches(method, pid, query, rest[1:], body)
        raise KeyError(path)

    def _create_project(self, spec: dict[str, Any]) -> tuple[int, Any]:
        pid = f"{spec.get('name', 'project')[:20]}-{next(self._ids):06d}".lower()
        pid = re.sub(r"[^a-z0-9-]", "-", pid)
        settings = spec.get("default_endpoint_settings", {})
        project = {
            "consumption_period_end": _now(),
            "consumption_period_start": _now(),
            "active_time_seconds": 0,
            "compute_time_seconds": 0,
            "written_data_bytes": 0,
            "data_transfer_bytes": 0,
            "data_storage_bytes_hour": 0,
            "id": pid,
            "platform_id": "aws",
            "region_id": spec.get("region_id", "aws-us-east-2"),
            "name": spec.get("name", pid),
            "pg_version": spec.get("pg_version", 17),
            "proxy_host": "eu-central-1.aws.neon.test",
            "branch_logical_size_limit": 0,
            "branch_logical_size_limit_bytes": 0,
            "store_passwords": True,
            "cpu_used_sec": 0,
            "provisioner": "k8s-neonvm",
            "creation_source": "api",
            "history_retention_seconds": spec.get("history_retention_seconds", 86400),
            "default_endpoint_settings": settings,
            "created_at": _now(),
            "updated_at": _now(),
            "owner_id": "owner-1",
        }
        self.projects[pid] = project
        branch_spec = spec.get("branch", {})
        branch = self._new_branch(pid, {"name": branch_spec.get("name", "main")}, default=True)
        endpoint = self._new_endpoint(pid, branch["id"], {"type": "read_write", **settings})
        role = self._role(branch["id"], branch_spec.get("role_name", "neondb_owner"))
        db_name = branch_spec.get("database_name", "neondb")
        database = {
            "id": next(self._ids),
            "branch_id": branch["id"],
            "name": db_name,
            "owner_name": role["name"],
            "created_at": _now(),
            "updated_at": _now(),
        }
        self.databases[(branch["id"], db_name)] = database
        uri = f"postgresql://{role['name']}:{role['password']}@{endpoint['host']}/{db_name}"
        ops = [
            self._op(pid, "create_timeline", branch_id=branch["id"]),
            self._op(pid, "start_compute", branch_id=branch["id"], endpoint_id=endpoint["id"]),
        ]
        return 201, {
            "project": project,
            "connection_uris": [
                {
                    "connection_uri": uri,
                    "connection_parameters": {
                        "database": db_name,
                        "password": role["password"],
                        "role": role["name"],
                        "host": endpoint["host"],
                        "pooler_host": endpoint["host"],
                    },
                }
            ],
            "roles": [role],
            "databases": [database],
            "operations": ops,
            "branch": branch,
            "endpoints": [endpoint],
        }

    def _endpoints(
        self, method: str, pid: str, rest: list[str], body: dict[str, Any]
    ) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                eps = [e for e in self.endpoints.values() if e["project_id"] == pid]
                return 200, {"endpoints": eps}
            spec = body["endpoint"]
            endpoint = self._new_endpoint(pid, spec["branch_id"], spec)
            op = self._op(pid, "start_compute", endpoint_id=endpoint["id"])
            return 201, {"endpoint": endpoint, "operations": [op]}
        endpoint = self.endpoints[rest[0]]
        if method == "GET":
            return 200, {"endpoint": endpoint}
        if method == "PATCH":
            for key, value in body["endpoint"].items():
                if key in endpoint:
                    endpoint[key] = value
            op = self._op(pid, "apply_config", endpoint_id=endpoint["id"])
            return 200, {"endpoint": endpoint, "operations": [op]}
        del self.endpoints[rest[0]]
        return 200, {"endpoint": endpoint, "operations": []}

    def _branches(
        self,
        method: str,
        pid: str,
        query: dict[str, str],
        rest: list[str],
        body: dict[str, Any],
    ) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                search = query.get("search", "")
                found = [
                    b
                    for b in self.branches.values()
                    if b["project_id"] == pid and (search in b["name"] or search == b["id"])
                ]
                return 200, {
                    "branches": found,
                    "annotations": {},
                    "pagination": {"sort_by": "updated_at", "sort_order": "DESC"},
                }
            spec = body.get("branch", {})
            parent_id = spec.get("parent_id") or next(
                b["id"] for b in self.branches.values() if b["project_id"] == pid and b["default"]
            )
            branch = self._new_branch(pid, {**spec, "parent_id": parent_id}, default=False)
            endpoints = [
                self._new_endpoint(pid, branch["id"], e) for e in body.get("endpoints", [])
            ]
            roles = []
            for (bid, name), role in list(self.roles.items()):
                if bid == parent_id:  # a branch copies its parent's roles (and passwords)
                    copy = {**role, "branch_id": branch["id"]}
                    self.roles[(branch["id"], name)] = copy
                    roles.append(self._public_role(copy))
            ops = [self._op(pid, "create_branch", branch_id=branch["id"])]
            ops += [
                self._op(pid, "start_compute", branch_id=branch["id"], endpoint_id=e["id"])
                for e in endpoints
            ]
            return 201, {
                "branch": branch,
                "endpoints": endpoints,
                "operations": ops,
                "roles": roles,
                "databases": [],
            }
        bid = rest[0]
        branch = self.branches[bid]
        if branch["project_id"] != pid:
            raise KeyError(bid)
        if len(rest) == 1:
            if method == "GET":
                return 200, {"branch": branch, "annotation": self._annotation(bid)}
            if method == "PATCH":
                for key, value in body["branch"].items():
                    if value is None:
                        branch.pop(key, None)
                    else:
                        branch[key] = value
                branch["updated_at"] = _now()
                return 200, {"branch": branch, "operations": []}
            del self.branches[bid]
            for key in [k for k, e in self.endpoints.items() if e["branch_id"] == bid]:
                del self.endpoints[key]
            return 200, {"branch": branch, "operations": [self._op(pid, "delete_timeline")]}
        if rest[1] == "endpoints":
            eps = [e for e in self.endpoints.values() if e["branch_id"] == bid]
            return 200, {"endpoints": eps}
        if rest[1] == "roles":
            if len(rest) == 2:
                if method == "GET":
                    roles = [self._public_role(r) for (b, _), r in self.roles.items() if b == bid]
                    return 200, {"roles": roles}
                role = self._role(bid, body["role"]["name"])
                return 201, {"role": role, "operations": [self._op(pid, "apply_config")]}
            role = self.roles[(bid, rest[2])]
            if len(rest) == 4 and rest[3] == "reveal_password":
                return 200, {"password": role["password"]}
            if method == "GET":
                return 200, {"role": self._public_role(role)}
            del self.roles[(bid, rest[2])]
            return 200, {"role": self._public_role(role), "operations": []}
        if rest[1] == "restore":
            return self._restore(pid, branch, body)
        raise KeyError(bid)

    def _restore(self, pid: str, branch: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        """Neon's restore: the branch keeps its id, endpoints and connection string and
        takes the source's data; ``preserve_under_name`` keeps the state it had as a new
        branch (which the branch's children move to)."""
        source = self.branches[body["source_branch_id"]]
        bid = branch["id"]
        point = body.get("source_timestamp") or body.get("source_lsn")
        children = [b for b in self.branches.values() if b.get("parent_id") == bid]
        preserve = body.get("preserve_under_name")
        if source["id"] == bid and not point:
            raise _Refusal("restoring a branch from itself needs source_timestamp or source_lsn")
        if (source["id"] == bid or children) and not preserve:
            raise _Refusal("preserve_under_name is required for this restore")
        self.restores.append({"branch_id": bid, **body})
        ops = []
        if preserve:
            kept = self._new_branch(
                pid, {"name": preserve, "parent_id": branch.get("parent_id")}, default=False
            )
            if not kept.get("parent_id"):
                kept.pop("parent_id", None)
            for child in children:
                child["parent_id"] = kept["id"]
            for (owner, name), role in list(self.roles.items()):
                if owner == bid:
                    self.roles[(kept["id"], name)] = {**role, "branch_id": kept["id"]}
            ops.append(self._op(pid, "create_branch", branch_id=kept["id"]))
        for key in ("parent_timestamp", "parent_lsn"):
            branch.pop(key, None)
        if body.get("source_timestamp"):
            branch["parent_timestamp"] = body["source_timestamp"]
        if body.get("source_lsn"):
            branch["parent_lsn"] = body["source_lsn"]
        branch["restored_from"] = source["id"]
        branch["updated_at"] = _now()
        ops.append(self._op(pid, "create_timeline", branch_id=bid))
        ops += [
            self._op(pid, "start_compute", branch_id=bid, endpoint_id=e["id"])
            for e in self.endpoints.values()
            if e["branch_id"] == bid
        ]
        return 200, {"branch": branch, "operations": ops}


_PROJECT_LIST_FIELDS = {
    "id",
    "platform_id",
    "region_id",
    "name",
    "provisioner",
    "pg_version",
    "proxy_host",
    "branch_logical_size_limit",
    "branch_logical_size_limit_bytes",
    "store_passwords",
    "cpu_used_sec",
    "creation_source",
    "created_at",
    "updated_at",
    "owner_id",
    "history_retention_seconds",
}


# -- Railway ----------------------------------------------------------------------------

RAILWAY_SDL = """
scalar EnvironmentVariables
scalar JSON
scalar DateTime

type Query {
  project(id: String!): Project!
  projects(after: String, first: Int, includeDeleted: Boolean, workspaceId: String):
    QueryProjectsConnection!
  serviceInstance(environmentId: String!, serviceId: String!): ServiceInstance!
  variables(environmentId: String!, projectId: String!, serviceId: String,
    unrendered: Boolean): EnvironmentVariables!
  domains(environmentId: String!, projectId: String!, serviceId: String!): AllDomains!
  deployments(after: String, before: String, first: Int, input: DeploymentListInput!,
    last: Int): QueryDeploymentsConnection!
  deployment(id: String!): Deployment!
}

type Mutation {
  projectCreate(input: ProjectCreateInput!): Project!
  projectUpdate(id: String!, input: ProjectUpdateInput!): Project!
  projectDelete(id: String!): Boolean!
  environmentCreate(input: EnvironmentCreateInput!): Environment!
  environmentDelete(id: String!): Boolean!
  serviceCreate(input: ServiceCreateInput!): Service!
  serviceDelete(environmentId: String, id: String!): Boolean!
  serviceInstanceUpdate(environmentId: String, input: ServiceInstanceUpdateInput!,
    serviceId: String!): Boolean!
  serviceInstanceRedeploy(environmentId: String!, serviceId: String!): Boolean!
  variableCollectionUpsert(input: VariableCollectionUpsertInput!): Boolean!
  variableDelete(input: VariableDeleteInput!): Boolean!
  serviceDomainCreate(input: ServiceDomainCreateInput!): ServiceDomain!
  serviceDomainDelete(id: String!): Boolean!
}

type Project { id: String! name: String! description: String
  environments: ProjectEnvironmentsConnection! services: ProjectServicesConnection! }
type ProjectEnvironmentsConnection { edges: [ProjectEnvironmentsConnectionEdge!]! }
type ProjectEnvironmentsConnectionEdge { node: Environment! }
type ProjectServicesConnection { edges: [ProjectServicesConnectionEdge!]! }
type ProjectServicesConnectionEdge { node: Service! }
type QueryProjectsConnection { edges: [QueryProjectsConnectionEdge!]! }
type QueryProjectsConnectionEdge { node: Project! }
type Environment { id: String! name: String! projectId: String! }
type Service { id: String! name: String! projectId: String! }
type ServiceInstance { id: String! serviceId: String! environmentId: String!
  healthcheckPath: String healthcheckTimeout: Int overlapSeconds: Int drainingSeconds: Int
  numReplicas: Int startCommand: String rootDirectory: String }
type AllDomains { serviceDomains: [ServiceDomain!]! }
enum DeploymentStatus { BUILDING CRASHED DEPLOYING FAILED INITIALIZING NEEDS_APPROVAL QUEUED
  REMOVED REMOVING SKIPPED SLEEPING SUCCESS WAITING }
type Deployment { id: ID! status: DeploymentStatus! createdAt: DateTime! updatedAt: DateTime!
  projectId: String! environmentId: String! serviceId: String canRedeploy: Boolean!
  staticUrl: String url: String }
type PageInfo { hasNextPage: Boolean! hasPreviousPage: Boolean! startCursor: String
  endCursor: String }
type QueryDeploymentsConnection { edges: [QueryDeploymentsConnectionEdge!]! pageInfo: PageInfo! }
type QueryDeploymentsConnectionEdge { cursor: String! node: Deployment! }
type ServiceDomain { id: String! domain: String! environmentId: String! serviceId: String!
  targetPort: Int }

input ProjectCreateInput { name: String description: String workspaceId: String
  defaultEnvironmentName: String isPublic: Boolean prDeploys: Boolean runtime: String }
input ProjectUpdateInput { name: String description: String isPublic: Boolean prDeploys: Boolean }
input EnvironmentCreateInput { projectId: String! name: String! sourceEnvironmentId: String
  ephemeral: Boolean skipInitialDeploys: Boolean stageInitialChanges: Boolean
  applyChangesInBackground: Boolean }
input ServiceSourceInput { repo: String image: String }
input ServiceCreateInput { projectId: String! name: String environmentId: String
  source: ServiceSourceInput branch: String variables: EnvironmentVariables }
input ServiceInstanceUpdateInput { healthcheckPath: String healthcheckTimeout: Int
  overlapSeconds: Int drainingSeconds: Int numReplicas: Int startCommand: String
  rootDirectory: String preDeployCommand: [String!] region: String sleepApplication: Boolean }
input VariableCollectionUpsertInput { projectId: String! environmentId: String!
  serviceId: String variables: EnvironmentVariables! replace: Boolean skipDeploys: Boolean }
input VariableDeleteInput { projectId: String! environmentId: String! name: String!
  serviceId: String }
input ServiceDomainCreateInput { environmentId: String! serviceId: String! targetPort: Int }
input DeploymentStatusInput { in: [DeploymentStatus!] notIn: [DeploymentStatus!] }
input DeploymentListInput { environmentId: String includeDeleted: Boolean projectId: String
  serviceId: String status: DeploymentStatusInput }
"""


class FakeRailway:
    url: str = ""

    def __init__(self) -> None:
        from graphql import build_schema

        self.schema = build_schema(RAILWAY_SDL)
        self.lock = threading.Lock()
        self.tokens = {"railway-test-token"}
        self._ids = itertools.count(1)
        self._drop: str | None = None
        self.reset()

    def reset(self) -> None:
        self._echo: str | None = None
        self._script: list[str] | None = None
        self.st_deployments: dict[str, dict[str, Any]] = {}  # in creation order
        #: each variableCollectionUpsert as sent, its values replaced by the sorted keys
        self.upserts: list[dict[str, Any]] = []
        self.st_projects: dict[str, dict[str, Any]] = {}
        self.st_environments: dict[str, dict[str, Any]] = {}
        self.st_services: dict[str, dict[str, Any]] = {}
        self.st_instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.st_variables: dict[tuple[str, str, str | None], dict[str, str]] = {}
        self.st_domains: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.violations: list[str] = []

    def drop_after_apply(self, field: str) -> None:
        self._drop = field

    def count(self, field: str) -> int:
        return self.calls.count(field)

    def echo_error_next(self, field: str) -> None:
        """Answer the next ``field`` with a GraphQL error quoting the request's variables,
        as a server does when it cannot coerce an input."""
        self._echo = field

    def script_next_deployment(self, statuses: list[str]) -> None:
        """The next deployment created takes ``statuses`` on successive reads (the last
        stays); unscripted deployments go DEPLOYING → SUCCESS."""
        self._script = list(statuses)

    def add_deployment(self, service_id: str, environment_id: str, status: str = "SUCCESS") -> str:
        """An existing deployment of the service (as left by an earlier deploy)."""
        with self.lock:
            return str(self._new_deployment(service_id, environment_id, [status])["id"])

    def deployments_of(self, service_id: str, environment_id: str) -> list[dict[str, Any]]:
        """The service's deployments in the environment, newest first."""
        found = [
            d
            for d in self.st_deployments.values()
            if d["serviceId"] == service_id and d["environmentId"] == environment_id
        ]
        return found[::-1]

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, Any] | None:
        from graphql import graphql_sync, parse, validate

        if method != "POST" or path != "/graphql/v2":
            return 404, {"message": "not found"}
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return 200, {"errors": [{"message": "Not Authorized"}], "data": None}
        request = json.loads(body)
        document = parse(request["query"])
        problems = validate(self.schema, document)
        if problems:
            self.violations.extend(p.message for p in problems)
            return 400, {"errors": [{"message": p.message} for p in problems]}
        if self._echo is not None and f"{self._echo}(" in request["query"]:
            self._echo = None
            quoted = json.dumps(request.get("variables"))
            return 200, {"data": None, "errors": [{"message": f"Invalid input {quoted}"}]}
        with self.lock:
            result = graphql_sync(
                self.schema,
                request["query"],
                root_value=self,
                variable_values=request.get("variables"),
            )
        fields = [
            sel.name.value
            for definition in document.definitions
            for sel in definition.selection_set.selections  # type: ignore[attr-defined]
        ]
        self.calls.extend(fields)
        if self._drop in fields:
            self._drop = None
            return None
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [{"message": e.message} for e in result.errors]
        return 200, answer

    # -- resolvers (graphql-core calls root attributes with (info, **args)) -------------

    def _id(self) -> str:
        return str(uuid.UUID(int=next(self._ids)))

    def _project_view(self, project: dict[str, Any]) -> dict[str, Any]:
        envs = [e for e in self.st_environments.values() if e["projectId"] == project["id"]]
        svcs = [s for s in self.st_services.values() if s["projectId"] == project["id"]]
        return {
            **project,
            "environments": {"edges": [{"node": e} for e in envs]},
            "services": {"edges": [{"node": s} for s in svcs]},
        }

    def _need(self, table: dict[str, Any], key: str, what: str) -> dict[str, Any]:
        if key not in table:
            raise ValueError(f"{what} not found")
        value: dict[str, Any] = table[key]
        return value

    def project(self, _info: Any, id: str) -> dict[str, Any]:
        return self._project_view(self._need(self.st_projects, id, "Project"))

    def projects(self, _info: Any, **_args: Any) -> dict[str, Any]:
        return {"edges": [{"node": self._project_view(p)} for p in self.st_projects.values()]}

    def projectCreate(self, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        pid = self._id()
        self.st_projects[pid] = {
            "id": pid,
            "name": input.get("name") or pid,
            "description": input.get("description"),
        }
        env_id = self._id()
        self.st_environments[env_id] = {
            "id": env_id,
            "name": input.get("defaultEnvironmentName") or "production",
            "projectId": pid,
        }
        return self._project_view(self.st_projects[pid])

    def projectUpdate(self, _info: Any, id: str, input: dict[str, Any]) -> dict[str, Any]:
        project = self._need(self.st_projects, id, "Project")
        project.update({k: v for k, v in input.items() if k in ("name", "description")})
        return self._project_view(project)

    def projectDelete(self, _info: Any, id: str) -> bool:
        self._need(self.st_projects, id, "Project")
        del self.st_projects[id]
        for table in (self.st_environments, self.st_services):
            for key in [k for k, v in table.items() if v["projectId"] == id]:
                del table[key]
        return True

    def environmentCreate(self, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        self._need(self.st_projects, input["projectId"], "Project")
        if any(
            e["name"] == input["name"] and e["projectId"] == input["projectId"]
            for e in self.st_environments.values()
        ):
            raise ValueError(f"Environment {input['name']} already exists")
        env_id = self._id()
        self.st_environments[env_id] = {
            "id": env_id,
            "name": input["name"],
            "projectId": input["projectId"],
        }
        source = input.get("sourceEnvironmentId")
        if source:
            for (service_id, env), settings in list(self.st_instances.items()):
                if env == source:
                    self.st_instances[(service_id, env_id)] = {**settings, "environmentId": env_id}
        return self.st_environments[env_id]

    def environmentDelete(self, _info: Any, id: str) -> bool:
        self._need(self.st_environments, id, "Environment")
        del self.st_environments[id]
        return True

    def serviceCreate(self, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        self._need(self.st_projects, input["projectId"], "Project")
        sid = self._id()
        self.st_services[sid] = {
            "id": sid,
            "name": input.get("name") or sid,
            "projectId": input["projectId"],
            "source": input.get("source"),
            "branch": input.get("branch"),
        }
        return self.st_services[sid]

    def serviceDelete(self, _info: Any, id: str, environmentId: str | None = None) -> bool:
        self._need(self.st_services, id, "Service")
        del self.st_services[id]
        return True

    def _instance(self, service_id: str, environment_id: str) -> dict[str, Any]:
        self._need(self.st_services, service_id, "Service")
        self._need(self.st_environments, environment_id, "Environment")
        return self.st_instances.setdefault(
            (service_id, environment_id),
            {"id": self._id(), "serviceId": service_id, "environmentId": environment_id},
        )

    def serviceInstance(self, _info: Any, environmentId: str, serviceId: str) -> dict[str, Any]:
        return self._instance(serviceId, environmentId)

    def serviceInstanceUpdate(
        self,
        _info: Any,
        serviceId: str,
        input: dict[str, Any],
        environmentId: str | None = None,
    ) -> bool:
        if environmentId is None:
            raise ValueError("environmentId is required by this fake")
        self._instance(serviceId, environmentId).update(input)
        return True

    def serviceInstanceRedeploy(self, _info: Any, environmentId: str, serviceId: str) -> bool:
        self._instance(serviceId, environmentId)
        script, self._script = self._script or ["DEPLOYING", "SUCCESS"], None
        self._new_deployment(serviceId, environmentId, script)
        return True

    def _new_deployment(
        self, service_id: str, environment_id: str, statuses: list[str]
    ) -> dict[str, Any]:
        did = self._id()
        self.st_deployments[did] = {
            "id": did,
            "projectId": self.st_services[service_id]["projectId"],
            "environmentId": environment_id,
            "serviceId": service_id,
            "createdAt": _now(),
            "updatedAt": _now(),
            "canRedeploy": True,
            "staticUrl": None,
            "url": None,
            "statuses": list(statuses),
            "status": statuses[0],
        }
        return self.st_deployments[did]

    def _read(self, deployment: dict[str, Any]) -> dict[str, Any]:
        """The deployment as seen now; the next read sees its next scripted status."""
        view = {k: v for k, v in deployment.items() if k != "statuses"}
        if len(deployment["statuses"]) > 1:
            deployment["statuses"].pop(0)
        deployment["status"] = deployment["statuses"][0]
        return view

    def deployments(
        self, _info: Any, input: dict[str, Any], first: int | None = None, **_page: Any
    ) -> dict[str, Any]:
        status = input.get("status") or {}
        found = [
            d
            for d in reversed(self.st_deployments.values())
            if all(
                d[k] == input[k]
                for k in ("projectId", "environmentId", "serviceId")
                if input.get(k)
            )
            and ("in" not in status or d["status"] in status["in"])
            and d["status"] not in status.get("notIn", [])
        ]
        page = found[:first] if first is not None else found
        return {
            "edges": [{"cursor": d["id"], "node": self._read(d)} for d in page],
            "pageInfo": {
                "hasNextPage": len(page) < len(found),
                "hasPreviousPage": False,
                "startCursor": page[0]["id"] if page else None,
                "endCursor": page[-1]["id"] if page else None,
            },
        }

    def deployment(self, _info: Any, id: str) -> dict[str, Any]:
        return self._read(self._need(self.st_deployments, id, "Deployment"))

    def variables(
        self,
        _info: Any,
        projectId: str,
        environmentId: str,
        serviceId: str | None = None,
        unrendered: bool | None = None,
    ) -> dict[str, str]:
        return dict(self.variables_of(projectId, environmentId, serviceId))

    def variables_of(self, project: str, env: str, service: str | None) -> dict[str, str]:
        return self.st_variables.setdefault((project, env, service), {})

    def variableCollectionUpsert(self, _info: Any, input: dict[str, Any]) -> bool:
        self._need(self.st_environments, input["environmentId"], "Environment")
        current = self.variables_of(
            input["projectId"], input["environmentId"], input.get("serviceId")
        )
        if input.get("replace"):
            current.clear()
        current.update({k: str(v) for k, v in input["variables"].items()})
        self.upserts.append({**input, "variables": sorted(input["variables"])})
        service_id = input.get("serviceId")
        if service_id in self.st_services and not input.get("skipDeploys"):  # Railway deploys
            self._new_deployment(service_id, input["environmentId"], ["DEPLOYING", "SUCCESS"])
        return True

    def variableDelete(self, _info: Any, input: dict[str, Any]) -> bool:
        current = self.variables_of(
            input["projectId"], input["environmentId"], input.get("serviceId")
        )
        if input["name"] not in current:
            raise ValueError(f"Variable {input['name']} not found")
        del current[input["name"]]
        return True

    def domains(
        self, _info: Any, environmentId: str, projectId: str, serviceId: str
    ) -> dict[str, Any]:
        found = [
            d
            for d in self.st_domains.values()
            if d["environmentId"] == environmentId and d["serviceId"] == serviceId
        ]
        return {"serviceDomains": found}

    def serviceDomainCreate(self, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        self._instance(input["serviceId"], input["environmentId"])
        did = self._id()
        service = self.st_services[input["serviceId"]]
        self.st_domains[did] = {
            "id": did,
            "domain": f"{service['name']}-{did[-6:]}.up.railway.app",
            "environmentId": input["environmentId"],
            "serviceId": input["serviceId"],
            "targetPort": input.get("targetPort"),
        }
        return self.st_domains[did]

    def serviceDomainDelete(self, _info: Any, id: str) -> bool:
        self._need(self.st_domains, id, "Domain")
        del self.st_domains[id]
        return True


# -- Vercel -----------------------------------------------------------------------------

VERCEL_TARGETS = frozenset({"production", "preview", "development"})
VERCEL_ENV_TYPES = frozenset({"system", "secret", "encrypted", "plain", "sensitive"})
VERCEL_READY_STATES = frozenset(
    {"QUEUED", "BUILDING", "INITIALIZING", "READY", "ERROR", "CANCELED"}
)


def _vercel_error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


class FakeVercel:
    """Vercel's REST API for project variables and redeploys, as ``VercelClient`` uses it.

    Checks the Bearer token (unknown → 403 ``forbidden`` with ``invalidToken``, as Vercel
    answers), ``teamId`` when ``team_id`` is set, every query parameter and request body
    against the shapes of Vercel's REST reference; a misshaped request is answered 400 and
    recorded in ``violations``. Variables are kept per project with their plain value
    (``env_of``); listing returns encrypted values as ciphertext and sensitive ones
    without a value, as Vercel does. ``add_project``/``add_deployment`` seed state;
    ``script_next_deployment(states)`` makes the next redeploy go through ``readyState``
    ``states`` one read at a time (unscripted: BUILDING → READY); ``fail_next(status, n)``
    answers the next ``n`` requests with ``status``.
    """

    url: str = ""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = {"vercel-test-token"}
        self.team_id: str | None = None
        self._ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.projects: dict[str, dict[str, Any]] = {}
            self.envs: dict[str, list[dict[str, Any]]] = {}
            self.deployments: dict[str, dict[str, Any]] = {}  # in creation order
            self.requests: list[tuple[str, str, dict[str, str]]] = []
            self.redeploys: list[dict[str, Any]] = []  # request bodies of POST /v13/deployments
            self.violations: list[str] = []
            self._script: list[str] | None = None
            self._fail: tuple[int, int] | None = None

    # -- set-up and inspection ----------------------------------------------------------

    def add_project(self, name: str) -> str:
        with self.lock:
            pid = f"prj_{next(self._ids):06d}"
            self.projects[pid] = {"id": pid, "name": name}
            self.envs[pid] = []
            return pid

    def add_deployment(
        self, project_id: str, target: str | None = "production", state: str = "READY"
    ) -> str:
        assert state in VERCEL_READY_STATES, state
        with self.lock:
            return str(self._new_deployment(self.projects[project_id], target, [state])["id"])

    def script_next_deployment(self, states: list[str]) -> None:
        assert states and set(states) <= VERCEL_READY_STATES, states
        self._script = list(states)

    def fail_next(self, status: int, count: int = 1) -> None:
        self._fail = (status, count)

    def env_of(self, project_id: str) -> dict[tuple[str, str], tuple[str, str]]:
        """``{(key, target): (type, plain value)}`` of the project's variables."""
        return {
            (env["key"], target): (env["type"], env["value"])
            for env in self.envs[project_id]
            for target in env["target"]
        }

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(prefix))

    # -- HTTP ---------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[Any, ...] | None:
        with self.lock:
            self.requests.append((method, path, dict(query)))
            if self._fail is not None:
                status, left = self._fail
                self._fail = (status, left - 1) if left > 1 else None
                return _vercel_error(status, "scripted", f"scripted HTTP {status}")
            token = headers.get("authorization", "")
            if not token.startswith("Bearer ") or token.removeprefix("Bearer ") not in self.tokens:
                status, answer = _vercel_error(403, "forbidden", "Not authorized")
                answer["error"]["invalidToken"] = True
                return status, answer
            if self.team_id is not None and query.get("teamId") != self.team_id:
                return _vercel_error(403, "forbidden", "Not authorized")
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                return self._violation(f"{method} {path}: body is not JSON")
            return self._route(method, path, query, payload)

    def _violation(self, problem: str) -> tuple[int, dict[str, Any]]:
        self.violations.append(problem)
        return _vercel_error(400, "bad_request", problem)

    def _allowed(self, query: dict[str, str], names: set[str]) -> str | None:
        unknown = set(query) - names - {"teamId", "slug"}
        return f"unknown query parameter(s) {sorted(unknown)}" if unknown else None

    def _route(
        self, method: str, path: str, query: dict[str, str], payload: Any
    ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method in ("GET", "POST") and parts[:2] == ["v10", "projects"] and parts[3:] == ["env"]:
            project = self.projects.get(parts[2])
            if project is None:
                return _vercel_error(404, "not_found", "Project not found")
            if method == "GET":
                problem = self._allowed(query, {"decrypt", "gitBranch", "source"})
                return self._violation(problem) if problem else self._list_env(project, query)
            problem = self._allowed(query, {"upsert"})
            return self._violation(problem) if problem else self._upsert(project, query, payload)
        if method == "GET" and parts == ["v6", "deployments"]:
            problem = self._allowed(
                query,
                {"app", "from", "limit", "projectId", "target", "to", "state", "since", "until"},
            )
            return self._violation(problem) if problem else self._list_deployments(query)
        if method == "POST" and parts == ["v13", "deployments"]:
            problem = self._allowed(query, {"forceNew", "skipAutoDetectionConfirmation"})
            return self._violation(problem) if problem else self._redeploy(payload)
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v13", "deployments"]:
            problem = self._allowed(query, {"withGitRepoInfo"})
            if problem:
                return self._violation(problem)
            deployment = self.deployments.get(parts[2])
            if deployment is None:
                return _vercel_error(404, "not_found", "Deployment not found")
            return 200, self._read(deployment)
        return self._violation(f"{method} {path} is not an endpoint this fake knows")

    # -- environment variables ----------------------------------------------------------

    def _present(self, env: dict[str, Any], decrypt: bool) -> dict[str, Any]:
        shown = {k: v for k, v in env.items() if k != "value"}
        if env["type"] == "encrypted":
            shown["value"] = (
                env["value"] if decrypt else f"enc:{uuid.uuid5(uuid.NAMESPACE_OID, env['value'])}"
            )
            shown["decrypted"] = decrypt
        elif env["type"] == "plain":
            shown["value"] = env["value"]
        return shown  # sensitive (and secret) values are never returned

    def _list_env(self, project: dict[str, Any], query: dict[str, str]) -> tuple[int, Any]:
        decrypt = query.get("decrypt") == "true"
        return 200, {"envs": [self._present(e, decrypt) for e in self.envs[project["id"]]]}

    def _upsert(
        self, project: dict[str, Any], query: dict[str, str], payload: Any
    ) -> tuple[int, Any]:
        items = payload if isinstance(payload, list) else [payload]
        for item in items:
            problem = self._env_problem(item)
            if problem:
                return self._violation(f"POST /v10/projects/{project['id']}/env: {problem}")
        created = []
        for item in items:
            envs = self.envs[project["id"]]
            clash = [
                e
                for e in envs
                if e["key"] == item["key"] and set(e["target"]) & set(item["target"])
            ]
            if clash and query.get("upsert") != "true":
                return _vercel_error(
                    400, "ENV_ALREADY_EXISTS", f"A variable named {item['key']} exists"
                )
            env = clash[0] if clash else {"id": f"env_{next(self._ids):06d}", "createdAt": 0}
            if not clash:
                envs.append(env)
            env.update(
                {
                    "key": item["key"],
                    "value": item["value"],
                    "type": item["type"],
                    "target": list(item["target"]),
                    "updatedAt": 0,
                }
            )
            created.append(self._present(env, decrypt=False))
        return 201, {"created": created[0] if len(created) == 1 else created, "failed": []}

    def _env_problem(self, item: Any) -> str | None:
        if not isinstance(item, dict):
            return "each variable must be an object"
        missing = {"key", "value", "type"} - set(item)
        if missing:
            return f"missing {sorted(missing)}"
        unknown = set(item) - {
            "key",
            "value",
            "type",
            "target",
            "gitBranch",
            "comment",
            "customEnvironmentIds",
        }
        if unknown:
            return f"unknown field(s) {sorted(unknown)}"
        if item["type"] not in VERCEL_ENV_TYPES:
            return f"type must be one of {sorted(VERCEL_ENV_TYPES)}"
        if not isinstance(item["value"], str) or not isinstance(item["key"], str):
            return "key and value must be strings"
        target = item.get("target")
        if not isinstance(target, list) or not target or not set(target) <= VERCEL_TARGETS:
            return f"target must be a non-empty list of {sorted(VERCEL_TARGETS)}"
        if item["type"] == "sensitive" and "development" in target:
            return "sensitive variables cannot target development"
        return None

    # -- deployments --------------------------------------------------------------------

    def _new_deployment(
        self, project: dict[str, Any], target: str | None, states: list[str]
    ) -> dict[str, Any]:
        did = f"dpl_{next(self._ids):06d}"
        self.deployments[did] = {
            "id": did,
            "name": project["name"],
            "projectId": project["id"],
            "url": f"{project['name']}-{did[-6:]}.vercel.app",
            "target": target,
            "createdAt": next(self._ids),
            "states": list(states),
            "readyState": states[0],
            # what the build saw: Vercel bakes the variables in at deploy time
            "env": {k: v for k, (_, v) in self.env_of(project["id"]).items() if k[1] == target},
        }
        return self.deployments[did]

    def _read(self, deployment: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in deployment.items() if k not in ("states", "env")}
        if len(deployment["states"]) > 1:
            deployment["states"].pop(0)
        deployment["readyState"] = deployment["states"][0]
        return view

    def _list_deployments(self, query: dict[str, str]) -> tuple[int, Any]:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            return self._violation("limit must be a number")
        project = query.get("projectId")
        if project is not None and project not in self.projects:
            return _vercel_error(404, "not_found", "Project not found")
        found = [
            d
            for d in reversed(self.deployments.values())
            if (project is None or d["projectId"] == project)
            and ("target" not in query or d["target"] == query["target"])
        ][:limit]
        listed = [
            {
                "uid": d["id"],
                "name": d["name"],
                "url": d["url"],
                "created": d["createdAt"],
                "createdAt": d["createdAt"],
                "state": d["readyState"],
                "readyState": d["readyState"],
                "target": d["target"],
                "meta": {},
            }
            for d in found
        ]
        return 200, {
            "deployments": listed,
            "pagination": {"count": len(listed), "next": None, "prev": None},
        }

    def _redeploy(self, payload: Any) -> tuple[int, Any]:
        if not isinstance(payload, dict):
            return self._violation("POST /v13/deployments: body must be an object")
        unknown = set(payload) - {
            "deploymentId",
            "name",
            "target",
            "meta",
            "customEnvironmentSlugOrId",
            "project",
        }
        if unknown or not {"deploymentId", "name"} <= set(payload):
            return self._violation(
                f"POST /v13/deployments: unexpected body fields {sorted(payload)}"
            )
        if payload.get("meta") != {"action": "redeploy"}:
            return self._violation("POST /v13/deployments: a redeploy carries meta.action=redeploy")
        if payload.get("target") not in (None, "production"):
            return self._violation("POST /v13/deployments: target must be production or absent")
        source = self.deployments.get(payload["deploymentId"])
        if source is None:
            return _vercel_error(404, "not_found", "Deployment not found")
        if source["name"] != payload["name"]:
            return _vercel_error(400, "bad_request", "name does not match the deployment")
        self.redeploys.append(dict(payload))
        states, self._script = self._script or ["BUILDING", "READY"], None
        project = self.projects[source["projectId"]]
        created = self._new_deployment(project, payload.get("target"), states)
        return 200, {k: v for k, v in created.items() if k not in ("states", "env")}
