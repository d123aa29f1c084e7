"""``Database``: the environment's Neon database and the booking service's roles inside it.

Neon side (dynamic providers over the Neon API): a project per long-lived environment —
PostgreSQL version, history retention (the PITR window), compute autoscaling limits and
suspend timeout — or, for a preview, a branch of the staging project that expires.
``protect`` on prod. The project's owner role is the privilege model's ``OWNER``
(``booking_owner``): Neon creates it and makes it own the database; its password is Neon's.

Inside the database the privilege model (``ptool_ops.privileges``) is the only source:

* a long-lived environment creates, through pulumi-postgresql connected as the owner over
  TLS, every role of :data:`~ptool_ops.privileges.STACK_ROLES` with exactly its attributes
  (the login roles' passwords write-only, from ``ptool-ops:dbPasswords``: a role the rotation
  engine owns gets its password once, the others whenever it changes there), every
  :data:`~ptool_ops.privileges.MEMBERSHIPS` edge and every
  :data:`~ptool_ops.privileges.DATABASE_GRANTS` grant — what ``ptool-ops local up`` and
  migration ``0001_roles_and_schema`` create from the same declarations, so the migration
  finds them and changes nothing;
* a preview creates **no role, membership or grant**: a Neon branch is a copy of its parent,
  roles and password hashes included. It gives the branch's login roles the preview's own
  passwords instead (``RolePasswords``: ``ALTER ROLE ... PASSWORD`` as the branch's owner), so
  a preview's credentials never open staging and staging's never open the preview.

Not here, on purpose: schemas, their grants and default privileges (migration 0001: its
``CREATE SCHEMA`` is not idempotent, and privileges are versioned with the schema), the
``btree_gist`` extension (0001 installs it in ``booking_ext``: one place), and any
``pg_read_all_data`` membership (on Neon the owner has no ADMIN on it; ``booking_backup``
reads through the default privileges 0001 grants).

Outputs: ``host``, ``database``, the Neon ids, and four secret URLs, each a login of the
privilege model: ``operator_url`` (``booking_owner``, Neon's owner password), ``migrator_url``,
``backup_url`` and ``app_url`` (``booking_app_a``, for the backend); :meth:`Database.credential`
gives a login as the rotation engine stores it (JSON).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import pulumi
import pulumi_postgresql as postgresql
from pydantic import SecretStr

from components.config import NeonConfig
from components.providers.neon import NeonBranch, NeonProject
from components.providers.postgres import RolePasswords
from ptool_ops import privileges
from ptool_ops.privileges import APP_GROUP, APP_LOGINS, BACKUP, MIGRATOR, OWNER, Role
from ptool_ops.secrets.credential import Credential

PORT = 5432

#: logical names the app-login memberships had before they were built from the model
_LEGACY_MEMBERSHIP_NAMES = {(APP_GROUP, login): f"member-{login}" for login in APP_LOGINS}


@dataclass(frozen=True)
class PreviewSource:
    """For a preview: branch ``parent_branch_id`` of ``project_id`` until ``expires_at``."""

    project_id: pulumi.Input[str]
    parent_branch_id: pulumi.Input[str]
    branch_name: str
    expires_at: str


@dataclass(frozen=True)
class DatabaseArgs:
    environment: str
    neon: NeonConfig
    passwords: pulumi.Input[dict[str, str]]  # secret: login stack role -> password
    protect: bool = False
    preview: PreviewSource | None = None
    #: login roles whose password the rotation engine owns once the stack has set it
    rotated_roles: frozenset[str] = frozenset()


def database_url(
    host: pulumi.Input[str],
    database: str,
    role: str,
    password: pulumi.Input[str],
    *,
    after: Sequence[pulumi.Resource] = (),
) -> pulumi.Output[str]:
    """``postgresql://role:password@host/database?sslmode=require`` as a secret, known only
    once the resources in ``after`` (the role, its password) exist."""
    ready = [r.urn for r in after]
    url = pulumi.Output.all(host, password, *ready).apply(
        lambda v: (
            f"postgresql://{role}:{quote(str(v[1]), safe='')}@{v[0]}/{database}?sslmode=require"
        )
    )
    return pulumi.Output.secret(url)


def credential_json(
    host: pulumi.Input[str],
    database: str,
    role: str,
    password: pulumi.Input[str],
    *,
    after: Sequence[pulumi.Resource] = (),
) -> pulumi.Output[str]:
    """The login as a rotation store's version holds it (``Credential.to_json``: username,
    password, host, port, dbname), a secret, known once the resources in ``after`` exist."""
    ready = [r.urn for r in after]
    text = pulumi.Output.all(host, password, *ready).apply(
        lambda v: Credential(role, SecretStr(str(v[1])), str(v[0]), PORT, database).to_json()
    )
    return pulumi.Output.secret(text)


def password_version(role: str, password: str) -> str:
    """``password_wo_version`` of a role: it changes exactly when the password does, so a new
    password in ``dbPasswords`` is sent (a digest; the program keeps it secret in state)."""
    return hashlib.sha256(f"{role}\0{password}".encode()).hexdigest()[:16]


def check_owner(neon: NeonConfig) -> None:
    if neon.owner_role != OWNER:
        raise ValueError(
            f"neon.ownerRole is {neon.owner_role!r}; the privilege model's owner is {OWNER!r}"
        )


class Database(pulumi.ComponentResource):
    host: pulumi.Output[str]
    neon_project_id: pulumi.Output[str]
    neon_branch_id: pulumi.Output[str]
    operator_url: pulumi.Output[str]
    migrator_url: pulumi.Output[str]
    backup_url: pulumi.Output[str]
    app_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ptool:index:Database", name, None, opts)
        neon = args.neon
        check_owner(neon)
        child = pulumi.ResourceOptions(parent=self, protect=args.protect)
        self.database = neon.database
        self.roles: dict[str, postgresql.Role] = {}
        self.memberships: dict[tuple[str, str], postgresql.GrantRole] = {}
        self.grants: dict[str, postgresql.Grant] = {}
        self.role_passwords: RolePasswords | None = None
        passwords = pulumi.Output.secret(args.passwords)
        self._passwords = passwords

        if args.preview is None:
            project = NeonProject(
                f"{name}-neon",
                name=f"ptool-{args.environment}",
                region_id=neon.region,
                pg_version=neon.pg_version,
                history_retention_seconds=neon.history_retention_seconds,
                autoscaling_limit_min_cu=neon.compute_min_cu,
                autoscaling_limit_max_cu=neon.compute_max_cu,
                suspend_timeout_seconds=neon.suspend_timeout_seconds,
                database_name=neon.database,
                owner_role=OWNER,
                org_id=neon.org_id,
                opts=child,
            )
            self.neon_project_id = project.project_id
            self.neon_branch_id = project.branch_id
            self.host = project.host
            owner_password = project.owner_password
        else:
            branch = NeonBranch(
                f"{name}-branch",
                project_id=args.preview.project_id,
                parent_id=args.preview.parent_branch_id,
                name=args.preview.branch_name,
                expires_at=args.preview.expires_at,
                autoscaling_limit_min_cu=neon.compute_min_cu,
                autoscaling_limit_max_cu=neon.compute_max_cu,
                suspend_timeout_seconds=neon.suspend_timeout_seconds,
                owner_role=OWNER,
                opts=child,
            )
            self.neon_project_id = pulumi.Output.from_input(args.preview.project_id)
            self.neon_branch_id = branch.branch_id
            self.host = branch.host
            owner_password = branch.owner_password

        # every URL is handed out once the model is in place on the database
        ready: list[pulumi.Resource]
        if args.preview is None:
            ready = self._provision(
                name, neon, owner_password, passwords, args.protect, args.rotated_roles
            )
        else:
            self.role_passwords = RolePasswords(
                f"{name}-role-passwords",
                host=self.host,
                database=neon.database,
                owner_role=OWNER,
                owner_password=owner_password,
                passwords=passwords,
                opts=pulumi.ResourceOptions(parent=self),
            )
            ready = [self.role_passwords]
        self._ready = ready

        def url(role: str) -> pulumi.Output[str]:
            password = passwords.apply(lambda p: str(p[role]))
            return database_url(self.host, neon.database, role, password, after=ready)

        self.operator_url = database_url(
            self.host, neon.database, OWNER, owner_password, after=ready
        )
        self.migrator_url = url(MIGRATOR)
        self.backup_url = url(BACKUP)
        self.app_url = url(APP_LOGINS[0])
        self.register_outputs(
            {
                "host": self.host,
                "database": neon.database,
                "neon_project_id": self.neon_project_id,
                "neon_branch_id": self.neon_branch_id,
                "operator_url": self.operator_url,
                "migrator_url": self.migrator_url,
                "backup_url": self.backup_url,
                "app_url": self.app_url,
            }
        )

    def credential(self, role: str) -> pulumi.Output[str]:
        """``role``'s login from ``dbPasswords`` as JSON (a rotation store's first version)."""
        password = self._passwords.apply(lambda p: str(p[role]))
        return credential_json(self.host, self.database, role, password, after=self._ready)

    def _provision(
        self,
        name: str,
        neon: NeonConfig,
        owner_password: pulumi.Input[str],
        passwords: pulumi.Output[dict[str, str]],
        protect: bool,
        rotated: frozenset[str],
    ) -> list[pulumi.Resource]:
        """The model's stack roles, memberships and database grants, made as the owner."""
        self.sql_provider = postgresql.Provider(
            f"{name}-sql",
            host=self.host,
            port=PORT,
            database=neon.database,
            username=OWNER,
            password=owner_password,
            sslmode="require",
            superuser=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        in_db = pulumi.ResourceOptions(parent=self, provider=self.sql_provider, protect=protect)

        for spec in privileges.STACK_ROLES:
            self.roles[spec.name] = _role(name, spec, passwords, in_db, spec.name in rotated)

        def ref(role: str) -> pulumi.Input[str]:
            # a stack role by its resource (so the grant waits for it), a platform role by name
            return self.roles[role].name if role in self.roles else role

        for m in privileges.MEMBERSHIPS:
            legacy = _LEGACY_MEMBERSHIP_NAMES.get((m.group, m.member))
            self.memberships[(m.group, m.member)] = postgresql.GrantRole(
                f"{name}-membership-{m.group}-{m.member}",
                role=ref(m.member),
                grant_role=ref(m.group),
                with_admin_option=m.admin,
                opts=pulumi.ResourceOptions.merge(
                    in_db,
                    pulumi.ResourceOptions(
                        aliases=[pulumi.Alias(name=f"{name}-{legacy}")] if legacy else None
                    ),
                ),
            )
        for grant in privileges.DATABASE_GRANTS:
            self.grants[grant.role] = postgresql.Grant(
                f"{name}-grant-db-{grant.role}",
                database=neon.database,
                role=ref(grant.role),
                object_type="database",
                privileges=list(grant.privileges),
                opts=in_db,
            )

        return [*self.roles.values(), *self.memberships.values(), *self.grants.values()]


def _role(
    name: str,
    spec: Role,
    passwords: pulumi.Output[dict[str, str]],
    opts: pulumi.ResourceOptions,
    rotated: bool,
) -> postgresql.Role:
    # write-only password: never in the state's outputs (the bridge still keeps the input,
    # encrypted: pulumi/pulumi-terraform-bridge#3201), never diffed; the provider sends it
    # when the role is created and whenever password_wo_version changes
    password: pulumi.Output[str] | None = None
    version: pulumi.Output[str] | None = None
    if spec.login:
        password = pulumi.Output.secret(passwords.apply(lambda p: str(p[spec.name])))
        version = pulumi.Output.secret(
            passwords.apply(lambda p: password_version(spec.name, str(p[spec.name])))
        )
    if rotated:
        # `ptool-ops secrets rotate` owns this password once the role exists: a new one in
        # dbPasswords must not be sent (it would undo a rotation)
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(ignore_changes=["password_wo_version"])
        )
    attrs = set(spec.attributes)
    return postgresql.Role(
        f"{name}-role-{spec.name}",
        name=spec.name,
        login=spec.login,
        inherit=True,
        superuser=False,
        create_database="CREATEDB" in attrs,
        create_role="CREATEROLE" in attrs,
        replication="REPLICATION" in attrs,
        bypass_row_level_security="BYPASSRLS" in attrs,
        password_wo=password,
        password_wo_version=version,
        opts=opts,
    )
