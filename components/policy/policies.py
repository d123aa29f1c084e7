"""The ptool-ops policy pack's policies (``__main__.py`` only builds the pack: constructing
a ``PolicyPack`` starts its gRPC server, so the policies live here, importable by tests).

Every violation names the resource (its logical name and type) and says what to change.
Resource types and property names are those the engine passes: camelCase for providers
generated from schemas (``versioningConfiguration``), the declared names for the dynamic
providers (``history_retention_seconds``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyResource,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

NEON_PROJECT = "pulumi-python:dynamic/neon:Project"
NEON_BRANCH = "pulumi-python:dynamic/neon:Branch"
RAILWAY_INSTANCE = "pulumi-python:dynamic/railway:ServiceInstance"
RAILWAY_VARIABLES = "pulumi-python:dynamic/railway:Variables"
PG_ROLE = "postgresql:index/role:Role"
PG_GRANT_ROLE = "postgresql:index/grantRole:GrantRole"
PG_GRANT = "postgresql:index/grant:Grant"
PG_EXTENSION = "postgresql:index/extension:Extension"
VERCEL_ENV = "vercel:index/projectEnvironmentVariable:ProjectEnvironmentVariable"
BUCKET = "aws:s3/bucket:Bucket"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
ENCRYPTION = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
)
PUBLIC_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
#: the bucket tag naming the repository prefix (components/backup_storage.py sets it)
REPOSITORY_PREFIX_TAG = "ptool-ops:repository-prefix"
#: where the repository keeps what only ptool-ops may delete (docs/backup-repository.md)
PROTECTED_DIRS = ("backups/", "pitr/")

PROD_STACKS = frozenset({"prod"})
MIN_PROD_RETENTION_SECONDS = 7 * 86_400
MAX_PREVIEW_LIFETIME = timedelta(days=30)
PREVIEW_STACK = re.compile(r"^pr-\d+$")
SECRET_NAME = re.compile(
    r"(SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|ACCESS_?KEY|DATABASE_URL|DSN)",
    re.IGNORECASE,
)
SECRET_VALUE = re.compile(
    r"(://[^/\s:@]+:[^@\s]+@"  # URL with a password
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\b(sk|rk)_live_[0-9A-Za-z]{8,}"  # Stripe-style live keys
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[0-9A-Za-z]{20,}"  # GitHub tokens
    r"|\bxox[abprs]-[0-9A-Za-z-]{10,})"  # Slack tokens
)

Report = Callable[..., None]


def stack_of(urn: str) -> str:
    """``urn:pulumi:<stack>::<project>::<type>::<name>`` → ``<stack>``."""
    head = urn.split("::", 1)[0]
    return head.rsplit(":", 1)[-1]


def _label(name: str, resource_type: str) -> str:
    return f"{name} ({resource_type.rsplit(':', 1)[-1]})"


def _days(seconds: float) -> str:
    days = seconds / 86_400
    return f"{days:g} day" + ("" if days == 1 else "s")


# -- prod databases ---------------------------------------------------------------------


def _prod_database(args: ResourceValidationArgs, report: Report) -> None:
    if stack_of(args.urn) not in PROD_STACKS:
        return
    label = _label(args.name, args.resource_type)
    if args.resource_type == NEON_PROJECT:
        retention = args.props.get("history_retention_seconds")
        if isinstance(retention, int | float) and retention < MIN_PROD_RETENTION_SECONDS:
            report(
                f"{label} keeps {_days(retention)} of history; prod needs at least "
                f"{_days(MIN_PROD_RETENTION_SECONDS)} for point-in-time restore "
                "(neon.historyRetentionDays)."
            )
    if args.resource_type in (NEON_PROJECT, NEON_BRANCH, PG_ROLE) and not args.opts.protect:
        report(f"{label} is not protected; set protect: true for prod.")


prod_database_protected = ResourceValidationPolicy(
    name="prod-database-protected",
    description="Prod's Neon project and roles are protected, with at least 7 days of history.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_prod_database,
)


# -- backup bucket ----------------------------------------------------------------------


def _bucket_settings(args: ResourceValidationArgs, report: Report) -> None:
    label = _label(args.name, args.resource_type)
    props = args.props
    if args.resource_type == VERSIONING:
        status = (props.get("versioningConfiguration") or {}).get("status")
        if status != "Enabled":
            report(f"{label} must enable versioning (status is {status!r}).")
    elif args.resource_type == PUBLIC_BLOCK:
        flags = (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
        off = [flag for flag in flags if props.get(flag) is not True]
        if off:
            report(f"{label} must block all public access; not set: {', '.join(off)}.")
    elif args.resource_type == ENCRYPTION:
        rules = props.get("rules") or []
        algorithms = [
            (rule.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm")
            for rule in rules
        ]
        if not any(algorithms):
            report(f"{label} must set a default encryption algorithm (AES256 or aws:kms).")
    elif args.resource_type == BUCKET:
        if props.get("acl") in ("public-read", "public-read-write", "authenticated-read"):
            report(f"{label} has the public ACL {props.get('acl')!r}.")
    elif args.resource_type == BUCKET_POLICY:
        policy = str(props.get("policy") or "")
        if re.search(r'"Principal"\s*:\s*("\*"|\{\s*"AWS"\s*:\s*"\*"\s*\})', policy):
            report(f'{label} grants access to everyone (Principal "*").')


backup_bucket_settings = ResourceValidationPolicy(
    name="backup-bucket-settings",
    description="Backup buckets are versioned, encrypted and closed to the public.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_bucket_settings,
)


def _parent_urn(resource: PolicyResource) -> str | None:
    return resource.parent.urn if resource.parent is not None else None


def _bucket_complete(args: StackValidationArgs, report: Report) -> None:
    siblings: dict[str | None, set[str]] = {}
    for resource in args.resources:
        siblings.setdefault(_parent_urn(resource), set()).add(resource.resource_type)
    for resource in args.resources:
        if resource.resource_type != BUCKET:
            continue
        present = siblings.get(_parent_urn(resource), set())
        missing = [
            what
            for what, typ in (
                ("versioning", VERSIONING),
                ("default encryption", ENCRYPTION),
                ("a public access block", PUBLIC_BLOCK),
            )
            if typ not in present
        ]
        if missing:
            report(
                f"{_label(resource.name, BUCKET)} has no {', no '.join(missing)}; "
                "declare buckets through the BackupStorage component.",
                resource.urn,
            )


backup_bucket_complete = StackValidationPolicy(
    name="backup-bucket-complete",
    description="Every bucket has versioning, default encryption and a public access block.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_bucket_complete,
)


def _rule_prefix(rule: dict[str, Any]) -> str | None:
    """The key prefix a lifecycle rule applies to ("" = every key), None if it applies by
    tag or size only (and so possibly to any key)."""
    filt = rule.get("filter") or {}
    for candidate in (
        filt.get("prefix"),
        (filt.get("and") or {}).get("prefix"),
        rule.get("prefix"),
    ):
        if isinstance(candidate, str):
            return candidate
    return None if filt else ""


def _expires_current(rule: dict[str, Any]) -> str | None:
    """How an enabled rule expires current objects ("after 90 days"), or None if it does not
    (noncurrent versions, delete markers and aborted uploads are not current objects)."""
    if rule.get("status") != "Enabled":
        return None
    expiration = rule.get("expiration") or {}
    if isinstance(expiration, list):  # older schemas: a one-item list
        expiration = expiration[0] if expiration else {}
    days, date = expiration.get("days"), expiration.get("date")
    if days:
        return f"after {_days(float(days) * 86_400)}"
    if date:
        return f"on {date}"
    return None


def _backups_never_expire(args: StackValidationArgs, report: Report) -> None:
    buckets: dict[str | None, str | None] = {}  # parent urn -> repository prefix (None: unknown)
    for resource in args.resources:
        if resource.resource_type == BUCKET:
            tags = resource.props.get("tags") or {}
            prefix = tags.get(REPOSITORY_PREFIX_TAG)
            buckets[_parent_urn(resource)] = str(prefix).rstrip("/") if prefix else None
    for resource in args.resources:
        if resource.resource_type != LIFECYCLE:
            continue
        repo = buckets.get(_parent_urn(resource))
        protected = [f"{repo}/{d}" for d in PROTECTED_DIRS] if repo else [""]
        for rule in resource.props.get("rules") or []:
            how = _expires_current(rule)
            prefix = _rule_prefix(rule)
            if how is None:
                continue
            reached = [
                q
                for q in protected
                if prefix is None or prefix.startswith(q) or q.startswith(prefix)
            ]
            if reached:
                where = (
                    f"'{reached[0]}'" if reached[0] else "the repository (its prefix is unknown)"
                )
                report(
                    f"{_label(resource.name, LIFECYCLE)}: rule {rule.get('id')!r} expires current "
                    f"objects under {where} {how}; 'ptool-ops backup prune' alone deletes "
                    "backups (by the retention policy), and WAL must outlive the base backups "
                    "that need it.",
                    resource.urn,
                )


backups_never_expire = StackValidationPolicy(
    name="backups-never-expire",
    description="No lifecycle rule expires current objects under backups/ or pitr/.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_backups_never_expire,
)


# -- secrets ----------------------------------------------------------------------------


def _secret_looking(items: Iterable[tuple[str, Any]]) -> list[str]:
    found = []
    for key, value in items:
        if SECRET_NAME.search(key) or (isinstance(value, str) and SECRET_VALUE.search(value)):
            found.append(key)
    return sorted(found)


def _no_plaintext_secrets(args: ResourceValidationArgs, report: Report) -> None:
    label = _label(args.name, args.resource_type)
    props = args.props
    if args.resource_type == VERCEL_ENV:
        key = str(props.get("key", ""))
        if props.get("sensitive") is not True and _secret_looking([(key, props.get("value"))]):
            report(
                f"{label}: variable {key} looks like a secret but is not sensitive; mark it "
                "sensitive and pass its value as a Pulumi secret."
            )
    elif args.resource_type == RAILWAY_VARIABLES:
        if props.get("sensitive") is False:
            names = _secret_looking((props.get("variables") or {}).items())
            if names:
                report(
                    f"{label}: {', '.join(names)} look like secrets but come from plain stack "
                    "config; set them as secret config instead."
                )
    elif args.resource_type == PG_ROLE and props.get("password"):
        report(f"{label} keeps its password in state; use password_wo (write-only) instead.")


no_plaintext_secrets = ResourceValidationPolicy(
    name="no-plaintext-secrets",
    description="No secret in plain config, in a non-sensitive Vercel variable, or in state.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_no_plaintext_secrets,
)


# -- health checks ----------------------------------------------------------------------


def _health_check(args: ResourceValidationArgs, report: Report) -> None:
    if args.resource_type != RAILWAY_INSTANCE:
        return
    path = args.props.get("healthcheck_path")
    if not isinstance(path, str) or not path.startswith("/"):
        report(
            f"{_label(args.name, args.resource_type)} has no health-check path; zero-downtime "
            "deploys and credential rotation rely on it (railway.healthcheckPath)."
        )


health_check_path = ResourceValidationPolicy(
    name="health-check-path",
    description="Every backend service instance has a health-check path.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_health_check,
)


def _every_environment_checked(args: StackValidationArgs, report: Report) -> None:
    if not any(r.resource_type == RAILWAY_INSTANCE for r in args.resources):
        report("the stack declares no backend service instance, so no health-check path.")


backend_declared = StackValidationPolicy(
    name="backend-health-checked",
    description="Every environment has a backend service instance (with its health check).",
    enforcement_level=EnforcementLevel.ADVISORY,
    validate=_every_environment_checked,
)


# -- previews ---------------------------------------------------------------------------


def _preview_expires(
    args: ResourceValidationArgs, report: Report, now: Callable[[], datetime] | None = None
) -> None:
    if args.resource_type != NEON_BRANCH or not PREVIEW_STACK.match(stack_of(args.urn)):
        return
    label = _label(args.name, args.resource_type)
    raw = args.props.get("expires_at")
    if not raw:
        report(f"{label} of preview stack {stack_of(args.urn)} has no expires_at.")
        return
    try:
        expires = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        report(f"{label} has an expires_at that is not an ISO 8601 time: {raw!r}.")
        return
    current = (now or (lambda: datetime.now(UTC)))()
    if expires - current > MAX_PREVIEW_LIFETIME:
        report(f"{label} expires more than {MAX_PREVIEW_LIFETIME.days} days from now.")


def _preview_creates_no_roles(args: ResourceValidationArgs, report: Report) -> None:
    if not PREVIEW_STACK.match(stack_of(args.urn)):
        return
    if args.resource_type in (PG_ROLE, PG_GRANT_ROLE, PG_GRANT, PG_EXTENSION):
        report(
            f"{_label(args.name, args.resource_type)} in preview stack {stack_of(args.urn)}: a "
            "Neon branch brings its parent's roles, memberships, grants and extensions; a "
            "preview sets its logins' passwords only (RolePasswords)."
        )


preview_creates_no_roles = ResourceValidationPolicy(
    name="preview-creates-no-roles",
    description="A preview stack creates no role, membership, grant or extension.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_preview_creates_no_roles,
)


preview_branches_expire = ResourceValidationPolicy(
    name="preview-branches-expire",
    description="A preview stack's Neon branch expires within 30 days.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_preview_expires,
)


ALL_POLICIES: list[Policy] = [
    prod_database_protected,
    backup_bucket_settings,
    backup_bucket_complete,
    backups_never_expire,
    no_plaintext_secrets,
    health_check_path,
    backend_declared,
    preview_branches_expire,
    preview_creates_no_roles,
]
