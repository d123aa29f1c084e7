"""Stack outputs → environment settings (``ptool-ops config from-stack``).

The Pulumi program exports exactly the outputs listed in :data:`OUTPUT_KEYS`, each the value
of one ptool-ops setting, so the stack and ``ptool-ops.toml`` cannot drift: an output this
module does not know, or a missing required one, is an error rather than a silent skip.

Secrets are never written: every credential is a secret reference the stack provisioned in
AWS Secrets Manager -- ``database_secret`` (the operator, ``booking_owner``),
``migrator_secret``, ``backup_secret``, ``api_token_secret`` (the booking API's ops token),
e.g. ``aws-sm:ptool/prod/booking/migrator`` -- and an output that is a secret (``[secret]`` in
``pulumi stack output --json``, or a URL with a password) is refused.

:data:`WORKFLOW_OUTPUTS` are outputs for CI workflows, not settings (the backup role's ARN):
accepted and not written.

The ``[environments.<name>]`` table is merged into the file as text: other tables, comments
and keys of the table the stack does not set are kept.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ptool_ops.errors import ConfigError
from ptool_ops.settings import EnvironmentSettings

OUTPUT_KEYS: dict[str, str] = {
    "kind": "kind",
    "protected": "protected",
    "apiUrl": "api_url",
    "apiTokenSecret": "api_token_secret",
    "databaseHost": "database_host",
    "databaseSecret": "database_secret",
    "migratorSecret": "migrator_secret",
    "backupSecret": "backup_secret",
    "backupKeySecret": "backup_key_secret",
    "neonProjectId": "neon_project_id",
    "neonBranchId": "neon_branch_id",
    "repoUrl": "repo_url",
    "awsRegion": "aws_region",
    "railwayProjectId": "railway_project_id",
    "railwayEnvironmentId": "railway_environment_id",
    "railwayServiceId": "railway_service_id",
    "vercelProjectId": "vercel_project_id",
    "vercelTeamId": "vercel_team_id",
}
"""Stack output → setting. ``environment`` names the table and is not a setting."""

WORKFLOW_OUTPUTS = frozenset({"backupRoleArn"})
"""Stack outputs that CI workflows read (``steps.<id>.outputs.<name>``), never settings."""

REQUIRED_OUTPUTS = (
    "environment",
    "apiUrl",
    "apiTokenSecret",
    "databaseSecret",
    "migratorSecret",
    "backupSecret",
    "neonProjectId",
    "repoUrl",
)
SECRET_MARKER = "[secret]"  # noqa: S105 - how the CLI masks a secret output, not a secret
_URL_PASSWORD = re.compile(r"://[^/\s:@]+:[^@\s]+@")
_ENV_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class StackImport:
    """What ``from-stack`` did (or, with ``dry_run``, would do) to ``path``."""

    environment: str
    path: Path
    settings: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    created_table: bool = False
    written: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "path": str(self.path),
            "settings": self.settings,
            "changed": self.changed,
            "created_table": self.created_table,
            "written": self.written,
        }


def parse_outputs(text: str, *, source: str) -> dict[str, Any]:
    """``pulumi stack output --json`` as a dict; one sentence when it is not that."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(
            f"{source} is not JSON.",
            hint="Pass the output of 'pulumi stack output --json' (without --show-secrets).",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a JSON object of stack outputs.")
    return data


