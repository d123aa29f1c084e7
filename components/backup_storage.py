"""``BackupStorage``: the S3 bucket behind the environment's backup repository (pulumi-aws),
and the identity that runs the backups.

Versioning on, default encryption (SSE-S3, or SSE-KMS with a key), every kind of public
access blocked, bucket-owner-enforced ownership, optional object lock in governance mode
(prod), and one lifecycle rule that never touches a current object: versions made
noncurrent (by ``ptool-ops backup prune``, or an overwrite) expire after
``noncurrentVersionDays``, delete markers left with no version behind them go, unfinished
multipart uploads are aborted after 7 days.

**No rule expires current objects.** ``ptool-ops backup prune`` is the only thing that
deletes a backup, by the retention policy (7 last, 7 daily, 4 weekly, 6 monthly by default):
an age rule on ``<prefix>/backups/`` shorter than the policy's reach (six months) would delete
monthly backups the policy keeps, and one longer would be dead. ``<prefix>/pitr/`` (base
backups and WAL, reserved for point-in-time restore) has no age rule either: WAL expiring
before the oldest kept base backup would cut that backup's window; its retention belongs to
the PITR work, tied to the base backups. The policy pack's ``backups-never-expire`` refuses
any rule that expires current objects under either prefix (the bucket carries the
repository prefix as the tag ``ptool-ops:repository-prefix``).

The backup identity is an IAM role that GitHub Actions jobs of one repository and one GitHub
environment assume through GitHub's OIDC provider (``backup.runner``): no long-lived access
key exists to leak or rotate, and the trust policy names exactly which workflow jobs may act
as it. Its policy — objects under the prefix only, plus read access to the secrets the backup
job needs (its ``booking_backup`` URL, the backup key if there is one) — is attached to it.

Outputs ``repo_url`` (``s3://bucket/prefix``, what ptool-ops' ``repo_url`` setting takes),
``policy_arn`` and ``role_arn`` (what the backup workflow assumes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from components.config import BackupConfig

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
GITHUB_OIDC_AUDIENCE = "sts.amazonaws.com"
#: the tag naming the repository prefix (read by the policy pack's backups-never-expire)
REPOSITORY_PREFIX_TAG = "ptool-ops:repository-prefix"
#: a backup may take a while: the role's sessions may last up to four hours
MAX_SESSION_SECONDS = 4 * 3600


@dataclass(frozen=True)
class BackupStorageArgs:
    environment: str
    backup: BackupConfig
    protect: bool = False
    kms_key_arn: str | None = None
    #: Secrets Manager secrets the backup job reads (the booking_backup URL)
    secret_arns: Sequence[pulumi.Input[str]] = field(default_factory=tuple)


def trust_policy_document(oidc_provider_arn: str, subject: str) -> str:
    """Who may assume the backup role: GitHub Actions jobs whose OIDC token has ``subject``
    (``repo:<owner>/<repo>:environment:<env>``), for AWS STS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "GitHubActionsOfOneEnvironment",
                    "Effect": "Allow",
                    "Principal": {"Federated": oidc_provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{GITHUB_OIDC_HOST}:aud": GITHUB_OIDC_AUDIENCE,
                            f"{GITHUB_OIDC_HOST}:sub": subject,
                        }
                    },
                }
            ],
        },
        sort_keys=True,
    )


