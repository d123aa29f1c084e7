"""``BackupStorage``: the S3 bucket behind the environment's backup repository (pulumi-aws).

Versioning on, default encryption (SSE-S3, or SSE-KMS with a key), every kind of public
access blocked, bucket-owner-enforced ownership, lifecycle rules for the repository layout
(``<prefix>/pitr/`` WAL and base backups expire after ``walRetentionDays``,
``<prefix>/backups/`` after ``backupRetentionDays`` as a safety net behind
``ptool-ops backup prune``, old versions after ``noncurrentVersionDays``, unfinished
multipart uploads after 7 days), optional object lock in governance mode (prod), and an IAM
policy for the backup job limited to the prefix.

Outputs ``repo_url`` (``s3://bucket/prefix``, what ptool-ops' ``repo_url`` setting takes) and
``policy_arn``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import BackupConfig


@dataclass(frozen=True)
class BackupStorageArgs:
    environment: str
    backup: BackupConfig
    protect: bool = False
    kms_key_arn: str | None = None


def backup_policy_document(bucket: str, prefix: str) -> str:
    """Least privilege for the backup job: objects under ``prefix/`` of ``bucket`` only."""
    arn = f"arn:aws:s3:::{bucket}"
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
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
            ],
        },
        sort_keys=True,
    )


class BackupStorage(pulumi.ComponentResource):
    bucket: aws.s3.Bucket
    repo_url: pulumi.Output[str]
    policy_arn: pulumi.Output[str]

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
            tags={"environment": args.environment, "managed-by": "ptool-ops"},
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
        rule = aws.s3.BucketLifecycleConfigurationRuleArgs
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket_id,
            region=cfg.region,
            rules=[
                rule(
                    id="expire-old-wal",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(
                        prefix=f"{cfg.prefix}/pitr/"
                    ),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        days=cfg.wal_retention_days
                    ),
                ),
                rule(
                    id="expire-old-backups",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(
                        prefix=f"{cfg.prefix}/backups/"
                    ),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        days=cfg.backup_retention_days
                    ),
                ),
                rule(
                    id="expire-noncurrent-versions",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    noncurrent_version_expiration=(
                        aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                            noncurrent_days=cfg.noncurrent_version_days
                        )
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
        policy = aws.iam.Policy(
            f"{name}-backup-policy",
            name=f"ptool-{args.environment}-backup",
            description=f"ptool-ops backup job of {args.environment}: s3://{cfg.bucket}/{cfg.prefix}",
            policy=backup_policy_document(cfg.bucket, cfg.prefix),
            opts=child,
        )
        self.repo_url = self.bucket.bucket.apply(lambda b: f"s3://{b}/{cfg.prefix}")
        self.policy_arn = policy.arn
        self.register_outputs(
            {"bucket": self.bucket.bucket, "repo_url": self.repo_url, "policy_arn": policy.arn}
        )
