"""The policy pack: each policy with passing and failing resources, and every stack's program
(run under mocks) checked against the whole pack, as ``pulumi preview --policy-pack`` would."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from pulumi_policy import (
    Policy,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)

from components.policy import policies as p
from tests.iac.conftest import PROJECT, SECRET_SIG, ProgramRun, RecordingMocks
from tests.iac.test_program import stack_environment

Violation = tuple[str, str | None]


def opts(protect: bool = False) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=protect,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )


def urn(stack: str, typ: str, name: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{typ}::{name}"


def resource_args(
    typ: str,
    props: dict[str, Any],
    *,
    name: str = "res",
    stack: str = "prod",
    protect: bool = False,
) -> ResourceValidationArgs:
    return ResourceValidationArgs(
        resource_type=typ,
        props=props,
        urn=urn(stack, typ, name),
        name=name,
        opts=opts(protect),
        provider=None,
    )


def run(policy: Policy, args: ResourceValidationArgs | StackValidationArgs) -> list[Violation]:
    found: list[Violation] = []
    policy.validate(args, lambda message, urn=None: found.append((message, urn)))  # type: ignore[attr-defined]
    return found


def messages(policy: Policy, args: ResourceValidationArgs) -> list[str]:
    return [message for message, _ in run(policy, args)]


# -- each policy, passing and failing ---------------------------------------------------

NEON_PROD = {"name": "ptool-prod", "history_retention_seconds": 7 * 86400}


def test_prod_database_needs_protection_and_seven_days() -> None:
    ok = resource_args(p.NEON_PROJECT, NEON_PROD, name="database-neon", protect=True)
    assert run(p.prod_database_protected, ok) == []
    short = resource_args(
        p.NEON_PROJECT,
        {**NEON_PROD, "history_retention_seconds": 86400},
        name="database-neon",
        protect=True,
    )
    assert messages(p.prod_database_protected, short) == [
        "database-neon (Project) keeps 1 day of history; prod needs at least 7 days for "
        "point-in-time restore (neon.historyRetentionDays)."
    ]
    loose = resource_args(p.PG_ROLE, {"name": "booking_app_a"}, name="database-role-a")
    assert messages(p.prod_database_protected, loose) == [
        "database-role-a (Role) is not protected; set protect: true for prod."
    ]
    staging = resource_args(
        p.NEON_PROJECT, {**NEON_PROD, "history_retention_seconds": 0}, stack="staging"
    )
    assert run(p.prod_database_protected, staging) == []


@pytest.mark.parametrize(
    ("typ", "good", "bad", "expected"),
    [
        (
            p.VERSIONING,
            {"versioningConfiguration": {"status": "Enabled"}},
            {"versioningConfiguration": {"status": "Suspended"}},
            "must enable versioning",
        ),
        (
            p.PUBLIC_BLOCK,
            dict.fromkeys(
                [
                    "blockPublicAcls",
                    "blockPublicPolicy",
                    "ignorePublicAcls",
                    "restrictPublicBuckets",
                ],
                True,
            ),
            {"blockPublicAcls": True, "blockPublicPolicy": False},
            "must block all public access; not set: blockPublicPolicy, ignorePublicAcls",
        ),
        (
            p.ENCRYPTION,
            {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]},
            {"rules": []},
            "must set a default encryption algorithm",
        ),
        (p.BUCKET, {"bucket": "b"}, {"bucket": "b", "acl": "public-read"}, "public ACL"),
        (
            p.BUCKET_POLICY,
            {"policy": '{"Statement": [{"Principal": {"AWS": "arn:aws:iam::1:root"}}]}'},
            {"policy": '{"Statement": [{"Effect": "Allow", "Principal": "*"}]}'},
            "grants access to everyone",
        ),
    ],
)
def test_backup_bucket_settings(
    typ: str, good: dict[str, Any], bad: dict[str, Any], expected: str
) -> None:
    assert run(p.backup_bucket_settings, resource_args(typ, good, name="backup-x")) == []
    (message,) = messages(p.backup_bucket_settings, resource_args(typ, bad, name="backup-x"))
    assert message.startswith("backup-x (") and expected in message


def policy_resource(
    typ: str, name: str, parent: PolicyResource | None, props: dict[str, Any] | None = None
) -> PolicyResource:
    return PolicyResource(
        resource_type=typ,
        props=props or {},
        urn=urn("prod", typ, name),
        name=name,
        opts=opts(),
        provider=None,
        parent=parent,
        dependencies=[],
        property_dependencies={},
    )


def test_every_bucket_has_versioning_encryption_and_public_block() -> None:
    component = policy_resource("ptool:index:BackupStorage", "backup", None)
    bucket = policy_resource(p.BUCKET, "backup-bucket", component)
    complete = [component, bucket] + [
        policy_resource(t, f"backup-{i}", component)
        for i, t in enumerate((p.VERSIONING, p.ENCRYPTION, p.PUBLIC_BLOCK))
    ]
    assert run(p.backup_bucket_complete, StackValidationArgs(resources=complete)) == []
    stray = policy_resource(p.BUCKET, "stray-bucket", None)
    assert run(p.backup_bucket_complete, StackValidationArgs(resources=[*complete, stray])) == [
        (
            "stray-bucket (Bucket) has no versioning, no default encryption, no a public access "
            "block; declare buckets through the BackupStorage component.",
            stray.urn,
        )
    ]


def test_secrets_must_not_be_plain() -> None:
    sensitive = {"key": "STRIPE_SECRET_KEY", "value": "sk_live_abcdefgh123", "sensitive": True}
    assert run(p.no_plaintext_secrets, resource_args(p.VERCEL_ENV, sensitive)) == []
    public = {"key": "NEXT_PUBLIC_API_URL", "value": "https://api", "sensitive": False}
    assert run(p.no_plaintext_secrets, resource_args(p.VERCEL_ENV, public)) == []
    leaked = {"key": "ANALYTICS", "value": "postgres://u:hunter2@h/db", "sensitive": False}
    (message,) = messages(p.no_plaintext_secrets, resource_args(p.VERCEL_ENV, leaked, name="fe-x"))
    assert message.startswith("fe-x (ProjectEnvironmentVariable): variable ANALYTICS looks like")
    plain = {"sensitive": False, "variables": {"NODE_ENV": "production", "API_TOKEN": "x"}}
    (message,) = messages(
        p.no_plaintext_secrets, resource_args(p.RAILWAY_VARIABLES, plain, name="be")
    )
    assert message.startswith("be (Variables): API_TOKEN look like secrets")
    secret_set = {"sensitive": True, "variables": {"DATABASE_URL": "postgresql://a:b@h/d"}}
    assert run(p.no_plaintext_secrets, resource_args(p.RAILWAY_VARIABLES, secret_set)) == []
    role = resource_args(p.PG_ROLE, {"name": "r", "password": "pw"}, name="role-r")
    assert messages(p.no_plaintext_secrets, role) == [
        "role-r (Role) keeps its password in state; use password_wo (write-only) instead."
    ]


def test_health_check_path_required() -> None:
    ok = resource_args(p.RAILWAY_INSTANCE, {"healthcheck_path": "/health/ready"})
    assert run(p.health_check_path, ok) == []
    missing = resource_args(p.RAILWAY_INSTANCE, {"healthcheck_path": None}, name="backend-instance")
    (message,) = messages(p.health_check_path, missing)
    assert message.startswith("backend-instance (ServiceInstance) has no health-check path")
    assert run(p.backend_declared, StackValidationArgs(resources=[])) == [
        ("the stack declares no backend service instance, so no health-check path.", None)
    ]


def test_preview_branches_expire() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)

    def check(props: dict[str, Any], stack: str = "pr-42") -> list[str]:
        found: list[str] = []
        p._preview_expires(
            resource_args(p.NEON_BRANCH, props, name="database-branch", stack=stack),
            lambda message, urn=None: found.append(message),
            now=lambda: now,
        )
        return found

    assert check({"expires_at": "2026-12-01T00:00:00Z"}) == []
    assert check({"expires_at": None}) == [
        "database-branch (Branch) of preview stack pr-42 has no expires_at."
    ]
    assert check({"expires_at": "2027-06-01T00:00:00Z"}) == [
        "database-branch (Branch) expires more than 30 days from now."
    ]
    assert check({"expires_at": None}, stack="staging") == []  # only previews must expire


def _lifecycle_stack(
    rules: list[dict[str, Any]], repository_prefix: str | None = "booking"
) -> StackValidationArgs:
    component = policy_resource("ptool:index:BackupStorage", "backup", None)
    tags = {} if repository_prefix is None else {p.REPOSITORY_PREFIX_TAG: repository_prefix}
    bucket = policy_resource(p.BUCKET, "backup-bucket", component, {"tags": tags})
    lifecycle = policy_resource(p.LIFECYCLE, "backup-lifecycle", component, {"rules": rules})
    return StackValidationArgs(resources=[component, bucket, lifecycle])


def _rule(**fields: Any) -> dict[str, Any]:
    return {"id": "r", "status": "Enabled", **fields}


@pytest.mark.parametrize(
    ("rule", "reached"),
    [
        (
            _rule(filter={"prefix": "booking/backups/"}, expiration={"days": 90.0}),
            "'booking/backups/'",
        ),
        (
            _rule(filter={"prefix": "booking/backups/2026"}, expiration={"days": 1}),
            "'booking/backups/'",
        ),
        (_rule(filter={"prefix": "booking/pitr/"}, expiration={"days": 14}), "'booking/pitr/'"),
        (_rule(filter={"prefix": "booking/"}, expiration={"days": 400}), "'booking/backups/'"),
        (_rule(filter={"prefix": ""}, expiration={"date": "2027-01-01T00:00:00Z"}), "'booking/"),
        (_rule(expiration={"days": 30}), "'booking/backups/'"),  # no filter: the whole bucket
        (_rule(filter={"tag": {"key": "k", "value": "v"}}, expiration={"days": 30}), "'booking/"),
        (
            _rule(
                filter={"and": {"prefix": "booking/backups/", "tags": {}}}, expiration={"days": 9}
            ),
            "'booking/backups/'",
        ),
        (_rule(prefix="booking/backups/", expiration={"days": 9}), "'booking/backups/'"),
    ],
)
def test_no_rule_may_expire_backups_or_wal(rule: dict[str, Any], reached: str) -> None:
    found = run(p.backups_never_expire, _lifecycle_stack([rule]))
    assert len(found) == 1, found
    message, where = found[0]
    assert message.startswith("backup-lifecycle (BucketLifecycleConfiguration): rule 'r' expires")
    assert f"under {reached}" in message and where == urn("prod", p.LIFECYCLE, "backup-lifecycle")


@pytest.mark.parametrize(
    "rule",
    [
        _rule(filter={"prefix": ""}, noncurrentVersionExpiration={"noncurrentDays": 30}),
        _rule(filter={"prefix": ""}, expiration={"expiredObjectDeleteMarker": True}),
        _rule(filter={"prefix": ""}, abortIncompleteMultipartUpload={"daysAfterInitiation": 7}),
        _rule(filter={"prefix": "scratch/"}, expiration={"days": 1}),  # outside the repository
        _rule(filter={"prefix": "booking/tmp/"}, expiration={"days": 1}),
        {
            **_rule(filter={"prefix": "booking/backups/"}, expiration={"days": 1}),
            "status": "Disabled",
        },
    ],
)
def test_rules_that_keep_every_current_backup_pass(rule: dict[str, Any]) -> None:
    assert run(p.backups_never_expire, _lifecycle_stack([rule])) == []


def test_without_the_repository_tag_any_expiry_is_refused() -> None:
    rule = _rule(filter={"prefix": "scratch/"}, expiration={"days": 1})
    ((message, _),) = run(p.backups_never_expire, _lifecycle_stack([rule], None))
    assert "under the repository (its prefix is unknown) after 1 day;" in message


def test_a_preview_creates_no_roles_grants_or_extensions() -> None:
    for typ in (p.PG_ROLE, p.PG_GRANT_ROLE, p.PG_GRANT, p.PG_EXTENSION):
        args = resource_args(typ, {"name": "booking_app"}, name="database-x", stack="pr-42")
        (message,) = messages(p.preview_creates_no_roles, args)
        assert message.startswith("database-x (") and "in preview stack pr-42" in message
        staging = resource_args(typ, {"name": "booking_app"}, name="database-x", stack="staging")
        assert run(p.preview_creates_no_roles, staging) == []
    reset = resource_args(
        "pulumi-python:dynamic/postgres:RolePasswords", {}, name="database-rp", stack="pr-42"
    )
    assert run(p.preview_creates_no_roles, reset) == []


# -- the programs against the whole pack ------------------------------------------------


def _plain(value: Any) -> Any:
    """Props as the engine hands them to policies: secrets unwrapped, recursively."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return _plain(value.get("value"))
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def evaluate(mocks: RecordingMocks, stack: str) -> list[Violation]:
    """Run every policy of the pack over the resources the program registered."""
    found: list[Violation] = []
    by_name: dict[str, PolicyResource] = {}
    ordered: list[PolicyResource] = []
    for res in mocks.resources:
        if res.typ.startswith("pulumi:"):
            continue
        options = mocks.options.get(res.name)
        protect = bool(options and options.protect)
        props = {k: _plain(v) for k, v in res.inputs.items() if not k.startswith("__")}
        args = resource_args(res.typ, props, name=res.name, stack=stack, protect=protect)
        for policy in p.ALL_POLICIES:
            if isinstance(policy, ResourceValidationPolicy):
                found += [(f"{policy.name}: {m}", u) for m, u in run(policy, args)]
        parent = by_name.get(mocks.parents.get(res.name) or "")
        resource = PolicyResource(
            resource_type=res.typ,
            props=props,
            urn=args.urn,
            name=res.name,
            opts=opts(protect),
            provider=None,
            parent=parent,
            dependencies=[],
            property_dependencies={},
        )
        by_name[res.name] = resource
        ordered.append(resource)
    for policy in p.ALL_POLICIES:
        if not isinstance(policy, ResourceValidationPolicy):
            found += [
                (f"{policy.name}: {m}", u) for m, u in run(policy, StackValidationArgs(ordered))
            ]
    return found


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_every_stack_passes_the_pack(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    run_program(stack, stack_environment(stack))
    assert evaluate(mocks, stack) == []


def test_preview_stack_passes_the_pack(run_program: ProgramRun, mocks: RecordingMocks) -> None:
    run_program("pr-7", None, extra={"ptool-ops:gitBranch": "pr-branch"})
    assert evaluate(mocks, "pr-7") == []


def test_roles_declared_in_a_preview_stack_fail_the_pack(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    """Were the roles of a long-lived stack declared in a preview, the pack would stop it."""
    run_program("staging", stack_environment("staging"))
    found = {m.split(":", 1)[0] for m, _ in evaluate(mocks, "pr-7")}
    assert "preview-creates-no-roles" in found


def test_prod_with_one_day_of_retention_is_rejected(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    """The config validator refuses it first; the pack catches it wherever it comes from."""
    run_program("prod", stack_environment("prod"))
    project = mocks.one(p.NEON_PROJECT)
    project.inputs["history_retention_seconds"] = 86400
    assert evaluate(mocks, "prod") == [
        (
            "prod-database-protected: database-neon (Project) keeps 1 day of history; prod "
            "needs at least 7 days for point-in-time restore (neon.historyRetentionDays).",
            None,
        )
    ]


def test_prod_with_a_plain_text_secret_is_rejected(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    env = copy.deepcopy(stack_environment("prod"))
    env["vercel"]["variables"] = {"STRIPE_SECRET_KEY": "sk_live_0123456789abcdef"}
    env["railway"]["variables"] = {"MAILER_API_KEY": "key-0123456789"}
    run_program("prod", env)
    found = sorted(message for message, _ in evaluate(mocks, "prod"))
    assert found == [
        "no-plaintext-secrets: backend-variables (Variables): MAILER_API_KEY look like secrets "
        "but come from plain stack config; set them as secret config instead.",
        "no-plaintext-secrets: frontend-env-stripe-secret-key (ProjectEnvironmentVariable): "
        "variable STRIPE_SECRET_KEY looks like a secret but is not sensitive; mark it "
        "sensitive and pass its value as a Pulumi secret.",
    ]
