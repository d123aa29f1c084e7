"""Environments and their settings.

Precedence, lowest first: defaults < ``ptool-ops.toml`` (``[environments.<name>]``) <
``PTOOL_*`` variables < command-line flags. ``local`` always exists and needs no file.

Every failure names the key and where it came from, in one sentence.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ptool_ops.errors import ConfigError
from ptool_ops.privileges.model import BACKUP, MIGRATOR, OWNER
from ptool_ops.secrets.spec import ManagedSecret

ENV_PREFIX = "PTOOL_"
CONFIG_FILE = "ptool-ops.toml"
LOCAL = "local"


class EnvironmentSettings(BaseSettings):
    """What ptool-ops knows of one environment. Secrets are ``SecretStr`` and never printed."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, validate_default=True
    )

    name: str = LOCAL
    kind: Literal["local", "postgres", "neon"] = Field(
        default="postgres",
        description="local: the embedded environment; postgres: self-managed; neon: Neon.",
    )
    protected: bool | None = Field(
        default=None, description="Ask for confirmation before changes (default: true for prod)."
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql:// URL of the operator's login (on Neon: the database owner,"
        f" {OWNER}); every command uses it unless its role has a URL of its own.",
    )
    database_secret: str | None = Field(
        default=None, description="Secret reference for database_url (env:, file:, aws-sm:)."
    )
    migrator_url: SecretStr | None = Field(
        default=None, description=f"postgresql:// URL of {MIGRATOR}, for migrate commands."
    )
    migrator_secret: str | None = Field(
        default=None, description="Secret reference for migrator_url (env:, file:, aws-sm:)."
    )
    backup_url: SecretStr | None = Field(
        default=None, description=f"postgresql:// URL of {BACKUP}, for backup create."
    )
    backup_secret: str | None = Field(
        default=None, description="Secret reference for backup_url (env:, file:, aws-sm:)."
    )
    api_url: str | None = Field(default=None, description="Booking API base URL.")
    api_token: SecretStr | None = Field(default=None, description="Booking API ops token.")
    api_token_secret: str | None = Field(
        default=None, description="Secret reference for api_token (env:, file:, aws-sm:)."
    )
    repo_url: str | None = Field(
        default=None, description="Backup repository: s3://bucket/prefix or file:///path."
    )
    pg_bin_dir: Path | None = Field(
        default=None, description="Directory of pg_dump, pg_restore, ... to prefer."
    )
    aws_region: str | None = None
    aws_endpoint_url: str | None = Field(
        default=None, description="S3 / Secrets Manager endpoint (S3-compatible stores, tests)."
    )

    neon_project_id: str | None = None
    neon_branch_id: str | None = None
    neon_api_key: SecretStr | None = None
    neon_api_url: str = "https://console.neon.tech/api/v2"
    railway_project_id: str | None = None
    railway_environment_id: str | None = None
    railway_service_id: str | None = None
    railway_token: SecretStr | None = None
    railway_api_url: str = Field(
        default="https://backboard.railway.com/graphql/v2", description="Railway's GraphQL API."
    )
    vercel_project_id: str | None = None
    vercel_team_id: str | None = None
    vercel_token: SecretStr | None = None
    vercel_api_url: str = Field(default="https://api.vercel.com", description="Vercel's API.")
    database_host: str | None = Field(
        default=None,
        description="Database host, for display (the URL comes from database_url/_secret).",
    )

    local_dir: Path = Field(
        default=Path(".ptool/local"), description="Where the local environment keeps its data."
    )
    audit_dir: Path = Field(
        default=Path(".ptool/audit"),
        description="The audit trail of an environment without a backup repository"
        " (<audit_dir>/<env>/); an older per-machine trail (<env>.jsonl) here is imported"
        " into the environment's trail by its next command.",
    )
    local_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="TCP port of the local PostgreSQL (default: free).",
    )

    backup_key: SecretStr | None = Field(
        default=None,
        description="Backup encryption key: 32 bytes as base64 or hex (openssl rand -base64 32).",
    )
    backup_key_secret: str | None = Field(
        default=None, description="Secret reference for the backup key (env:, file:, aws-sm:)."
    )
    backup_compression_level: int = Field(
        default=3, ge=1, le=22, description="zstd level of backup objects."
    )
    repo_part_size_mb: int = Field(
        default=8, ge=5, le=5120, description="S3 multipart part size in MiB (every part equal)."
    )
    repo_s3_checksum: Literal["crc32", "off"] = Field(
        default="crc32",
        description="CRC32 that S3 checks on every part and keeps with the object; 'off' for "
        "S3-compatible stores that reject flexible checksums.",
    )
    backup_keep_last: int = Field(default=7, ge=0, description="prune: keep the newest N.")
    backup_keep_daily: int = Field(
        default=7, ge=0, description="prune: keep the newest backup of each of N days."
    )
    backup_keep_weekly: int = Field(
        default=4, ge=0, description="prune: keep the newest backup of each of N ISO weeks."
    )
    backup_keep_monthly: int = Field(
        default=6, ge=0, description="prune: keep the newest backup of each of N months."
    )
    pitr_keep_full: int = Field(
        default=2,
        ge=1,
        description="pitr prune: keep the newest N full base backups, every incremental on"
        " them, and the WAL from the oldest one's start.",
    )
    migrations_dir: Path | None = Field(
        default=None,
        description="migrate: directory of NNNN_name.up/down/verify.sql (default: the booking"
        " migrations shipped in the package).",
    )
    lint_start_after: str | None = Field(
        default=None,
        description="migrate lint: lint only the migrations after this version (e.g. 0042);"
        " the earlier ones are still read for the tables they create. For a history older"
        " than ptool-ops.",
    )
    lock_timeout_ms: int = Field(
        default=2000, ge=1, description="migrate: lock_timeout of every migration statement."
    )
    statement_timeout_ms: int = Field(
        default=3_600_000,
        ge=0,
        description="migrate: statement_timeout of every migration statement (0: none).",
    )
    lock_retries: int = Field(
        default=5, ge=0, le=50, description="migrate: retries after a lock timeout (55P03)."
    )
    migrate_lock_wait_s: float = Field(
        default=30.0, ge=0, description="migrate: how long to wait for another runner's lock."
    )
    api_ready_timeout_s: float = Field(
        default=30.0, ge=0, description="migrate: how long the API may take to be ready."
    )
    migrate_stats_databases: list[str] = Field(
        default_factory=list,
        description="migrate capture: the databases to look for pg_stat_statements in, in"
        " order (default: the environment's database, then postgres).",
    )
    migrate_compat_check: bool = Field(
        default=True,
        description="migrate up/test: prepare the captured API statements against the"
        " migrated schema before commit (the compatibility gate).",
    )

    secrets: dict[str, ManagedSecret] = Field(
        default_factory=dict,
        description="secrets: the managed secrets, one [environments.<env>.secrets.<name>]"
        " table each (kind, roles, store, consumers); local has its own by default.",
    )
    status_backup_max_age_h: float = Field(
        default=26.0, gt=0, description="status: the newest backup may be this old (hours)."
    )
    status_drill_max_age_days: float = Field(
        default=35.0, gt=0, description="status: the newest passed restore drill may be this old."
    )
    drill_rto_target_s: float = Field(
        default=3600.0, gt=0, description="report: the recovery time a restore drill must beat."
    )
    status_wal_lag_max_s: float = Field(
        default=300.0,
        gt=0,
        description="status: a finished WAL segment may wait this long to be archived.",
    )
    secret_revoke_grace_s: float = Field(
        default=3600.0,
        ge=0,
        description="secrets revoke-previous: how long after a rotation the previous"
        " credential stays valid; longer than consumers' drain time and pool lifetime.",
    )
    secret_max_age_days: float = Field(
        default=90.0, gt=0, description="secrets status: a secret older than this is due."
    )
    secret_deploy_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="secrets rotate: how long a consumer's redeploy may take to be healthy.",
    )
    secret_deploy_poll_s: float = Field(
        default=5.0, gt=0, description="secrets rotate: how often a redeploy's state is read."
    )

    @field_validator("database_url", "migrator_url", "backup_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raw = value.get_secret_value()
            if not raw.startswith(("postgresql://", "postgres://")):
                raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator(
        "database_secret",
        "migrator_secret",
        "backup_secret",
        "api_token_secret",
        "backup_key_secret",
    )
    @classmethod
    def _secret_ref(cls, value: str | None) -> str | None:
        if value is not None:
            from ptool_ops.secrets.refs import parse_ref

            parse_ref(value)
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, ManagedSecret]) -> dict[str, ManagedSecret]:
        import re

        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
                raise ValueError(f"secret name {name!r} must be lower-case letters, digits, - or _")
        return value

    @field_validator("repo_url")
    @classmethod
    def _repo_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("s3://", "file://")):
            raise ValueError("must start with s3:// or file://")
        return value

    @field_validator(
        "api_url", "neon_api_url", "railway_api_url", "vercel_api_url", "aws_endpoint_url"
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def needs_confirmation(self) -> bool:
        return self.protected if self.protected is not None else self.name == "prod"

    def managed_secrets(self) -> dict[str, ManagedSecret]:
        """The managed secrets: the declared ones; the local environment's own when it
        declares none."""
        if self.secrets or not self.is_local:
            return dict(self.secrets)
        from ptool_ops.secrets.spec import local_secrets

        return local_secrets(Path(self.local_dir))

    def secret_values(self) -> list[str]:
        """Every secret value these settings hold, for the redactor."""
        values = []
        for field_name in type(self).model_fields:
            value = getattr(self, field_name)
            if isinstance(value, SecretStr):
                values.append(value.get_secret_value())
                values.extend(url_passwords(value.get_secret_value()))
        return values

    def describe(self) -> dict[str, Any]:
        """Settings for display: secrets shown as set/unset, never by value."""
        shown: dict[str, Any] = {}
        for field_name in type(self).model_fields:
            value = getattr(self, field_name)
            if isinstance(value, SecretStr):
                shown[field_name] = "(set)"
            elif value is not None:
                shown[field_name] = str(value) if isinstance(value, Path) else value
        return shown


def url_passwords(url: str) -> list[str]:
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


class _TableSource(PydanticBaseSettingsSource):
    """One ``[environments.<name>]`` table of ptool-ops.toml as a settings source."""

    def __init__(self, settings_cls: type[BaseSettings], table: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._table = table

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._table.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._table)


@dataclass(frozen=True)
class ConfigFile:
    path: Path | None
    environments: dict[str, dict[str, Any]]

    def where(self, env: str) -> str:
        return f"[environments.{env}] of {self.path}" if self.path else "the defaults"


def config_path(cwd: Path | None = None) -> Path | None:
    explicit = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"PTOOL_CONFIG names {path}, which is not a file.",
                hint="Point PTOOL_CONFIG at your ptool-ops.toml or unset it.",
            )
        return path
    candidate = (cwd or Path.cwd()) / CONFIG_FILE
    return candidate if candidate.is_file() else None