def backup_policy_document(
    bucket: str,
    prefix: str,
    *,
    secret_arns: Sequence[str] = (),
    kms_key_arn: str | None = None,
) -> str:
    """Least privilege for the backup job: objects under ``prefix/`` of ``bucket`` only, the
    secrets it reads, and the bucket's KMS key when there is one."""
    arn = f"arn:aws:s3:::{bucket}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListThePrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
            "Resource": arn,
            "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
        },
        {
            "Sid": "ObjectsUnderThePrefix",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:GetObjectVersion",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ],
            "Resource": f"{arn}/{prefix}/*",
        },
    ]
    if secret_arns:
        statements.append(
            {
                "Sid": "ReadItsSecrets",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                "Resource": sorted(secret_arns),
            }
        )
    if kms_key_arn:
        statements.append(
            {
                "Sid": "TheBucketKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": kms_key_arn,
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


class BackupStorage(pulumi.ComponentResource):
    bucket: aws.s3.Bucket
    repo_url: pulumi.Output[str]
    policy_arn: pulumi.Output[str]
    role_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: BackupStorageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ptool:index:BackupStorage", name, None, opts)
        cfg = args.backup
        child = pulumi.ResourceOptions(parent=self)
        locked = cfg.object_lock_days is not None
        self.bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket=cfg.bucket,
            region=cfg.region,
            object_lock_enabled=locked,
            force_destroy=cfg.force_destroy,
            tags={
                "environment": args.environment,
                "managed-by": "ptool-ops",
                REPOSITORY_PREFIX_TAG: cfg.prefix,
            },
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        bucket_id = self.bucket.id
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket_id,
            region=cfg.region,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=child,
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket_id,
            region=cfg.region,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket_id,
            region=cfg.region,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                status="Enabled"
            ),
            opts=child,
        )
        sse = (
            aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs
        )
        by_default = sse(
            sse_algorithm="aws:kms" if args.kms_key_arn else "AES256",
            kms_master_key_id=args.kms_key_arn,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket_id,
            region=cfg.region,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=by_default,
                    bucket_key_enabled=bool(args.kms_key_arn),
                )
            ],
            opts=child,
        )
        # no rule expires a current object: `ptool-ops backup prune` decides what goes
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket_id,
            region=cfg.region,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-noncurrent-versions",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    noncurrent_version_expiration=(
                        aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                            noncurrent_days=cfg.noncurrent_version_days
                        )
                    ),
                    # a delete marker with no version left behind it is removed; this never
                    # expires a current object (it cannot be combined with days or a date)
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        expired_object_delete_marker=True
                    ),
                    abort_incomplete_multipart_upload=(
                        aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                            days_after_initiation=7
                        )
                    ),
                ),
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )
        if locked:
            aws.s3.BucketObjectLockConfiguration(
                f"{name}-object-lock",
                bucket=bucket_id,
                region=cfg.region,
                rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
                    default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(
                        mode="GOVERNANCE", days=cfg.object_lock_days
                    )
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
            )
        # the identity that runs `ptool-ops backup create`, and its policy, attached
        account = aws.get_caller_identity_output().account_id
        oidc_provider = account.apply(
            lambda a: f"arn:aws:iam::{a}:oidc-provider/{GITHUB_OIDC_HOST}"
        )
        role = aws.iam.Role(
            f"{name}-backup-role",
            name=f"ptool-{args.environment}-backup",
            description=(
                f"ptool-ops backup job of {args.environment}, assumed by GitHub Actions"
                f" ({cfg.runner.subject})"
            ),
            assume_role_policy=oidc_provider.apply(
                lambda arn: trust_policy_document(arn, cfg.runner.subject)
            ),
            max_session_duration=MAX_SESSION_SECONDS,
            tags={"environment": args.environment, "managed-by": "ptool-ops"},
            opts=child,
        )
        secrets: list[pulumi.Input[str]] = list(args.secret_arns)
        if cfg.key_secret_name:
            # made outside the stack; Secrets Manager appends six random characters to ARNs
            key_name = cfg.key_secret_name
            secrets.append(
                account.apply(
                    lambda a: f"arn:aws:secretsmanager:{cfg.region}:{a}:secret:{key_name}-??????"
                )
            )
        document = pulumi.Output.all(*secrets).apply(
            lambda arns: backup_policy_document(
                cfg.bucket,
                cfg.prefix,
                secret_arns=[str(a) for a in arns],
                kms_key_arn=args.kms_key_arn,
            )
        )
        policy = aws.iam.Policy(
            f"{name}-backup-policy",
            name=f"ptool-{args.environment}-backup",
            description=f"ptool-ops backup job of {args.environment}: s3://{cfg.bucket}/{cfg.prefix}",
            policy=document,
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-backup-policy-attachment",
            role=role.name,
            policy_arn=policy.arn,
            opts=child,
        )
        self.repo_url = self.bucket.bucket.apply(lambda b: f"s3://{b}/{cfg.prefix}")
        self.policy_arn = policy.arn
        self.role_arn = role.arn
        self.register_outputs(
            {
                "bucket": self.bucket.bucket,
                "repo_url": self.repo_url,
                "policy_arn": policy.arn,
                "role_arn": role.arn,
            }
        )