def settings_from_outputs(
    outputs: Mapping[str, Any], *, name: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The environment's name and its settings from the stack outputs (validated)."""
    unknown = sorted(set(outputs) - set(OUTPUT_KEYS) - WORKFLOW_OUTPUTS - {"environment"})
    if unknown:
        raise ConfigError(
            f"stack output {unknown[0]!r} is not a ptool-ops setting.",
            hint="The stack and ptool-ops disagree: update ptool-ops or the stack's outputs.",
        )
    missing = [key for key in REQUIRED_OUTPUTS if outputs.get(key) in (None, "")]
    if missing and not (missing == ["environment"] and name):
        raise ConfigError(
            f"the stack outputs have no {missing[0]!r}.",
            hint="Run 'pulumi up' for the stack first, then export its outputs again.",
        )
    for key, value in outputs.items():
        if value == SECRET_MARKER or (isinstance(value, str) and _URL_PASSWORD.search(value)):
            raise ConfigError(
                f"stack output {key!r} is a secret; ptool-ops.toml takes secret references only.",
                hint="Export the outputs without --show-secrets; secrets go in a secret store.",
            )
    env_name = name or str(outputs["environment"])
    if not _ENV_NAME.match(env_name) or env_name == "local":
        raise ConfigError(f"{env_name!r} cannot be an environment name in ptool-ops.toml.")
    settings = {OUTPUT_KEYS[k]: v for k, v in outputs.items() if k in OUTPUT_KEYS and v is not None}
    _validate(env_name, settings)
    return env_name, settings


def _validate(env_name: str, settings: dict[str, Any]) -> None:
    class _Only(EnvironmentSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    try:
        validated = _Only(name=env_name, **settings)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"stack output for setting {key!r} is invalid: "
            f"{first['msg'].removeprefix('Value error, ')}."
        ) from None
    for key in settings:
        if isinstance(getattr(validated, key), SecretStr):
            raise ConfigError(f"setting {key!r} is a secret and cannot come from a stack output.")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise ConfigError(f"cannot write {type(value).__name__} values to ptool-ops.toml.")


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def merge_environment(
    text: str, env_name: str, settings: Mapping[str, Any]
) -> tuple[str, list[str], bool]:
    """``text`` with ``[environments.<env_name>]`` holding ``settings`` (other keys kept).

    Returns the new text, the keys whose value changed, and whether the table was created.
    """
    current = tomllib.loads(text) if text.strip() else {}
    table = dict(current.get("environments", {}).get(env_name, {}))
    changed = sorted(k for k, v in settings.items() if table.get(k) != v)
    lines = text.splitlines()
    header = f"environments.{env_name}"
    start = next(
        (i for i, line in enumerate(lines) if (m := _HEADER.match(line)) and m.group(1) == header),
        None,
    )
    if start is None:
        block = [f"[{header}]", *(f"{k} = {_toml_value(v)}" for k, v in settings.items())]
        prefix = lines + ([""] if lines and lines[-1].strip() else [])
        return "\n".join(prefix + block) + "\n", changed, True
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    body = lines[start + 1 : end]
    done: set[str] = set()
    for i, line in enumerate(body):
        match = _KEY.match(line)
        if match and match.group(1) in settings:
            key = match.group(1)
            body[i] = f"{key} = {_toml_value(settings[key])}"
            done.add(key)
    insert_at = len(body)
    while insert_at > 0 and not body[insert_at - 1].strip():
        insert_at -= 1
    added = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if k not in done]
    body[insert_at:insert_at] = added
    merged = lines[: start + 1] + body + lines[end:]
    result = "\n".join(merged) + "\n"
    tomllib.loads(result)  # we never write a file TOML cannot read back
    return result, changed, False


def import_outputs(
    outputs: Mapping[str, Any],
    path: Path,
    *,
    name: str | None = None,
    dry_run: bool = False,
) -> StackImport:
    """Write (or with ``dry_run`` only compute) the environment's table in ``path``."""
    env_name, settings = settings_from_outputs(outputs, name=name)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        new_text, changed, created = merge_environment(text, env_name, settings)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}.") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}.") from None
    written = False
    if not dry_run and (changed or created):
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(new_text, encoding="utf-8")
            tmp.replace(path)
        except OSError as err:
            raise ConfigError(f"cannot write {path}: {err.strerror}.") from None
        written = True
    return StackImport(env_name, path, settings, changed, created, written)
