"""Rotation as on a deployed environment: a self-managed server reached over TCP as the
operator, the credential in Secrets Manager (moto's server over HTTP), the API's variables
on Railway (the fake server, GraphQL documents validated)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.local.env import LocalEnvironment
from tests.conftest import Cli, add_canaries, local_server
from tests.iac.fakes import FakeRailway, serve

SECRET = "staging/booking/app-db"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with local_server(
        tmp_path_factory.mktemp("deployed") / "local", archive=False, api=False
    ) as env:
        yield env


@pytest.fixture(scope="module")
def railway() -> Iterator[FakeRailway]:
    fake = FakeRailway()
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture
def deployed(
    server: LocalEnvironment, railway: FakeRailway, aws_env: str, cli: Cli
) -> Iterator[dict[str, Any]]:
    from ptool_ops.platform.railway import RailwayClient

    railway.reset()
    with RailwayClient("railway-test-token", base_url=f"{railway.url}/graphql/v2") as client:
        project = client.create_project("booking")
        service = client.create_service(project.id, "api", image="ghcr.io/org/api:1")
        environment = project.environments[0].id
    railway.add_deployment(service.id, environment)
    creds = server.facts.secrets()
    assert creds is not None
    port = server.state().port
    role = creds.app_role
    sm = boto3.client("secretsmanager", endpoint_url=aws_env, region_name="us-east-1")
    name = f"{SECRET}-{len(railway.calls)}-{id(cli)}"
    sm.create_secret(
        Name=name,
        SecretString=json.dumps(
            {
                "username": role,
                "password": creds.passwords[role],
                "host": "127.0.0.1",
                "port": port,
                "dbname": "booking",
            }
        ),
    )
    cli.env["PTOOL_DATABASE_URL"] = server.facts.role_url(privileges.OWNER)
    cli.write_config(
        f"""
[environments.staging]
kind = "postgres"
aws_endpoint_url = "{aws_env}"
aws_region = "us-east-1"
audit_dir = "{cli.cwd / "audit"}"
railway_token = "railway-test-token"
railway_api_url = "{railway.url}/graphql/v2"
railway_project_id = "{project.id}"
railway_environment_id = "{environment}"
railway_service_id = "{service.id}"
secret_deploy_poll_s = 0.01
secret_deploy_timeout_s = 20

[environments.staging.secrets.app-db]
kind = "database-alternating"
roles = ["booking_app_a", "booking_app_b"]
store = "aws-sm:{name}"
consumers = [{{ type = "railway", variable = "DATABASE_URL" }}]
"""
    )
    yield {
        "sm": sm,
        "name": name,
        "project": project.id,
        "environment": environment,
        "service": service.id,
    }
    for version in sm.list_secret_version_ids(SecretId=name)["Versions"]:
        value = sm.get_secret_value(SecretId=name, VersionId=version["VersionId"])
        add_canaries(json.loads(value["SecretString"])["password"])


def labels(d: dict[str, Any]) -> dict[str, list[str]]:
    versions = d["sm"].describe_secret(SecretId=d["name"])["VersionIdsToStages"]
    return {k: sorted(v) for k, v in versions.items() if v}


def stage(d: dict[str, Any], label: str) -> dict[str, Any]:
    value = d["sm"].get_secret_value(SecretId=d["name"], VersionStage=label)
    doc: dict[str, Any] = json.loads(value["SecretString"])
    return doc


def logs_in(user: str, password: str, port: int) -> bool:
    try:
        psycopg.connect(
            host="127.0.0.1", port=port, user=user, password=password, dbname="booking"
        ).close()
    except psycopg.OperationalError:
        return False
    return True


def test_rotation_moves_labels_and_points_railway_at_the_new_login(
    server: LocalEnvironment, railway: FakeRailway, deployed: dict[str, Any], cli: Cli
) -> None:
    before = stage(deployed, "AWSCURRENT")
    result = cli("--env staging secrets rotate app-db --output json")
    assert result.exit_code == 0, result.output
    after = stage(deployed, "AWSCURRENT")
    assert after["username"] != before["username"]
    assert stage(deployed, "AWSPREVIOUS")["username"] == before["username"]
    assert not any(
        "AWSPENDING" in ls and "AWSCURRENT" not in ls for ls in labels(deployed).values()
    )
    port = server.state().port
    assert port is not None
    assert logs_in(after["username"], after["password"], port)
    assert logs_in(before["username"], before["password"], port), "previous stays valid"
    variables = railway.variables_of(
        deployed["project"], deployed["environment"], deployed["service"]
    )
    assert f"//{after['username']}:" in variables["DATABASE_URL"]
    assert railway.count("serviceInstanceRedeploy") == 1
    assert [u["skipDeploys"] for u in railway.upserts] == [True]
    assert railway.violations == []


def test_a_failed_deployment_rolls_back_railway_and_the_labels(
    server: LocalEnvironment, railway: FakeRailway, deployed: dict[str, Any], cli: Cli
) -> None:
    before = labels(deployed)
    current = stage(deployed, "AWSCURRENT")
    railway.script_next_deployment(["BUILDING", "CRASHED"])
    result = cli("--env staging secrets rotate app-db --output json")
    assert result.exit_code == 8, result.output
    assert "CRASHED" in result.output and "rolled back" in result.output
    report = json.loads(result.stdout)["details"]["report"]
    assert report["outcome"] == "rolled back"
    assert labels(deployed) == before, "no AWSPENDING left, AWSCURRENT where it was"
    variables = railway.variables_of(
        deployed["project"], deployed["environment"], deployed["service"]
    )
    assert f"//{current['username']}:" in variables["DATABASE_URL"], "re-pointed at current"
    assert railway.count("serviceInstanceRedeploy") == 2
    audit = json.dumps(cli.audit_events("staging"))
    assert '"secrets.rotate"' in audit and '"failed"' in audit


def test_a_missing_grant_is_one_sentence_naming_it(
    server: LocalEnvironment, deployed: dict[str, Any], cli: Cli
) -> None:
    # a role the operator did not create and holds no ADMIN OPTION on (no superuser needed
    # to find one: the server's predefined roles)
    config = (cli.cwd / "ptool-ops.toml").read_text()
    cli.write_config(
        config
        + '\n[environments.staging.secrets.outsider]\nkind = "database-single"\n'
        + 'roles = ["pg_read_all_settings"]\nstore = "aws-sm:nowhere"\n'
    )
    result = cli("--env staging secrets rotate outsider")
    assert result.exit_code == 11, result.output
    assert "GRANT pg_read_all_settings TO booking_owner WITH ADMIN OPTION" in result.output
    assert "Traceback" not in result.output
