"""``Credentials``: every credential ptool-ops uses, in AWS Secrets Manager, by reference.

One secret per login ptool-ops needs, named ``<secrets.namePrefix>/<kind>``:

=============  ======================================================  =====================
kind           holds                                                   read by
=============  ======================================================  =====================
``operator``   ``postgresql://booking_owner:…`` (Neon's owner           operators, CI (status,
               password of the project or branch)                      restores, doctor)
``migrator``   ``postgresql://booking_migrator:…``                     CI's ``migrate up``
``backup``     ``postgresql://booking_backup:…``                       the backup role
                                                                       (``backup create``)
``api-token``  the booking API's ops token (``ptool-ops:apiToken``,    operators, CI
               also the backend's ``OPS_TOKEN``)                       (``api smoke`` …)
=============  ======================================================  =====================

The program exports each as a reference (``aws-sm:<name>``): ``databaseSecret``,
``migratorSecret``, ``backupSecret``, ``apiTokenSecret``, which ``ptool-ops config
from-stack`` writes as ``database_secret``, ``migrator_secret``, ``backup_secret`` and
``api_token_secret``. No value ever leaves the secret store through the stack's outputs.

Who owns a value after the first ``pulumi up``: a long-lived environment's database URLs
belong to the rotation engine (the stack writes them once: ``ignore_changes``); a preview's
are the stack's alone (its passwords come from its own config and nothing rotates them), so
a replaced branch gets its new host written. The ops token is the stack's everywhere: it
comes from stack config, and changing it there changes the secret and the backend's variable
in the same ``pulumi up``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import SecretsConfig
from ptool_ops.privileges import BACKUP, MIGRATOR, OPERATOR

#: the migrator's secret was a top-level resource named ``database-secret`` before
LEGACY_NAMES = {"migrator": "database-secret"}


@dataclass(frozen=True)
class CredentialsArgs:
    environment: str
    secrets: SecretsConfig
    region: str
    operator_url: pulumi.Input[str]  # secret
    migrator_url: pulumi.Input[str]  # secret
    backup_url: pulumi.Input[str]  # secret
    api_token: pulumi.Input[str]  # secret
    protect: bool = False
    preview: bool = False


class Credentials(pulumi.ComponentResource):
    secrets: dict[str, aws.secretsmanager.Secret]
    references: dict[str, pulumi.Output[str]]

    def __init__(
        self, name: str, args: CredentialsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ptool:index:Credentials", name, None, opts)
        self.secrets = {}
        self.references = {}
        rotated = not args.preview  # the rotation engine owns a long-lived env's passwords
        for kind, value, what, owned_by_rotation in (
            ("operator", args.operator_url, f"{OPERATOR} URL (the operator)", rotated),
            ("migrator", args.migrator_url, f"{MIGRATOR} URL (migrate commands)", rotated),
            ("backup", args.backup_url, f"{BACKUP} URL (backup create)", rotated),
            ("api-token", args.api_token, "booking API ops token", False),
        ):
            legacy = LEGACY_NAMES.get(kind)
            secret = aws.secretsmanager.Secret(
                f"{name}-{kind}",
                name=args.secrets.name(kind),
                description=f"{what} of {args.environment}; written by its ptool-ops stack",
                recovery_window_in_days=0 if args.preview else 30,
                region=args.region,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    protect=args.protect,
                    aliases=(
                        [pulumi.Alias(name=legacy, parent=pulumi.ROOT_STACK_RESOURCE)]
                        if legacy
                        else None
                    ),
                ),
            )
            aws.secretsmanager.SecretVersion(
                f"{name}-{kind}-value",
                secret_id=secret.id,
                secret_string=pulumi.Output.secret(value),
                region=args.region,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # set once; afterwards the rotation engine writes new versions
                    ignore_changes=["secret_string"] if owned_by_rotation else None,
                    aliases=(
                        [pulumi.Alias(name=f"{legacy}-value", parent=pulumi.ROOT_STACK_RESOURCE)]
                        if legacy
                        else None
                    ),
                ),
            )
            self.secrets[kind] = secret
            self.references[kind] = secret.name.apply(lambda n: f"aws-sm:{n}")
        self.register_outputs({f"{kind}_secret": ref for kind, ref in self.references.items()})
