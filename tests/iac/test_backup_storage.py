"""``BackupStorage`` under Pulumi's mocks: no lifecycle rule deletes what the retention policy
keeps, and the backup policy is attached to the identity that runs backups -- a role that
GitHub Actions jobs of one environment assume, allowed to read the secrets the job needs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from components.backup_storage import backup_policy_document, trust_policy_document
from components.config import StackConfigError, parse_environment
from components.policy import policies as p
from tests.iac.conftest import ACCOUNT_ID, ProgramRun, RecordingMocks
from tests.iac.test_policies import evaluate
from tests.iac.test_program import stack_environment

STACKS = ("dev", "staging", "prod", "pr-42")
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
ROLE = "aws:iam/role:Role"
POLICY = "aws:iam/policy:Policy"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
SECRET = "aws:secretsmanager/secret:Secret"
GITHUB = "token.actions.githubusercontent.com"


def run(stack: str, run_program: ProgramRun, env: dict[str, Any] | None = None) -> dict[str, Any]:
    if stack.startswith("pr-"):
        return run_program(stack, None, extra={"ptool-ops:gitBranch": "feature/x"})
    return run_program(stack, env or stack_environment(stack))


@pytest.mark.parametrize("stack", STACKS)
def test_no_lifecycle_rule_expires_a_current_object(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    """`ptool-ops backup prune` is the only thing that deletes a backup; S3 only cleans up
    what prune (or an overwrite) left behind."""
    run(stack, run_program)
    lifecycle = mocks.one(LIFECYCLE)
    rules = {r["id"]: r for r in lifecycle.inputs["rules"]}
    assert set(rules) == {"expire-noncurrent-versions"}
    rule = rules["expire-noncurrent-versions"]
    assert rule["status"] == "Enabled" and rule["filter"] == {"prefix": ""}
    assert rule["expiration"] == {"expiredObjectDeleteMarker": True}  # no days, no date
    assert rule["noncurrentVersionExpiration"]["noncurrentDays"] >= 1
    assert rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 7
    for any_rule in lifecycle.inputs["rules"]:
        expiration = any_rule.get("expiration") or {}
        assert "days" not in expiration and "date" not in expiration, any_rule["id"]
    bucket = mocks.one("aws:s3/bucket:Bucket")
    assert bucket.inputs["tags"][p.REPOSITORY_PREFIX_TAG] == "booking"
    assert not [v for v in evaluate(mocks, stack) if v[0].startswith("backups-never-expire")]


def test_an_expiring_rule_under_backups_fails_the_pack(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    """The old rule (backups/ after backupRetentionDays=90 on prod) is what the pack refuses."""
    run("prod", run_program)
    lifecycle = mocks.one(LIFECYCLE)
    lifecycle.inputs["rules"].append(
        {
            "id": "expire-old-backups",
            "status": "Enabled",
            "filter": {"prefix": "booking/backups/"},
            "expiration": {"days": 90.0},
        }
    )
    found = [m for m, _ in evaluate(mocks, "prod")]
    assert found == [
        "backups-never-expire: backup-lifecycle (BucketLifecycleConfiguration): rule "
        "'expire-old-backups' expires current objects under 'booking/backups/' after 90 days; "
        "'ptool-ops backup prune' alone deletes backups (by the retention policy), and WAL "
        "must outlive the base backups that need it."
    ]


def test_retention_keys_that_deleted_backups_are_gone() -> None:
    env = copy.deepcopy(stack_environment("prod"))
    env["backup"]["backupRetentionDays"] = 90
    with pytest.raises(StackConfigError, match=r"unknown key 'backup\.backupRetentionDays'"):
        parse_environment(env, stack="prod")
    env = copy.deepcopy(stack_environment("prod"))
    env["backup"]["walRetentionDays"] = 14
    with pytest.raises(StackConfigError, match=r"unknown key 'backup\.walRetentionDays'"):
        parse_environment(env, stack="prod")


def test_object_lock_stays_within_the_version_expiry() -> None:
    env = copy.deepcopy(stack_environment("prod"))
    assert env["backup"]["objectLockDays"] <= env["backup"]["noncurrentVersionDays"]
    env["backup"]["noncurrentVersionDays"] = 7
    with pytest.raises(StackConfigError, match=r"noncurrentVersionDays \(7\) is shorter than"):
        parse_environment(env, stack="prod")


@pytest.mark.parametrize("stack", STACKS)
def test_the_backup_policy_is_attached_to_the_role_that_runs_backups(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    outputs = run(stack, run_program)
    role = mocks.one(ROLE)
    assert role.inputs["name"] == f"ptool-{stack}-backup"
    assert role.inputs["maxSessionDuration"] == 4 * 3600
    policy = mocks.one(POLICY)
    attachment = mocks.one(ATTACHMENT)
    assert attachment.inputs["role"] == role.inputs["name"]
    assert (
        attachment.inputs["policyArn"] == f"arn:aws:iam::{ACCOUNT_ID}:policy/ptool-{stack}-backup"
    )
    assert policy.inputs["name"] == f"ptool-{stack}-backup"
    # no IAM policy of the stack is free-standing
    attached = {a.inputs["policyArn"] for a in mocks.by_type(ATTACHMENT)}
    for each in mocks.by_type(POLICY):
        assert f"arn:aws:iam::{ACCOUNT_ID}:policy/{each.inputs['name']}" in attached

    # who may assume it: GitHub Actions jobs of this repository in the configured environment
    runner = (
        {"githubRepository": "production-tool/ptool-ops", "githubEnvironment": "preview"}
        if stack.startswith("pr-")
        else stack_environment(stack)["backup"]["runner"]
    )
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {
        "Federated": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{GITHUB}"
    }
    assert statement["Condition"] == {
        "StringEquals": {
            f"{GITHUB}:aud": "sts.amazonaws.com",
            f"{GITHUB}:sub": (
                f"repo:{runner['githubRepository']}:environment:{runner['githubEnvironment']}"
            ),
        }
    }

    # what it may do: the repository's objects, and read the backup role's URL -- nothing else
    statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    bucket = f"ptool-backups-{stack}"
    assert statements["ObjectsUnderThePrefix"]["Resource"] == f"arn:aws:s3:::{bucket}/booking/*"
    backup_secret = next(
        s for s in mocks.by_type(SECRET) if s.inputs["name"] == f"ptool/{stack}/booking/backup"
    )
    assert statements["ReadItsSecrets"]["Resource"] == [
        f"arn:aws:secretsmanager:eu-central-1:{ACCOUNT_ID}:secret:"
        f"{backup_secret.inputs['name']}-AbCdEf"
    ]
    assert statements["ReadItsSecrets"]["Action"] == [
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
    ]
    assert set(statements) == {"ListThePrefix", "ObjectsUnderThePrefix", "ReadItsSecrets"}
    # the workflow assumes it by the stack output (not a ptool-ops setting)
    assert outputs["backupRoleArn"] == (
        f"arn:aws:iam::{ACCOUNT_ID}:role/ptool-{stack}-backup",
        False,
    )
    assert "backupKeySecret" not in outputs


def test_a_backup_key_secret_is_readable_by_the_role_and_exported(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    env = copy.deepcopy(stack_environment("staging"))
    env["backup"]["keySecretName"] = "ptool/staging/booking/backup-key"
    outputs = run("staging", run_program, env)
    statements = {s["Sid"]: s for s in json.loads(mocks.one(POLICY).inputs["policy"])["Statement"]}
    assert (
        f"arn:aws:secretsmanager:eu-central-1:{ACCOUNT_ID}:secret:"
        "ptool/staging/booking/backup-key-??????"
    ) in statements["ReadItsSecrets"]["Resource"]
    assert outputs["backupKeySecret"] == ("aws-sm:ptool/staging/booking/backup-key", False)
    # the key is made outside the stack: destroying the stack never destroys it
    assert "ptool/staging/booking/backup-key" not in {
        s.inputs["name"] for s in mocks.by_type(SECRET)
    }


def test_policy_documents() -> None:
    doc = json.loads(
        backup_policy_document(
            "b", "p", secret_arns=["arn:2", "arn:1"], kms_key_arn="arn:aws:kms:k"
        )
    )
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ReadItsSecrets"]["Resource"] == ["arn:1", "arn:2"]
    assert by_sid["TheBucketKey"]["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert "ReadItsSecrets" not in {
        s["Sid"] for s in json.loads(backup_policy_document("b", "p"))["Statement"]
    }
    trust = json.loads(trust_policy_document("arn:oidc", "repo:o/r:environment:e"))
    assert trust["Statement"][0]["Condition"]["StringEquals"][f"{GITHUB}:sub"] == (
        "repo:o/r:environment:e"
    )
