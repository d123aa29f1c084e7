"""One typed, validated config object per stack.

Each ``stacks/Pulumi.<stack>.yaml`` holds one structured value, ``ptool-ops:environment``,
validated here when the program starts: a misspelt or unknown key, a missing value or a
rule broken (prod keeps 7 days of history) stops the program with one sentence naming the
key. Secrets are never in those files; CI sets them as secret config
(``pulumi config set --secret`` or the action's ``config-map`` with ``secret: true``):

* ``ptool-ops:neonApiKey``, ``ptool-ops:railwayToken`` — read by the dynamic providers;
* ``ptool-ops:dbPasswords`` — a JSON object with the initial password of each login role
  (the rotation engine owns them afterwards);
* ``vercel:apiToken`` — read by the Vercel provider (or ``VERCEL_API_TOKEN``).

Preview stacks (``pr-<n>``) have no file of their own: they are built from
``stacks/preview.template.yaml`` with ``{pr}`` replaced by the pull request's number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]  # PyYAML, a dependency of pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

LOGIN_ROLES = (
    "booking_app_a",
    "booking_app_b",
    "booking_migrator",
    "booking_readonly",
    "booking_backup",
)
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
    pg_version: int = Field(default=17, ge=14, le=18)
    history_retention_days: float = Field(ge=0, le=30)
    compute_min_cu: float = Field(default=0.25, ge=0.25, le=56)
    compute_max_cu: float = Field(default=1, ge=0.25, le=56)
    suspend_timeout_seconds: int = Field(
        default=300, ge=-1, le=604800, description="-1: never suspend; >0: scale to zero"
    )
    database: str = "booking"
    owner_role: str = "booking_owner"
    org_id: str | None = None

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


class BackupConfig(_Section):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field(default="booking", pattern=r"^[A-Za-z0-9][A-Za-z0-9/_-]*$")
    region: str = "eu-central-1"
    wal_retention_days: int = Field(default=14, ge=1)
    backup_retention_days: int = Field(default=35, ge=1)
    noncurrent_version_days: int = Field(default=30, ge=1)
    object_lock_days: int | None = Field(default=None, ge=1)
    force_destroy: bool = False


class SecretsConfig(_Section):
    """Where secrets for ptool-ops live (references, never values)."""

    database_secret_name: str = Field(
        description="AWS Secrets Manager name that receives the migrator's database URL"
    )


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


class DbPasswords(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    booking_app_a: str = Field(min_length=16)
    booking_app_b: str = Field(min_length=16)
    booking_migrator: str = Field(min_length=16)
    booking_readonly: str = Field(min_length=16)
    booking_backup: str = Field(min_length=16)


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


def parse_passwords(raw: Any, *, stack: str) -> DbPasswords:
    """Validate ``ptool-ops:dbPasswords``; messages name keys, never values."""
    if not isinstance(raw, dict):
        raise StackConfigError(f"stack {stack}: ptool-ops:dbPasswords must be a JSON object")
    try:
        return DbPasswords.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        problem = {"extra_forbidden": "is not a login role", "missing": "is missing"}.get(
            first["type"], "is too short (16 characters at least)"
        )
        raise StackConfigError(f"stack {stack}: ptool-ops:dbPasswords.{key} {problem}") from None


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
