"""``Credentials``: every credential ptool-ops uses, in AWS Secrets Manager, by reference.

One secret per login ptool-ops needs, named ``<secrets.namePrefix>/<kind>``:

=============  ======================================================  =====================
kind           holds                                                   read by
=============  ======================================================  =====================
``operator``   ``postgresql://booking_owner:…`` (Neon's owner          operators, CI (status,
               password of the project or branch)                      restores, doctor)
``migrator``   ``booking_migrator``'s login: JSON (username,           CI's ``migrate up``;
               password, host, port, dbname) where it is               ``secrets rotate``
               rotated, else a URL
``backup``     ``postgresql://booking_backup:…``                       the backup role
                                                                       (``backup create``)
``api-token``  the booking API's ops token (``ptool-ops:apiToken``,    operators, CI
               also the backend's ``OPS_TOKEN``)                       (``api smoke`` …)
``app-db``     the backend's login (``booking_app_a`` at first) as     ``secrets rotate``
               JSON; a long-lived environment only                     (its store)
=============  ======================================================  =====================

The program exports the first four as references (``aws-sm:<name>``): ``databaseSecret``,
``migratorSecret``, ``backupSecret``, ``apiTokenSecret``, which ``ptool-ops config
from-stack`` writes as ``database_secret``, ``migrator_secret``, ``backup_secret`` and
``api_token_secret`` (``app-db`` has no output: ``from-stack`` has no setting for it). No
value ever leaves the secret store through the stack's outputs.

Who owns a value after the first ``pulumi up``: a secret ``ptool-ops secrets rotate`` keeps a
credential in (``rotated``: ``app-db`` and ``migrator`` of a long-lived environment, see
``components/rotation.py``) gets its first version from the stack and every later one from
the rotation -- ``ignore_changes`` on that version's value, so the stack never writes it back.
Every other value is the stack's and follows its source: the operator's URL follows Neon (a
replaced project or branch gets its new host and password written), the backup URL follows
``dbPasswords``, the ops token follows ``apiToken`` (changing it changes the secret and the
backend's variable in the same ``pulumi up``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import SecretsConfig
from ptool_ops.privileges import APP_LOGINS, BACKUP, MIGRATOR, OPERATOR

#: what each kind holds, for the secret's description
WHAT = {
    "operator": f"{OPERATOR} URL (the operator)",
    "migrator": f"{MIGRATOR} login (migrate commands)",
    "backup": f"{BACKUP} URL (backup create)",
    "api-token": "booking API ops token",
    "app-db": f"application login ({' / '.join(APP_LOGINS)}, the backend's DATABASE_URL)",
}
#: the migrator's secret was a top-level resource named ``database-secret`` before
LEGACY_NAMES = {"migrator": "database-secret"}


@dataclass(frozen=True)
class CredentialsArgs:
    environment: str
    secrets: SecretsConfig
    region: str
    #: kind -> the secret's (first) value: a URL, the ops token or a credential's JSON
    values: Mapping[str, pulumi.Input[str]]  # secret
    #: kinds the rotation engine writes after the first version
    rotated: frozenset[str] = frozenset()
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
        unknown = sorted(set(args.rotated) - set(args.values))
        if unknown:
            raise ValueError(f"rotated secret(s) without a first value: {', '.join(unknown)}")
        for kind, value in args.values.items():
            rotated = kind in args.rotated
            writer = (
                "first version written by its ptool-ops stack, later ones by ptool-ops secrets"
                " rotate"
                if rotated
                else "written by its ptool-ops stack"
            )
            legacy = LEGACY_NAMES.get(kind)
            secret = aws.secretsmanager.Secret(
                f"{name}-{kind}",
                name=args.secrets.name(kind),
                description=f"{WHAT[kind]} of {args.environment}; {writer}",
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
                    # rotated: the bootstrap credential, written once; every later version
                    # (and the AWSCURRENT label) is `ptool-ops secrets rotate`'s
                    ignore_changes=["secret_string"] if rotated else None,
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
