"""The dynamic providers' CRUD, run as plain Python against the loopback fakes — as the
Pulumi engine would call them: check → create → read → diff/update → delete."""

from __future__ import annotations

import base64
from typing import Any

import dill
import pytest
from pulumi.dynamic import Config, ConfigureRequest
from pulumi.dynamic.dynamic import serialize_provider

from components.providers._base import PROVIDER_VERSION, UNKNOWN, ApiProvider
from components.providers.neon import NeonBranchProvider, NeonProjectProvider
from components.providers.railway import (
    RailwayEnvironmentProvider,
    RailwayProjectProvider,
    RailwayServiceInstanceProvider,
    RailwayServiceProvider,
    RailwayVariablesProvider,
)
from ptool_ops.errors import ConfigError, ServiceUnavailable
from tests.iac.fakes import FakeNeon, FakeRailway

PROJECT_INPUTS = {
    "name": "ptool-staging",
    "region_id": "aws-eu-central-1",
    "pg_version": 17,
    "history_retention_seconds": 3 * 86400,
    "autoscaling_limit_min_cu": 0.25,
    "autoscaling_limit_max_cu": 2,
    "suspend_timeout_seconds": 300,
    "database_name": "booking",
    "owner_role": "booking_owner",
    "org_id": None,
    "project_id": None,  # outputs are seeded as None among the inputs
    "host": None,
}


@pytest.fixture
def neon(fake_neon: FakeNeon) -> FakeNeon:
    fake_neon.reset()
    fake_neon.op_polls = 0  # provider tests: operations end at once (polling: client tests)
    return fake_neon


@pytest.fixture
def railway(fake_railway: FakeRailway) -> FakeRailway:
    fake_railway.reset()
    return fake_railway


def configured(provider: ApiProvider, config: dict[str, str]) -> Any:
    provider.configure(ConfigureRequest(Config(config, "ptool-ops")))
    return provider


def neon_provider(cls: type[ApiProvider], fake: FakeNeon) -> Any:
    return configured(
        cls(),
        {"ptool-ops:neonApiKey": "neon-test-key", "ptool-ops:neonApiUrl": f"{fake.url}/api/v2"},
    )


def railway_provider(cls: type[ApiProvider], fake: FakeRailway) -> Any:
    return configured(
        cls(),
        {
            "ptool-ops:railwayToken": "railway-test-token",
            "ptool-ops:railwayApiUrl": f"{fake.url}/graphql/v2",
        },
    )


def checked(
    provider: ApiProvider, news: dict[str, Any], olds: dict[str, Any] | None = None
) -> dict[str, Any]:
    result = provider.check(olds or {}, {**news, "__provider": "serialized"})
    assert result.failures == [], [(f.property, f.reason) for f in result.failures]
    return result.inputs


# -- Neon -------------------------------------------------------------------------------


def test_neon_project_lifecycle(neon: FakeNeon) -> None:
    provider = neon_provider(NeonProjectProvider, neon)
    inputs = checked(provider, PROJECT_INPUTS)
    assert inputs["version"] == PROVIDER_VERSION and "host" not in inputs

    created = provider.create(inputs)
    outs = created.outs
    project = neon.projects[created.id]
    assert project["history_retention_seconds"] == 3 * 86400
    assert outs["project_id"] == created.id and outs["branch_id"].startswith("br-")
    assert outs["host"] == neon.endpoints[outs["endpoint_id"]]["host"]
    owner = neon.roles[(outs["branch_id"], "booking_owner")]
    assert outs["owner_password"] == owner["password"]

    read = provider.read(created.id, outs)
    assert read.id == created.id and read.outs["host"] == outs["host"]

    news = checked(
        provider,
        {**PROJECT_INPUTS, "history_retention_seconds": 7 * 86400, "autoscaling_limit_max_cu": 4},
    )
    diff = provider.diff(created.id, outs, news)
    assert diff.changes and diff.replaces == []  # in place: no new project, no data loss
    updated = provider.update(created.id, outs, news)
    assert neon.projects[created.id]["history_retention_seconds"] == 7 * 86400
    assert neon.endpoints[outs["endpoint_id"]]["autoscaling_limit_max_cu"] == 4
    assert updated.outs["project_id"] == created.id

    moved = checked(provider, {**PROJECT_INPUTS, "region_id": "aws-us-east-2"})
    assert provider.diff(created.id, updated.outs, moved).replaces == ["region_id"]

    provider.delete(created.id, updated.outs)
    assert created.id not in neon.projects
    provider.delete(created.id, updated.outs)  # already gone: tolerated
    assert neon.violations == []


