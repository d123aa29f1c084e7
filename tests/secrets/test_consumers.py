"""Consumers of a rotated credential, against the loopback fakes over real HTTP: Railway
(variables with ``skipDeploys``, one redeploy, status polled to SUCCESS) and Vercel
(``env?upsert=true``, one redeploy, ``readyState`` polled to READY).

Polling runs on a fake clock (its ``sleep`` advances time), so timeouts cost nothing.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from ptool_ops.errors import ConfigError, OperationFailed, PtoolError, ServiceUnavailable
from ptool_ops.platform._http import Backoff, NotFound
from ptool_ops.platform.railway import RailwayClient
from ptool_ops.platform.vercel import VercelClient
from ptool_ops.secrets.consumers import RailwayConsumer, VercelConsumer
from tests.conftest import add_canaries
from tests.iac.fakes import FakeRailway, FakeVercel, serve

ROTATED = "rotated-Pa55word-9d2e7c41b3"
OTHER = 'quo"ted-Pa55word-5a1f0e6c2d'  # JSON escapes it when a service echoes it
add_canaries(ROTATED, OTHER, OTHER.replace('"', '\\"'))

VALUES = {
    "DATABASE_URL": SecretStr(f"postgresql://booking_app_b:{ROTATED}@db.internal/booking"),
    "DB_PASSWORD": SecretStr(OTHER),
}


@dataclass
class Clock:
    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def railway_server() -> Iterator[FakeRailway]:
    fake = FakeRailway()
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="module")
def vercel_server() -> Iterator[FakeVercel]:
    fake = FakeVercel()
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _no_secret_in(err: BaseException) -> None:
    text = "".join(traceback.format_exception(err)) + repr(err)
    if isinstance(err, PtoolError):
        text += str(err.to_dict())
    for secret in (ROTATED, OTHER, OTHER.replace('"', '\\"')):
        assert secret not in text


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith("."), message
    assert re.search(r"\.\s+[A-Z]", message) is None, message


# -- Railway ------------------------------------------------------------------------------


@dataclass
class RailwaySetup:
    fake: FakeRailway
    client: RailwayClient
    project: str
    environment: str
    service: str
    before: str  # the deployment that served before the rotation

    def consumer(self, timeout_s: float = 60.0) -> RailwayConsumer:
        return RailwayConsumer(
            self.client,
            self.project,
            self.environment,
            self.service,
            timeout_s,
            interval_s=5.0,
            service_name="web",
            environment_name="production",
        )


@pytest.fixture
def railway(railway_server: FakeRailway, clock: Clock) -> Iterator[RailwaySetup]:
    railway_server.reset()
    client = RailwayClient(
        "railway-test-token",
        base_url=f"{railway_server.url}/graphql/v2",
        sleep=clock.sleep,
        clock=clock.time,
    )
    with client:
        project = client.create_project("rotation")
        service = client.create_service(project.id, "web", image="ghcr.io/org/web:1")
        env = project.environments[0].id
        before = railway_server.add_deployment(service.id, env)
        yield RailwaySetup(railway_server, client, project.id, env, service.id, before)
    assert railway_server.violations == []


def test_railway_sets_variables_then_one_redeploy_polled_to_success(
    railway: RailwaySetup,
) -> None:
    fake = railway.fake
    fake.script_next_deployment(["BUILDING", "DEPLOYING", "SUCCESS"])
    lines: list[str] = []
    consumer = railway.consumer()
    assert consumer.label == "railway service web (production)"

    consumer.apply(VALUES, progress=lines.append)

    stored = fake.variables_of(railway.project, railway.environment, railway.service)
    assert stored == {k: v.get_secret_value() for k, v in VALUES.items()}
    (upsert,) = fake.upserts
    assert upsert["skipDeploys"] is True and upsert["serviceId"] == railway.service
    assert upsert["variables"] == ["DATABASE_URL", "DB_PASSWORD"]
    assert fake.count("serviceInstanceRedeploy") == 1
    newest, previous = fake.deployments_of(railway.service, railway.environment)
    assert previous["id"] == railway.before and newest["status"] == "SUCCESS"
    heard = [line.rsplit(" ", 1)[-1] for line in lines if newest["id"] in line]
    assert heard == ["BUILDING", "DEPLOYING", "SUCCESS"]
    assert all(ROTATED not in line and OTHER not in line for line in lines)
    assert ROTATED not in repr(consumer)


def test_railway_apply_twice_is_harmless(railway: RailwaySetup) -> None:
    consumer = railway.consumer()
    consumer.apply(VALUES)
    consumer.apply(VALUES)
    assert railway.fake.count("serviceInstanceRedeploy") == 2
    assert [u["skipDeploys"] for u in railway.fake.upserts] == [True, True]
    stored = railway.fake.variables_of(railway.project, railway.environment, railway.service)
    assert stored["DB_PASSWORD"] == OTHER


def test_railway_first_deployment_of_a_service(railway: RailwaySetup) -> None:
    railway.fake.st_deployments.clear()
    railway.consumer().apply(VALUES)
    assert len(railway.fake.deployments_of(railway.service, railway.environment)) == 1


@pytest.mark.parametrize("verdict", ["FAILED", "CRASHED", "REMOVED", "SKIPPED"])
def test_railway_failed_deployment_aborts(railway: RailwaySetup, verdict: str) -> None:
    railway.fake.script_next_deployment(["BUILDING", verdict])
    with pytest.raises(OperationFailed) as caught:
        railway.consumer().apply(VALUES)
    newest = railway.fake.deployments_of(railway.service, railway.environment)[0]
    message = caught.value.message
    assert message == (
        f"the redeploy of railway service web (production) failed: "
        f"deployment {newest['id']} ended {verdict}."
    )
    assert caught.value.exit_code == 8 and caught.value.details["status"] == verdict
    _one_sentence(message)
    _no_secret_in(caught.value)


def test_railway_timeout_is_one_sentence(railway: RailwaySetup, clock: Clock) -> None:
    railway.fake.script_next_deployment(["BUILDING"])
    with pytest.raises(OperationFailed) as caught:
        railway.consumer(timeout_s=30.0).apply(VALUES)
    newest = railway.fake.deployments_of(railway.service, railway.environment)[0]
    assert caught.value.message == (
        f"the redeploy of railway service web (production) did not finish: "
        f"deployment {newest['id']} is still BUILDING after 30.0 s."
    )
    assert caught.value.details["timed_out"] is True
    assert clock.now == 30.0 and max(clock.sleeps) <= 5.0
    _one_sentence(caught.value.message)
    _no_secret_in(caught.value)


def test_railway_no_new_deployment_times_out(railway: RailwaySetup) -> None:
    # a redeploy Railway accepted but never started: the newest stays the old one
    def swallowed(_info: object, environmentId: str, serviceId: str) -> bool:
        return True

    railway.fake.serviceInstanceRedeploy = swallowed  # type: ignore[method-assign]
    try:
        with pytest.raises(OperationFailed, match=r"no new deployment appeared after 10\.0 s"):
            railway.consumer(timeout_s=10.0).apply(VALUES)
    finally:
        del railway.fake.serviceInstanceRedeploy


def test_railway_error_quoting_the_values_is_masked(railway: RailwaySetup) -> None:
    railway.fake.echo_error_next("variableCollectionUpsert")
    with pytest.raises(OperationFailed) as caught:
        railway.consumer().apply(VALUES)
    assert caught.value.message == (
        "Railway could not set 2 variable(s) (its answer quoted a value and is withheld)."
    )
    assert railway.fake.count("serviceInstanceRedeploy") == 0
    _no_secret_in(caught.value)


def test_railway_bad_token_is_a_config_error(railway: RailwaySetup, clock: Clock) -> None:
    bad = RailwayClient(
        "nope", base_url=railway.client.base_url, sleep=clock.sleep, clock=clock.time
    )
    with bad, pytest.raises(ConfigError) as caught:
        RailwayConsumer(bad, railway.project, railway.environment, railway.service).apply(VALUES)
    _one_sentence(caught.value.message)
    _no_secret_in(caught.value)


# -- Vercel -------------------------------------------------------------------------------


@dataclass
class VercelSetup:
    fake: FakeVercel
    client: VercelClient
    project: str
    before: str

    def consumer(
        self, timeout_s: float = 60.0, targets: tuple[str, ...] = ("production", "preview")
    ) -> VercelConsumer:
        return VercelConsumer(
            self.client, self.project, targets, timeout_s, interval_s=5.0, project_name="web"
        )


def _vercel_client(fake: FakeVercel, clock: Clock, **kwargs: object) -> VercelClient:
    return VercelClient(
        str(kwargs.pop("token", "vercel-test-token")),
        base_url=fake.url,
        sleep=clock.sleep,
        clock=clock.time,
        backoff=Backoff(attempts=3),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def vercel(vercel_server: FakeVercel, clock: Clock) -> Iterator[VercelSetup]:
    vercel_server.reset()
    vercel_server.team_id = "team_rotation"
    project = vercel_server.add_project("web")
    vercel_server.add_deployment(project, target=None)  # a preview: never the one redeployed
    before = vercel_server.add_deployment(project)
    vercel_server.add_deployment(project, target=None)
    with _vercel_client(vercel_server, clock, team_id="team_rotation") as client:
        yield VercelSetup(vercel_server, client, project, before)
    vercel_server.team_id = None
    assert vercel_server.violations == []


def test_vercel_upserts_then_redeploys_production_once_polled_to_ready(
    vercel: VercelSetup,
) -> None:
    fake = vercel.fake
    fake.script_next_deployment(["QUEUED", "BUILDING", "READY"])
    lines: list[str] = []
    consumer = vercel.consumer()
    assert consumer.label == "vercel project web (production, preview)"

    consumer.apply(VALUES, progress=lines.append)

    env = fake.env_of(vercel.project)
    for key, value in VALUES.items():
        for target in ("production", "preview"):
            assert env[(key, target)] == ("encrypted", value.get_secret_value())
    upserts = [q for m, p, q in fake.requests if m == "POST" and p.endswith("/env")]
    assert upserts == [{"upsert": "true", "teamId": "team_rotation"}] * 2
    (redeploy,) = fake.redeploys
    assert redeploy == {
        "deploymentId": vercel.before,
        "name": "web",
        "target": "production",
        "meta": {"action": "redeploy"},
    }
    new = list(fake.deployments.values())[-1]
    assert new["readyState"] == "READY" and new["target"] == "production"
    assert new["env"][("DB_PASSWORD", "production")] == OTHER  # the build saw the new value
    heard = [line.rsplit(" ", 1)[-1] for line in lines if new["id"] in line]
    assert heard == ["QUEUED", "BUILDING", "READY"]
    assert all(ROTATED not in line and OTHER not in line for line in lines)
    assert all(q.get("teamId") == "team_rotation" for _, _, q in fake.requests)


def test_vercel_listing_never_returns_the_value(vercel: VercelSetup) -> None:
    vercel.client.upsert_env(vercel.project, "A", VALUES["DB_PASSWORD"], type="sensitive")
    vercel.client.upsert_env(vercel.project, "B", VALUES["DATABASE_URL"])
    listed = {env.key: env for env in vercel.client.list_env(vercel.project)}
    assert listed["A"].type == "sensitive" and listed["B"].type == "encrypted"
    assert listed["B"].target == ["production", "preview"]
    assert "value" not in listed["B"].model_dump()


def test_vercel_apply_twice_updates_in_place(vercel: VercelSetup) -> None:
    consumer = vercel.consumer()
    consumer.apply(VALUES)
    consumer.apply({"DB_PASSWORD": SecretStr("second-Pa55word-1234")})
    assert len(vercel.fake.envs[vercel.project]) == 2  # upserted, not duplicated
    assert vercel.fake.env_of(vercel.project)[("DB_PASSWORD", "preview")][1] == (
        "second-Pa55word-1234"
    )
    assert len(vercel.fake.redeploys) == 2


@pytest.mark.parametrize("verdict", ["ERROR", "CANCELED"])
def test_vercel_failed_deployment_aborts(vercel: VercelSetup, verdict: str) -> None:
    vercel.fake.script_next_deployment(["BUILDING", verdict])
    with pytest.raises(OperationFailed) as caught:
        vercel.consumer().apply(VALUES)
    new = list(vercel.fake.deployments)[-1]
    assert caught.value.message == (
        f"the redeploy of vercel project web (production, preview) failed: "
        f"deployment {new} ended {verdict}."
    )
    _one_sentence(caught.value.message)
    _no_secret_in(caught.value)


def test_vercel_timeout_is_one_sentence(vercel: VercelSetup, clock: Clock) -> None:
    vercel.fake.script_next_deployment(["BUILDING"])
    with pytest.raises(OperationFailed) as caught:
        vercel.consumer(timeout_s=12.0).apply(VALUES)
    new = list(vercel.fake.deployments)[-1]
    assert caught.value.message == (
        f"the redeploy of vercel project web (production, preview) did not finish: "
        f"deployment {new} is still BUILDING after 12.0 s."
    )
    assert clock.sleeps == [5.0, 5.0, 2.0]
    _one_sentence(caught.value.message)
    _no_secret_in(caught.value)


@pytest.mark.parametrize("status", [401, 403])
def test_vercel_refused_token_names_the_setting(vercel: VercelSetup, status: int) -> None:
    vercel.fake.fail_next(status)
    with pytest.raises(ConfigError) as caught:
        vercel.consumer().apply(VALUES)
    assert caught.value.message == (
        f"Vercel refused to set variable DATABASE_URL of project {vercel.project} "
        f"(HTTP {status}): check the vercel_token setting."
    )
    assert caught.value.exit_code == 3 and "vercel_token" in (caught.value.hint or "")
    assert vercel.fake.redeploys == []
    _no_secret_in(caught.value)


def test_vercel_unknown_token(vercel: VercelSetup, clock: Clock) -> None:
    with (
        _vercel_client(vercel.fake, clock, token="nope", team_id="team_rotation") as bad,
        pytest.raises(ConfigError, match="HTTP 403"),
    ):
        VercelConsumer(bad, vercel.project).apply(VALUES)


def test_vercel_unknown_project_is_named(vercel: VercelSetup) -> None:
    with pytest.raises(NotFound) as caught:
        VercelConsumer(vercel.client, "prj_missing").apply(VALUES)
    assert (
        caught.value.message
        == "Vercel has no project prj_missing in team team_rotation (HTTP 404)."
    )
    _no_secret_in(caught.value)


def test_vercel_outage_is_service_unavailable_after_retries(vercel: VercelSetup) -> None:
    vercel.fake.fail_next(503, count=3)
    with pytest.raises(ServiceUnavailable) as caught:
        vercel.consumer().apply(VALUES)
    assert vercel.fake.count("POST", "/v10/") == 3  # Backoff(attempts=3)
    _one_sentence(caught.value.message)
    _no_secret_in(caught.value)


def test_vercel_without_a_production_deployment(vercel: VercelSetup) -> None:
    fake = vercel.fake
    for did in [d for d, dep in fake.deployments.items() if dep["target"] == "production"]:
        del fake.deployments[did]
    with pytest.raises(OperationFailed, match="has no production deployment to redeploy"):
        vercel.consumer().apply(VALUES)


def test_vercel_preview_only_sets_values_without_redeploy(vercel: VercelSetup) -> None:
    lines: list[str] = []
    vercel.consumer(targets=("preview",)).apply(VALUES, progress=lines.append)
    assert vercel.fake.redeploys == []
    assert ("DATABASE_URL", "preview") in vercel.fake.env_of(vercel.project)
    assert ("DATABASE_URL", "production") not in vercel.fake.env_of(vercel.project)
    assert "no production target" in lines[-1]


# -- masking ------------------------------------------------------------------------------


class _Echoing:
    """A client whose variable write fails with an error quoting what it was sent."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def upsert_variables(self, *_args: object, **kwargs: object) -> None:
        raise self.error(f"could not store {kwargs} or {_args}")


@pytest.mark.parametrize("error", [OperationFailed, ServiceUnavailable, ValueError])
def test_consumer_masks_an_error_that_quotes_a_value(error: type[Exception]) -> None:
    consumer = RailwayConsumer(_Echoing(error), "p", "e", "s")  # type: ignore[arg-type]
    with pytest.raises(PtoolError) as caught:
        consumer.apply(VALUES)
    assert isinstance(caught.value, error if issubclass(error, PtoolError) else OperationFailed)
    assert caught.value.__context__ is None
    _no_secret_in(caught.value)