def read_config(path: Path | None) -> ConfigFile:
    if path is None:
        return ConfigFile(None, {})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"{path} is not valid TOML: {err}.", hint="Fix the file and run the command again."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}.") from None
    unknown = sorted(set(data) - {"environments"})
    if unknown:
        raise ConfigError(
            f"unknown top-level key {unknown[0]!r} in {path}; "
            "environments go in [environments.<name>] tables."
        )
    envs = data.get("environments", {})
    if not isinstance(envs, dict) or not all(isinstance(v, dict) for v in envs.values()):
        raise ConfigError(f"[environments] in {path} must hold one table per environment.")
    return ConfigFile(path, envs)


def load_environment(
    name: str | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    cwd: Path | None = None,
) -> EnvironmentSettings:
    """The settings of environment ``name`` (default: ``PTOOL_ENV``, else ``local``)."""
    name = name or os.environ.get(f"{ENV_PREFIX}ENV") or LOCAL
    config = read_config(config_path(cwd))
    if name != LOCAL and name not in config.environments:
        known = ", ".join([LOCAL, *sorted(config.environments)])
        where = f"in {config.path}" if config.path else f"(no {CONFIG_FILE} found)"
        raise ConfigError(
            f"unknown environment {name!r}: the known environments are {known} {where}.",
            hint=f"Add an [environments.{name}] table to {CONFIG_FILE} or pick one of those.",
        )
    table = dict(config.environments.get(name, {}))
    table.setdefault("kind", LOCAL if name == LOCAL else "postgres")
    base = config.path.parent if config.path else (cwd or Path.cwd())

    class _Loaded(EnvironmentSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _TableSource(settings_cls, table))

    try:
        loaded = _Loaded(**{"name": name, **(overrides or {})})
    except ValidationError as err:
        raise _explain(err, name, config) from None
    for key in ("local_dir", "audit_dir"):
        path = getattr(loaded, key)
        if not path.is_absolute():
            setattr(loaded, key, (base / path).resolve())
    if loaded.pg_bin_dir is not None and not loaded.pg_bin_dir.is_dir():
        raise ConfigError(
            f"pg_bin_dir {loaded.pg_bin_dir} ({_source('pg_bin_dir', name, config)}) "
            "is not a directory.",
            hint="Point it at the directory holding pg_dump and pg_restore, or unset it.",
        )
    return loaded


def _source(key: str, env: str, config: ConfigFile) -> str:
    var = f"{ENV_PREFIX}{key.upper()}"
    if var in os.environ:
        return f"from variable {var}"
    return f"from {config.where(env)}"


def _explain(err: ValidationError, env: str, config: ConfigFile) -> ConfigError:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "?"
    if first["type"] == "extra_forbidden":
        return ConfigError(
            f"unknown setting {key!r} {_source(key, env, config)}.",
            hint="Run 'ptool-ops config keys' to list the settings an environment accepts.",
        )
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(
        f"setting {key!r} {_source(key, env, config)} is invalid: {message}.",
        hint="Fix the value and run the command again ('ptool-ops config check' validates).",
    )


class SettingInfo(BaseModel):
    key: str
    variable: str
    secret: bool
    description: str


def setting_keys() -> list[SettingInfo]:
    infos = []
    for key, field in EnvironmentSettings.model_fields.items():
        if key == "name":
            continue
        secret = "SecretStr" in str(field.annotation)
        infos.append(
            SettingInfo(
                key=key,
                variable=f"{ENV_PREFIX}{key.upper()}",
                secret=secret,
                description=field.description or "",
            )
        )
    return infos
