"""The Pulumi program of every stack file, run under Pulumi's mocks: the resources, their
wiring, what is secret, and what is protected."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import StackConfigError, preview_environment
from tests.iac.conftest import (
    ACCOUNT_ID,
    API_TOKEN,
    OWNER_PASSWORD,
    PASSWORDS,
    SECRET_SIG,
    STAGING_OUTPUTS,
    ProgramRun,
    RecordingMocks,
)

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("dev", "staging", "prod")
NEON_PROJECT = "pulumi-python:dynamic/neon:Project"
NEON_BRANCH = "pulumi-python:dynamic/neon:Branch"
RAILWAY_VARS = "pulumi-python:dynamic/railway:Variables"
RAILWAY_INSTANCE = "pulumi-python:dynamic/railway:ServiceInstance"
VERCEL_VAR = "vercel:index/projectEnvironmentVariable:ProjectEnvironmentVariable"
PG_ROLE = "postgresql:index/role:Role"
COMPONENTS = {"ptool:index:Database", "ptool:index:Backend", "ptool:index:Frontend"}


def stack_environment(stack: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    env: dict[str, Any] = data["config"]["ptool-ops:environment"]
    return env


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) is not None


def unwrap(value: Any) -> Any:
    return value["value"] if is_secret(value) else value


def test_pulumi_yaml_points_at_the_stacks_directory() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "ptool-ops" and project["runtime"]["name"] == "python"
    assert project["main"] == "stacks/" and project["stackConfigDir"] == "stacks/"
    assert (ROOT / "stacks" / "__main__.py").is_file()


@pytest.mark.parametrize("stack", STACKS)
def test_stack_builds_every_component_wired(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    env = stack_environment(stack)
    outputs = run_program(stack, env)

    types = {r.typ for r in mocks.resources}
    assert COMPONENTS | {"ptool:index:BackupStorage"} <= types
    neon = mocks.one(NEON_PROJECT)
    assert neon.inputs["history_retention_seconds"] == env["neon"]["historyRetentionDays"] * 86400
    assert neon.inputs["suspend_timeout_seconds"] == env["neon"]["suspendTimeoutSeconds"]
    assert neon.inputs["autoscaling_limit_max_cu"] == env["neon"]["computeMaxCu"]
    assert "__provider" in neon.inputs  # the pickled provider travels with the resource

    # backend: DATABASE_URL is a secret built from the database component's host
    host = outputs["databaseHost"][0]
    (db_vars,) = [
        r for r in mocks.by_type(RAILWAY_VARS) if "DATABASE_URL" in unwrap(r.inputs["variables"])
    ]
    assert is_secret(db_vars.inputs["variables"])
    url = unwrap(db_vars.inputs["variables"])["DATABASE_URL"]
    assert url == (
        f"postgresql://booking_app_a:{PASSWORDS['booking_app_a']}@{host}/booking?sslmode=require"
    )
    assert db_vars.inputs["sensitive"] is True
    instance = mocks.one(RAILWAY_INSTANCE)
    assert instance.inputs["healthcheck_path"] == "/health/ready"
    assert instance.inputs["overlap_seconds"] == env["railway"]["overlapSeconds"]

    # frontend: the API URL is the backend's domain, not sensitive
    api_url = outputs["apiUrl"][0]
    assert api_url == f"https://{instance.name}.up.railway.app"
    api_var = next(r for r in mocks.by_type(VERCEL_VAR) if r.inputs["key"] == "NEXT_PUBLIC_API_URL")
    # (the Vercel SDK stores every value as a secret; `sensitive` is what Vercel hides)
    assert unwrap(api_var.inputs["value"]) == api_url and api_var.inputs["sensitive"] is False
    assert api_var.inputs["targets"] == ["production"]
    project = mocks.one("vercel:index/project:Project")
    assert project.inputs["framework"] == "nextjs"
    assert project.inputs["gitRepository"]["repo"] == env["vercel"]["repo"]

    # database roles: write-only passwords (the model's roles: tests/iac/test_database.py)
    roles = {r.inputs["name"]: r.inputs for r in mocks.by_type(PG_ROLE)}
    assert set(roles) == {"booking_app", *PASSWORDS}
    assert roles["booking_app"]["login"] is False and "passwordWo" not in roles["booking_app"]
    for name in PASSWORDS:
        assert is_secret(roles[name]["passwordWo"]) and "password" not in roles[name]
    assert not mocks.by_type("postgresql:index/extension:Extension")  # migration 0001's
    provider = mocks.one("pulumi:providers:postgresql")
    assert provider.inputs["host"] == host and provider.inputs["sslmode"] == "require"
    assert provider.inputs["username"] == "booking_owner" and is_secret(provider.inputs["password"])

    # every credential ptool-ops uses goes to Secrets Manager; only references are outputs
    prefix = env["secrets"]["namePrefix"]
    versions = {
        r.name.removeprefix("credentials-").removesuffix("-value"): r
        for r in mocks.by_type("aws:secretsmanager/secretVersion:SecretVersion")
    }
    assert set(versions) == {"operator", "migrator", "backup", "api-token", "app-db"}
    for version in versions.values():
        assert is_secret(version.inputs["secretString"])
    assert unwrap(versions["operator"].inputs["secretString"]) == (
        f"postgresql://booking_owner:{OWNER_PASSWORD}@{host}/booking?sslmode=require"
    )
    # the rotated logins' stores hold them as the rotation reads them (tests/iac/test_rotation.py)
    for kind, role in (("migrator", "booking_migrator"), ("app-db", "booking_app_a")):
        stored = json.loads(unwrap(versions[kind].inputs["secretString"]))
        assert (stored["username"], stored["password"]) == (role, PASSWORDS[role])
        assert (stored["host"], stored["port"], stored["dbname"]) == (host, 5432, "booking")
    assert unwrap(versions["backup"].inputs["secretString"]).startswith(
        f"postgresql://booking_backup:{PASSWORDS['booking_backup']}@{host}/"
    )
    assert unwrap(versions["api-token"].inputs["secretString"]) == API_TOKEN

    # outputs: exactly what ptool-ops needs, nothing secret
    assert outputs["databaseSecret"] == (f"aws-sm:{prefix}/operator", False)
    assert outputs["migratorSecret"] == (f"aws-sm:{prefix}/migrator", False)
    assert outputs["backupSecret"] == (f"aws-sm:{prefix}/backup", False)
    assert outputs["apiTokenSecret"] == (f"aws-sm:{prefix}/api-token", False)
    assert outputs["repoUrl"][0] == f"s3://{env['backup']['bucket']}/booking"
    assert outputs["neonProjectId"][0] == f"prj-{neon.name}"
    assert outputs["backupRoleArn"][0] == f"arn:aws:iam::{ACCOUNT_ID}:role/ptool-{stack}-backup"
    assert not any(secret for _, secret in outputs.values())
    exported = json.dumps([v for v, _ in outputs.values()])
    assert not any(value in exported for value in (*PASSWORDS.values(), API_TOKEN))


def test_prod_protects_its_data_and_keeps_history(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    run_program("prod", stack_environment("prod"))
    opts = mocks.options
    for name in (
        "database-neon",
        "database-role-booking_app_a",
        "database-membership-booking_app-booking_app_a",
        "backup-bucket",
        "credentials-operator",
        "credentials-migrator",
        "credentials-backup",
        "credentials-api-token",
        "credentials-app-db",
    ):
        assert opts[name].protect is True, name
    assert mocks.one(NEON_PROJECT).inputs["history_retention_seconds"] >= 7 * 86400
    lock = mocks.one("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration")
    assert lock.inputs["rule"]["defaultRetention"]["mode"] == "GOVERNANCE"
    assert mocks.one(NEON_PROJECT).inputs["suspend_timeout_seconds"] == -1  # never scales to 0


def test_dev_is_not_protected_and_scales_to_zero(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    run_program("dev", stack_environment("dev"))
    assert not any(o.protect for o in mocks.options.values())
    assert mocks.one(NEON_PROJECT).inputs["suspend_timeout_seconds"] > 0
    assert not mocks.by_type("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration")


def test_preview_stack_branches_staging(run_program: ProgramRun, mocks: RecordingMocks) -> None:
    outputs = run_program("pr-42", None, extra={"ptool-ops:gitBranch": "feature/night-shifts"})
    ref = mocks.one("pulumi:pulumi:StackReference")
    assert ref.name == "production-tool/ptool-ops/staging"
    assert not mocks.by_type(NEON_PROJECT)
    branch = mocks.one(NEON_BRANCH)
    assert branch.inputs["project_id"] == STAGING_OUTPUTS["neonProjectId"]
    assert branch.inputs["parent_id"] == STAGING_OUTPUTS["neonBranchId"]
    assert branch.inputs["name"] == "pr-42"
    expires = datetime.fromisoformat(branch.inputs["expires_at"].replace("Z", "+00:00"))
    assert timedelta(days=6) < expires - datetime.now(UTC) <= timedelta(days=7)

    env = mocks.one("pulumi-python:dynamic/railway:Environment")
    assert env.inputs["ephemeral"] is True and env.inputs["name"] == "pr-42"
    assert env.inputs["source_environment_id"] == STAGING_OUTPUTS["railwayEnvironmentId"]
    assert not mocks.by_type("pulumi-python:dynamic/railway:Project")
    instance = mocks.one(RAILWAY_INSTANCE)
    assert instance.inputs["service_id"] == STAGING_OUTPUTS["railwayServiceId"]

    assert not mocks.by_type("vercel:index/project:Project")
    api_var = next(r for r in mocks.by_type(VERCEL_VAR) if r.inputs["key"] == "NEXT_PUBLIC_API_URL")
    assert api_var.inputs["projectId"] == STAGING_OUTPUTS["vercelProjectId"]
    assert api_var.inputs["targets"] == ["preview"]
    assert api_var.inputs["gitBranch"] == "feature/night-shifts"
    assert unwrap(api_var.inputs["value"]) == outputs["apiUrl"][0]
    assert outputs["environment"][0] == "pr-42"
    assert outputs["neonBranchId"][0] == f"br-{branch.name}"
    assert mocks.one("aws:s3/bucket:Bucket").inputs["bucket"] == "ptool-backups-pr-42"
    secrets = mocks.by_type("aws:secretsmanager/secret:Secret")
    assert {s.inputs["name"] for s in secrets} == {
        f"ptool/pr-42/booking/{kind}" for kind in ("operator", "migrator", "backup", "api-token")
    }
    assert all(s.inputs["recoveryWindowInDays"] == 0 for s in secrets)


def test_preview_template_gives_each_pr_its_own_names() -> None:
    a, b = preview_environment("pr-7"), preview_environment("pr-8")
    assert a["name"] == "pr-7" and b["backup"]["bucket"] == "ptool-backups-pr-8"
    with pytest.raises(StackConfigError, match="not a preview stack"):
        preview_environment("staging")


def test_a_wrong_key_is_a_clear_error(run_program: ProgramRun) -> None:
    env = copy.deepcopy(stack_environment("staging"))
    env["neon"]["historyRetentionDay"] = 3
    with pytest.raises(StackConfigError) as caught:
        run_program("staging", env)
    assert str(caught.value) == (
        "stack staging: ptool-ops:environment: unknown key 'neon.historyRetentionDay'"
    )


def test_prod_with_one_day_of_history_does_not_start(run_program: ProgramRun) -> None:
    env = copy.deepcopy(stack_environment("prod"))
    env["neon"]["historyRetentionDays"] = 1
    with pytest.raises(StackConfigError, match="prod keeps at least 7 days of history"):
        run_program("prod", env)


def test_missing_password_is_named_without_values(run_program: ProgramRun) -> None:
    partial = {k: v for k, v in PASSWORDS.items() if k != "booking_backup"}
    with pytest.raises(StackConfigError, match=r"dbPasswords\.booking_backup is missing") as caught:
        run_program(
            "dev", stack_environment("dev"), secrets={"ptool-ops:dbPasswords": json.dumps(partial)}
        )
    assert PASSWORDS["booking_app_a"] not in str(caught.value)


def test_passwords_must_be_secret_config(run_program: ProgramRun) -> None:
    with pytest.raises(StackConfigError, match="must be set as a secret"):
        run_program("dev", stack_environment("dev"), plain={"ptool-ops:dbPasswords": "{}"})
