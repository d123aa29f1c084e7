"""``Database``: the environment's Neon database and the booking service's roles inside it.

Neon side (dynamic providers over the Neon API): a project per long-lived environment —
history retention (the PITR window), compute autoscaling limits and suspend timeout — or,
for a preview, a branch of the staging project that expires. ``protect`` on prod.

Inside the database (pulumi-postgresql, connected as the Neon owner role over TLS): the
``btree_gist`` extension, the booking roles with exactly the attributes the booking
migration ``0001_roles_and_schema`` gives them (so that migration finds them and changes
nothing), their memberships, and database privileges:

* ``booking_app`` NOLOGIN holds the application's grants; ``booking_app_a`` / ``_b`` are
  LOGIN members of it, alternated by the rotation engine;
* ``booking_migrator`` owns schema ``booking`` (created by the migration, not here: the
  migration's ``CREATE SCHEMA`` is not idempotent, and the schema's grants and default
  privileges are versioned with it);
* ``booking_readonly``; ``booking_backup`` with BYPASSRLS and ``pg_read_all_data``.

Outputs: ``host``, ``database``, the Neon ids, and two secret URLs: ``app_url`` (for the
backend, as ``booking_app_a``) and ``migrator_url`` (for ptool-ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pulumi
import pulumi_postgresql as postgresql

from components.config import NeonConfig
from components.providers.neon import NeonBranch, NeonProject

APP_GROUP = "booking_app"
APP_LOGINS = ("booking_app_a", "booking_app_b")
MIGRATOR = "booking_migrator"
READONLY = "booking_readonly"
BACKUP = "booking_backup"


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
    passwords: pulumi.Input[dict[str, str]]  # secret: login role -> password
    protect: bool = False
    preview: PreviewSource | None = None


def database_url(
    host: pulumi.Input[str], database: str, role: str, password: pulumi.Input[str]
) -> pulumi.Output[str]:
    """``postgresql://role:password@host/database?sslmode=require`` as a secret."""
    url = pulumi.Output.all(host, password).apply(
        lambda v: (
            f"postgresql://{role}:{quote(str(v[1]), safe='')}@{v[0]}/{database}?sslmode=require"
        )
    )
    return pulumi.Output.secret(url)


class Database(pulumi.ComponentResource):
    host: pulumi.Output[str]
    neon_project_id: pulumi.Output[str]
    neon_branch_id: pulumi.Output[str]
    app_url: pulumi.Output[str]
    migrator_url: pulumi.Output[str]

    def __init__(
        self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ptool:index:Database", name, None, opts)
        neon = args.neon
        child = pulumi.ResourceOptions(parent=self, protect=args.protect)
        self.database = neon.database
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
                owner_role=neon.owner_role,
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
                owner_role=neon.owner_role,
                opts=child,
            )
            self.neon_project_id = pulumi.Output.from_input(args.preview.project_id)
            self.neon_branch_id = branch.branch_id
            self.host = branch.host
            owner_password = branch.owner_password

        self.sql_provider = postgresql.Provider(
            f"{name}-sql",
            host=self.host,
            port=5432,
            database=neon.database,
            username=neon.owner_role,
            password=owner_password,
            sslmode="require",
            superuser=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        in_db = pulumi.ResourceOptions(
            parent=self, provider=self.sql_provider, protect=args.protect
        )
        passwords = pulumi.Output.secret(args.passwords)

        def role(login: str, *, can_login: bool, bypass_rls: bool) -> postgresql.Role:
            # write-only password: sent to PostgreSQL, never kept in state; bump
            # password_wo_version to push a new one (the rotation engine rotates them
            # afterwards, so the stack never sets them back)
            password: pulumi.Output[str] | None = (
                pulumi.Output.secret(passwords.apply(lambda p: str(p[login])))
                if can_login
                else None
            )
            return postgresql.Role(
                f"{name}-role-{login}",
                name=login,
                login=can_login,
                inherit=True,
                bypass_row_level_security=bypass_rls,
                superuser=False,
                create_database=False,
                create_role=False,
                password_wo=password,
                password_wo_version="1" if can_login else None,
                opts=in_db,
            )

        group = role(APP_GROUP, can_login=False, bypass_rls=False)
        logins = {login: role(login, can_login=True, bypass_rls=False) for login in APP_LOGINS}
        migrator = role(MIGRATOR, can_login=True, bypass_rls=False)
        readonly = role(READONLY, can_login=True, bypass_rls=False)
        backup = role(BACKUP, can_login=True, bypass_rls=True)
        self.roles = {APP_GROUP: group, **logins, MIGRATOR: migrator, READONLY: readonly}
        self.roles[BACKUP] = backup

        for login, resource in logins.items():
            postgresql.GrantRole(
                f"{name}-member-{login}",
                role=resource.name,
                grant_role=group.name,
                opts=in_db,
            )
        postgresql.GrantRole(
            f"{name}-member-{BACKUP}-read-all",
            role=backup.name,
            grant_role="pg_read_all_data",
            opts=in_db,
        )
        postgresql.Extension(
            f"{name}-btree-gist",
            name="btree_gist",
            database=neon.database,
            schema="public",
            opts=in_db,
        )
        for grantee, privileges in (
            (APP_GROUP, ["CONNECT", "TEMPORARY"]),
            (READONLY, ["CONNECT"]),
            (BACKUP, ["CONNECT"]),
            (MIGRATOR, ["CONNECT", "CREATE", "TEMPORARY"]),
        ):
            postgresql.Grant(
                f"{name}-grant-db-{grantee}",
                database=neon.database,
                role=self.roles[grantee].name,
                object_type="database",
                privileges=privileges,
                opts=in_db,
            )

        self.app_url = database_url(
            self.host, neon.database, APP_LOGINS[0], passwords.apply(lambda p: p[APP_LOGINS[0]])
        )
        self.migrator_url = database_url(
            self.host, neon.database, MIGRATOR, passwords.apply(lambda p: p[MIGRATOR])
        )
        self.register_outputs(
            {
                "host": self.host,
                "database": neon.database,
                "neon_project_id": self.neon_project_id,
                "neon_branch_id": self.neon_branch_id,
                "app_url": self.app_url,
                "migrator_url": self.migrator_url,
            }
        )
