"""The Pulumi program of every stack (``stacks/__main__.py`` calls :func:`run`).

One environment = database (Neon) → backend (Railway, ``DATABASE_URL`` from the database,
``OPS_TOKEN`` from ``ptool-ops:apiToken``) → frontend (Vercel, ``NEXT_PUBLIC_API_URL`` from the
backend), plus the Secrets Manager secrets of every credential ptool-ops uses (operator,
migrator, backup, the ops token and, where it is rotated, the application's login) and the
backup bucket with the role that runs backups. What ``ptool-ops secrets rotate`` owns after
the first ``pulumi up`` is decided once, by :func:`components.rotation.rotated_secrets`.

The stack outputs are exactly what ``ptool-ops config from-stack`` turns into the
environment's ``[environments.<name>]`` settings (see ``ptool_ops/platform/stack.py``), plus
``backupRoleArn``, which only the backup workflow reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pulumi

from components.backend import Backend, BackendArgs, PreviewTarget
from components.backup_storage import BackupStorage, BackupStorageArgs
from components.config import (
    EnvironmentConfig,
    StackConfigError,
    parse_api_token,
    parse_environment,
    parse_passwords,
    preview_environment,
    preview_number,
)
from components.credentials import Credentials, CredentialsArgs
from components.database import Database, DatabaseArgs, PreviewSource
from components.frontend import Frontend, FrontendArgs
from components.rotation import rotated_roles, rotated_secrets, rotated_variables

PROJECT = "ptool-ops"


@dataclass
class Environment:
    config: EnvironmentConfig
    database: Database
    backend: Backend
    frontend: Frontend
    backup: BackupStorage
    credentials: Credentials


def load_config(stack: str) -> EnvironmentConfig:
    """The stack's validated environment config (a preview's comes from the template)."""
    raw = pulumi.Config(PROJECT).get_object("environment")
    if raw is None and preview_number(stack) is not None:
        raw = preview_environment(stack)
    return parse_environment(raw, stack=stack)


def preview_expiry(days: int, now: datetime | None = None) -> str:
    """Midnight UTC ``days`` after today: each push to the pull request extends it."""
    today = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _secret_config(stack: str, name: str, how: str) -> Any:
    """The raw value of secret config ``ptool-ops:<name>``, refused when missing or plain."""
    key = f"{PROJECT}:{name}"
    raw = pulumi.runtime.get_config(key)
    if raw is None:
        raise StackConfigError(f"stack {stack}: {key} is not set ({how})")
    if not pulumi.runtime.is_config_secret(key):
        raise StackConfigError(f"stack {stack}: {key} must be set as a secret (--secret)")
    return raw


def read_passwords(stack: str) -> dict[str, str]:
    """``ptool-ops:dbPasswords``, validated before any resource exists (errors name keys).

    Read raw so that a bad value stops the program at once instead of inside an ``apply``;
    the caller wraps the result in ``Output.secret`` straight away.
    """
    raw = _secret_config(stack, "dbPasswords", "pulumi config set --secret --path ...")
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise StackConfigError(
            f"stack {stack}: {PROJECT}:dbPasswords is not a JSON object"
        ) from None
    return parse_passwords(value, stack=stack)


def read_api_token(stack: str) -> str:
    """``ptool-ops:apiToken``: the booking API's ops token, for the backend and ptool-ops."""
    raw = _secret_config(stack, "apiToken", "pulumi config set --secret ptool-ops:apiToken ...")
    return parse_api_token(raw, stack=stack)


def run() -> Environment:
    stack = pulumi.get_stack()
    env = load_config(stack)
    config = pulumi.Config(PROJECT)
    passwords = pulumi.Output.secret(read_passwords(stack))
    api_token = pulumi.Output.secret(read_api_token(stack))
    source = pulumi.StackReference(env.preview.source_stack) if env.preview is not None else None
    rotated = rotated_secrets(preview=env.is_preview)

    db_preview = backend_preview = None
    git_branch = None
    if source is not None and env.preview is not None:
        db_preview = PreviewSource(
            project_id=source.require_output("neonProjectId"),
            parent_branch_id=source.require_output("neonBranchId"),
            branch_name=env.name,
            expires_at=preview_expiry(env.preview.expires_in_days),
        )
        backend_preview = PreviewTarget(
            project_id=source.require_output("railwayProjectId"),
            source_environment_id=source.require_output("railwayEnvironmentId"),
            service_id=source.require_output("railwayServiceId"),
            name=env.name,
        )
        git_branch = config.require("gitBranch")

    database = Database(
        "database",
        DatabaseArgs(
            environment=env.name,
            neon=env.neon,
            passwords=passwords,
            protect=env.protect,
            preview=db_preview,
            rotated_roles=rotated_roles(rotated),
        ),
    )
    backend = Backend(
        "backend",
        BackendArgs(
            environment=env.name,
            railway=env.railway,
            database_url=database.app_url,
            ops_token=api_token,
            protect=env.protect,
            preview=backend_preview,
            rotated_variables=rotated_variables(rotated),
        ),
    )
    frontend = Frontend(
        "frontend",
        FrontendArgs(
            environment=env.name,
            vercel=env.vercel,
            api_url=backend.url,
            protect=env.protect,
            preview_project_id=(
                source.require_output("vercelProjectId") if source is not None else None
            ),
            preview_git_branch=git_branch,
        ),
    )
    values: dict[str, pulumi.Input[str]] = {
        "operator": database.operator_url,
        "migrator": database.migrator_url,
        "backup": database.backup_url,
        "api-token": api_token,
    }
    for secret in rotated:  # the rotation's store: the bootstrap credential, as it reads one
        values[secret.name] = database.credential(secret.bootstrap_role)
    credentials = Credentials(
        "credentials",
        CredentialsArgs(
            environment=env.name,
            secrets=env.secrets,
            region=env.backup.region,
            values=values,
            rotated=frozenset(secret.name for secret in rotated),
            protect=env.protect,
            preview=env.is_preview,
        ),
    )
    backup = BackupStorage(
        "backup",
        BackupStorageArgs(
            environment=env.name,
            backup=env.backup,
            protect=env.protect,
            secret_arns=[credentials.secrets["backup"].arn],
        ),
    )

    # exactly what ptool-ops needs (ptool_ops/platform/stack.py maps each to a setting)
    refs = credentials.references
    outputs: dict[str, pulumi.Input[object]] = {
        "environment": env.name,
        "kind": "neon",
        "protected": env.protect,
        "apiUrl": backend.url,
        "apiTokenSecret": refs["api-token"],
        "databaseHost": database.host,
        "databaseSecret": refs["operator"],
        "migratorSecret": refs["migrator"],
        "backupSecret": refs["backup"],
        "neonProjectId": database.neon_project_id,
        "neonBranchId": database.neon_branch_id,
        "repoUrl": backup.repo_url,
        "awsRegion": env.backup.region,
        "railwayProjectId": backend.project_id,
        "railwayEnvironmentId": backend.environment_id,
        "railwayServiceId": backend.service_id,
        "vercelProjectId": frontend.project_id,
        # for the backup workflow only (ptool_ops.platform.stack.WORKFLOW_OUTPUTS)
        "backupRoleArn": backup.role_arn,
    }
    if env.backup.key_secret_name:
        outputs["backupKeySecret"] = f"aws-sm:{env.backup.key_secret_name}"
    if env.vercel.team_id:
        outputs["vercelTeamId"] = env.vercel.team_id
    for key, value in outputs.items():
        pulumi.export(key, value)
    return Environment(env, database, backend, frontend, backup, credentials)
