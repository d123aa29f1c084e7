"""``ptool_ops.platform`` clients against the loopback fakes: operations polled, back-off on
423, failures mapped to ``ptool_ops.errors``, and the fakes' own contract checks."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from ptool_ops.errors import ConfigError, Conflict, OperationFailed, ServiceUnavailable
from ptool_ops.platform.neon import Backoff, EndpointSpec, NeonClient, NotFound
from ptool_ops.platform.railway import RailwayClient, ServiceInstanceSettings
from tests.iac.fakes import FakeNeon, FakeRailway

FAST = Backoff(attempts=4, initial=0.01, maximum=0.02)


@pytest.fixture
def neon(fake_neon: FakeNeon) -> FakeNeon:
    fake_neon.reset()
    fake_neon.op_polls = 2
    return fake_neon


def client(fake: FakeNeon, key: str = "neon-test-key") -> NeonClient:
    return NeonClient(
        SecretStr(key), base_url=f"{fake.url}/api/v2", backoff=FAST, poll_interval=0.01
    )


def test_branch_as_backup_point_then_restore(neon: FakeNeon) -> None:
    with client(neon) as api:
        created = api.create_project(
            "ptool-test",
            region_id="aws-eu-central-1",
            pg_version=17,
            history_retention_seconds=7 * 86400,
            endpoint=EndpointSpec(autoscaling_limit_max_cu=2, suspend_timeout_seconds=-1),
            database_name="booking",
            role_name="booking_owner",
        )
        pid, main = created.project.id, created.branch.id
        assert created.project.history_retention_seconds == 7 * 86400
        assert created.endpoints[0].suspend_timeout_seconds == -1
        # every operation of the create was polled until finished
        assert all(op["status"] == "finished" for op in neon.operations.values())
        assert all(polls >= 2 for polls in neon.polls.values())

        point = api.create_branch(
            pid,
            name="pre-migrate-0005",
            parent_id=main,
            parent_timestamp=datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
        )
        assert point.endpoints == []  # a backup point needs no compute
        assert api.find_branch(pid, "pre-migrate-0005") == point.branch
        restored = api.restore_branch(
            pid, main, source_branch_id=point.branch.id, preserve_under_name="main-old"
        )
        assert restored.id == main and neon.branches[main]["restored_from"] == point.branch.id
        assert api.delete_branch(pid, point.branch.id) is True
        assert api.delete_branch(pid, point.branch.id) is False
        assert api.get_role(pid, main, "nobody") is None
        password = api.reveal_password(pid, main, "booking_owner").get_secret_value()
        uri = api.connection_uri(
            pid, branch_id=main, database_name="booking", role_name="booking_owner"
        ).get_secret_value()
        host = created.endpoints[0].host
        assert uri == f"postgresql://booking_owner:{password}@{host}/booking?sslmode=require"
        pooled = api.connection_uri(
            pid, branch_id=main, database_name="booking", role_name="booking_owner", pooled=True
        )
        assert "-pooler." in pooled.get_secret_value()
    assert neon.violations == []


def test_locked_project_is_retried_with_back_off(neon: FakeNeon) -> None:
    with client(neon) as api:
        pid = api.create_project(
            "ptool-lock", region_id="aws-eu-central-1", pg_version=17, history_retention_seconds=0
        ).project.id
        neon.lock_next(2)
        api.update_project(pid, history_retention_seconds=86400)
        assert neon.locked_answers == 2
        assert neon.projects[pid]["history_retention_seconds"] == 86400

        neon.rate_limit_next(2)  # 429 with Retry-After: reads are retried too
        assert api.get_project(pid).id == pid
        assert neon.limited_answers == 2

        neon.lock_next(10)
        with pytest.raises(Conflict, match=r"busy or conflicting \(HTTP 423\)"):
            api.update_project(pid, history_retention_seconds=0)
        neon.lock_next(0)


def test_errors_are_mapped_to_ptool_errors(neon: FakeNeon) -> None:
    with client(neon, key="bad-key") as api, pytest.raises(ConfigError, match="HTTP 401"):
        api.get_project("nope")
    with client(neon) as api:
        with pytest.raises(NotFound) as caught:
            api.get_project("no-such-project")
        assert isinstance(caught.value, OperationFailed)
        assert api.find_project("no-such-project") is None
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = NeonClient("k", base_url=f"http://127.0.0.1:{port}", backoff=FAST)
    with dead, pytest.raises(ServiceUnavailable, match="cannot be reached"):
        dead.list_branches("p")
    with pytest.raises(ConfigError, match="no Neon API key"):
        NeonClient("")


def test_the_fake_rejects_requests_outside_the_contract(neon: FakeNeon) -> None:
    with client(neon) as api:
        pid = api.create_project(
            "ptool-c", region_id="aws-eu-central-1", pg_version=17, history_retention_seconds=0
        ).project.id
        with pytest.raises(OperationFailed, match="HTTP 400"):
            api._call("POST", f"/projects/{pid}/branches", "x", json={"branch": {"name": 42}})
        with pytest.raises(OperationFailed, match="HTTP 400"):
            api._call(
                "PATCH",
                f"/projects/{pid}",
                "x",
                json={"project": {"history_retention_seconds": "7d"}},
            )
    assert len(neon.violations) == 2
    assert "request" in neon.violations[0]
    neon.violations.clear()


def test_failed_operation_is_an_operation_failed(neon: FakeNeon) -> None:
    with client(neon) as api:
        created = api.create_project(
            "ptool-f", region_id="aws-eu-central-1", pg_version=17, history_retention_seconds=0
        )
        neon.op_polls = 100
        endpoint = created.endpoints[0]
        original = neon._op

        def failing(*args: object, **kwargs: str) -> dict[str, object]:
            op = original(*args, **kwargs)  # type: ignore[arg-type]
            neon.operations[op["id"]].update(status="error", error="compute failed to start")
            return op

        neon._op = failing  # type: ignore[method-assign]
        try:
            with pytest.raises(OperationFailed, match="compute failed to start"):
                api.update_endpoint(created.project.id, endpoint.id, EndpointSpec())
        finally:
            neon._op = original  # type: ignore[method-assign]


def test_railway_client_round_trip(fake_railway: FakeRailway) -> None:
    fake_railway.reset()
    rail = RailwayClient("railway-test-token", base_url=f"{fake_railway.url}/graphql/v2")
    with rail:
        project = rail.create_project("ptool-rt")
        env = project.environments[0]
        service = rail.create_service(project.id, "api", image="ghcr.io/org/api:1")
        settings = ServiceInstanceSettings.model_validate(
            {"healthcheck_path": "/health", "overlap_seconds": 45}
        )
        rail.update_service_instance(service.id, env.id, settings)
        live = rail.get_service_instance(service.id, env.id)
        assert live.healthcheck_path == "/health" and live.overlap_seconds == 45
        rail.upsert_variables(project.id, env.id, {"A": "1"}, service_id=service.id)
        assert rail.get_variables(project.id, env.id, service.id)["A"].get_secret_value() == "1"
        assert rail.delete_variable(project.id, env.id, "A", service_id=service.id)
        assert not rail.delete_variable(project.id, env.id, "A", service_id=service.id)
        rail.redeploy(service.id, env.id)
        assert rail.get_project("missing") is None
        with pytest.raises(NotFound):
            rail.find_environment("missing", "x")
    assert fake_railway.violations == []
    with (
        RailwayClient("nope", base_url=f"{fake_railway.url}/graphql/v2") as bad,
        pytest.raises(ConfigError, match="Not Authorized"),
    ):
        bad.get_project("x")