def test_neon_project_create_interrupted_after_the_api_call(neon: FakeNeon) -> None:
    provider = neon_provider(NeonProjectProvider, neon)
    inputs = checked(provider, PROJECT_INPUTS)
    neon.drop_after_apply("POST", "/projects")
    with pytest.raises(ServiceUnavailable, match="may or may not have been applied"):
        provider.create(inputs)
    assert len(neon.projects) == 1  # Neon did create it

    retried = provider.create(inputs)  # the engine retries the create
    assert len(neon.projects) == 1 and retried.id in neon.projects
    assert neon.mutations("POST", "/projects") == 1
    assert retried.outs["host"] and retried.outs["owner_password"]


def test_neon_branch_lifecycle_and_interrupted_create(neon: FakeNeon) -> None:
    parent = neon_provider(NeonProjectProvider, neon).create(
        checked(neon_provider(NeonProjectProvider, neon), PROJECT_INPUTS)
    )
    provider = neon_provider(NeonBranchProvider, neon)
    base = {
        "project_id": parent.id,
        "parent_id": parent.outs["branch_id"],
        "name": "pr-42",
        "expires_at": "2030-01-08T00:00:00Z",
        "autoscaling_limit_min_cu": 0.25,
        "autoscaling_limit_max_cu": 0.5,
        "suspend_timeout_seconds": 60,
        "owner_role": "booking_owner",
        "branch_id": None,
    }
    inputs = checked(provider, base)
    neon.drop_after_apply("POST", "/branches")
    with pytest.raises(ServiceUnavailable):
        provider.create(inputs)
    created = provider.create(inputs)
    assert [b["name"] for b in neon.branches.values()].count("pr-42") == 1
    assert neon.mutations("POST", f"/projects/{parent.id}/branches") == 1
    branch = neon.branches[created.id]
    assert branch["parent_id"] == parent.outs["branch_id"]
    assert branch["expires_at"] == "2030-01-08T00:00:00Z"
    endpoint = neon.endpoints[created.outs["endpoint_id"]]
    assert endpoint["suspend_timeout_seconds"] == 60 and endpoint["branch_id"] == created.id
    # a branch copies its parent's roles, passwords included
    assert created.outs["owner_password"] == parent.outs["owner_password"]

    assert provider.read(created.id, created.outs).outs["host"] == endpoint["host"]

    news = checked(provider, {**base, "expires_at": "2030-01-15T00:00:00Z", "name": "pr-42-b"})
    diff = provider.diff(created.id, created.outs, news)
    assert diff.changes and diff.replaces == []
    updated = provider.update(created.id, created.outs, news)
    assert neon.branches[created.id]["expires_at"] == "2030-01-15T00:00:00Z"
    assert neon.branches[created.id]["name"] == "pr-42-b"

    reparented = checked(provider, {**base, "parent_id": "br-other"})
    assert provider.diff(created.id, updated.outs, reparented).replaces == ["parent_id"]

    provider.delete(created.id, updated.outs)
    provider.delete(created.id, updated.outs)
    assert created.id not in neon.branches
    assert neon.violations == []


def test_neon_check_names_the_failing_inputs() -> None:
    provider = NeonProjectProvider()
    bad = {**PROJECT_INPUTS, "pg_version": 9, "history_retention_seconds": 99_999_999}
    result = provider.check({}, {**bad, "surprise": 1})
    failures = {f.property: f.reason for f in result.failures}
    assert set(failures) == {"pg_version", "history_retention_seconds", "surprise"}
    assert failures["surprise"] == "unknown input 'surprise'"
    # values still unknown at preview are not judged
    preview = provider.check({}, {**PROJECT_INPUTS, "name": UNKNOWN})
    assert preview.failures == []


def test_neon_credentials_come_from_config_or_environment(
    neon: FakeNeon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEON_API_KEY", raising=False)
    bare = NeonProjectProvider()
    with pytest.raises(ConfigError, match="ptool-ops:neonApiKey or NEON_API_KEY"):
        bare.create(PROJECT_INPUTS)
    monkeypatch.setenv("NEON_API_KEY", "neon-test-key")
    monkeypatch.setenv("NEON_API_URL", f"{neon.url}/api/v2")
    created = NeonProjectProvider().create(checked(NeonProjectProvider(), PROJECT_INPUTS))
    assert created.id in neon.projects
    assert set(neon.auth) == {"Bearer neon-test-key"}


def test_pickled_provider_holds_no_credentials(neon: FakeNeon) -> None:
    provider = neon_provider(NeonProjectProvider, neon)
    blob = base64.b64decode(serialize_provider(provider))
    assert b"neon-test-key" not in blob and neon.url.encode() not in blob
    # an installed package is pickled by reference: the state names the class, no code
    assert b"components.providers.neon" in blob and len(blob) < 200
    clone = dill.loads(blob)  # noqa: S301 - our own blob, as the provider process loads it
    assert type(clone).__name__ == "NeonProjectProvider" and clone._key is None


# -- Railway ----------------------------------------------------------------------------


def test_railway_project_environment_service_lifecycle(railway: FakeRailway) -> None:
    projects = railway_provider(RailwayProjectProvider, railway)
    project_inputs = checked(projects, {"name": "ptool-staging", "description": "API"})
    railway.drop_after_apply("projectCreate")
    with pytest.raises(ServiceUnavailable):
        projects.create(project_inputs)
    project = projects.create(project_inputs)
    assert len(railway.st_projects) == 1 and railway.count("projectCreate") == 1
    assert project.outs["default_environment_id"] in railway.st_environments
    renamed = checked(projects, {"name": "ptool-staging-2", "description": "API"})
    assert projects.diff(project.id, project.outs, renamed).replaces == []
    projects.update(project.id, project.outs, renamed)
    assert railway.st_projects[project.id]["name"] == "ptool-staging-2"
    assert projects.read(project.id, renamed).outs["project_id"] == project.id

    services = railway_provider(RailwayServiceProvider, railway)
    service_inputs = checked(
        services, {"project_id": project.id, "name": "api", "repo": "org/api", "branch": "main"}
    )
    railway.drop_after_apply("serviceCreate")
    with pytest.raises(ServiceUnavailable):
        services.create(service_inputs)
    service = services.create(service_inputs)
    assert [s["name"] for s in railway.st_services.values()] == ["api"]
    assert railway.st_services[service.id]["source"] == {"repo": "org/api"}

    envs = railway_provider(RailwayEnvironmentProvider, railway)
    env_inputs = checked(
        envs,
        {
            "project_id": project.id,
            "name": "pr-42",
            "source_environment_id": project.outs["default_environment_id"],
            "ephemeral": True,
        },
    )
    railway.drop_after_apply("environmentCreate")
    with pytest.raises(ServiceUnavailable):
        envs.create(env_inputs)
    env = envs.create(env_inputs)
    names = [e["name"] for e in railway.st_environments.values()]
    assert names.count("pr-42") == 1
    assert envs.read(env.id, env.outs).id == env.id
    assert envs.diff(env.id, env.outs, {**env_inputs, "name": "pr-43"}).replaces == ["name"]
    envs.delete(env.id, env.outs)
    envs.delete(env.id, env.outs)
    assert env.id not in railway.st_environments

    services.delete(service.id, service.outs)
    projects.delete(project.id, project.outs)
    projects.delete(project.id, project.outs)
    assert railway.st_projects == {} and railway.violations == []


def _project_with_service(railway: FakeRailway) -> tuple[str, str, str]:
    project = railway_provider(RailwayProjectProvider, railway).create({"name": "ptool-dev"})
    service = railway_provider(RailwayServiceProvider, railway).create(
        {"project_id": project.id, "name": "api"}
    )
    return project.id, project.outs["default_environment_id"], service.id


def test_railway_service_instance_settings_update_in_place(railway: FakeRailway) -> None:
    project_id, env_id, service_id = _project_with_service(railway)
    provider = railway_provider(RailwayServiceInstanceProvider, railway)
    base = {
        "project_id": project_id,
        "environment_id": env_id,
        "service_id": service_id,
        "healthcheck_path": "/health/ready",
        "overlap_seconds": 30,
        "draining_seconds": 30,
        "num_replicas": 1,
        "target_port": 3000,
        "domain": None,
    }
    inputs = checked(provider, base)
    railway.drop_after_apply("serviceDomainCreate")
    with pytest.raises(ServiceUnavailable):
        provider.create(inputs)
    created = provider.create(inputs)
    assert len(railway.st_domains) == 1  # the retry found the domain, made no second one
    settings = railway.st_instances[(service_id, env_id)]
    assert settings["healthcheckPath"] == "/health/ready" and settings["overlapSeconds"] == 30
    assert created.outs["domain"].endswith(".up.railway.app")

    read = provider.read(created.id, created.outs)
    assert read.outs["healthcheck_path"] == "/health/ready"

    news = checked(provider, {**base, "overlap_seconds": 60, "num_replicas": 2})
    diff = provider.diff(created.id, created.outs, news)
    assert diff.changes and diff.replaces == []
    updated = provider.update(created.id, created.outs, news)
    assert railway.st_instances[(service_id, env_id)]["overlapSeconds"] == 60
    assert updated.outs["domain"] == created.outs["domain"]

    assert provider.check({}, {**base, "healthcheck_path": "health"}).failures[0].property == (
        "healthcheck_path"
    )
    provider.delete(created.id, updated.outs)
    provider.delete(created.id, updated.outs)
    assert railway.st_domains == {}


def test_railway_variables_upsert_remove_and_delete(railway: FakeRailway) -> None:
    project_id, env_id, service_id = _project_with_service(railway)
    provider = railway_provider(RailwayVariablesProvider, railway)
    base = {
        "project_id": project_id,
        "environment_id": env_id,
        "service_id": service_id,
        "variables": {"DATABASE_URL": "postgresql://a:b@h/db", "FEATURE": "on"},
    }
    live = railway.variables_of(project_id, env_id, service_id)
    live["UNMANAGED"] = "kept"
    created = provider.create(checked(provider, base))
    assert provider.create(checked(provider, base)).id == created.id  # a retry converges
    assert live == {"DATABASE_URL": "postgresql://a:b@h/db", "FEATURE": "on", "UNMANAGED": "kept"}
    assert provider.read(created.id, created.outs).outs["variables"]["FEATURE"] == "on"

    news = checked(provider, {**base, "variables": {"DATABASE_URL": "postgresql://a:c@h/db"}})
    assert provider.diff(created.id, created.outs, news).replaces == []
    updated = provider.update(created.id, created.outs, news)
    assert live == {"DATABASE_URL": "postgresql://a:c@h/db", "UNMANAGED": "kept"}

    provider.delete(created.id, updated.outs)
    provider.delete(created.id, updated.outs)  # names already gone: tolerated
    assert live == {"UNMANAGED": "kept"}
    bad = provider.check({}, {**base, "variables": {"1BAD": "x"}})
    assert bad.failures[0].property == "variables"


def test_railway_create_only_variables_are_never_written_back(railway: FakeRailway) -> None:
    """DATABASE_URL once the rotation owns it: neither a new value nor an update for another
    reason (a provider ``version`` bump) writes the stack's value over the rotation's."""
    project_id, env_id, service_id = _project_with_service(railway)
    provider = railway_provider(RailwayVariablesProvider, railway)
    base = {
        "project_id": project_id,
        "environment_id": env_id,
        "service_id": service_id,
        "variables": {"DATABASE_URL": "postgresql://a:bootstrap@h/db"},
        "create_only": True,
    }
    created = provider.create(checked(provider, base))
    live = railway.variables_of(project_id, env_id, service_id)
    assert live == {"DATABASE_URL": "postgresql://a:bootstrap@h/db"}
    live["DATABASE_URL"] = "postgresql://b:rotated@h/db"  # what `secrets rotate` set

    other = checked(provider, {**base, "variables": {"DATABASE_URL": "postgresql://a:new@h/db"}})
    assert provider.diff(created.id, created.outs, other).changes is False
    bumped = checked(provider, {**base, "version": 99})
    assert provider.diff(created.id, created.outs, bumped).changes is True
    updated = provider.update(created.id, created.outs, bumped)
    assert live == {"DATABASE_URL": "postgresql://b:rotated@h/db"}
    assert updated.outs["variables"] == base["variables"] and updated.outs["version"] == 99

    # a resource made before create_only existed takes it with an update that writes nothing
    made_before = {k: v for k, v in created.outs.items() if k != "create_only"}
    assert provider.diff(created.id, made_before, checked(provider, base)).changes is True
    provider.update(created.id, made_before, checked(provider, base))
    assert live == {"DATABASE_URL": "postgresql://b:rotated@h/db"}

    provider.delete(created.id, updated.outs)  # the stack going away takes it along
    assert live == {}


def test_railway_bad_token_is_a_config_error(railway: FakeRailway) -> None:
    provider = configured(
        RailwayProjectProvider(),
        {
            "ptool-ops:railwayToken": "wrong",
            "ptool-ops:railwayApiUrl": f"{railway.url}/graphql/v2",
        },
    )
    with pytest.raises(ConfigError, match="Railway refused"):
        provider.create({"name": "x"})
