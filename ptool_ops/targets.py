"""Where an environment's database is: the one place settings become a connection URL."""

from __future__ import annotations

from pydantic import SecretStr

from ptool_ops.errors import ConfigError
from ptool_ops.settings import EnvironmentSettings


def database_url(settings: EnvironmentSettings) -> SecretStr:
    """The URL the toolkit connects with (explicit URL > secret reference > local server)."""
    if settings.database_url is not None:
        return settings.database_url
    if settings.database_secret is not None:
        from ptool_ops.secrets.refs import parse_ref, resolve

        return resolve(parse_ref(settings.database_secret), settings)
    if settings.is_local:
        from ptool_ops.local.env import LocalEnvironment

        return SecretStr(LocalEnvironment(settings.local_dir).database_url())
    raise ConfigError(
        f"environment {settings.name!r} has no database configured.",
        hint=f"Set database_url or database_secret in [environments.{settings.name}] of "
        "ptool-ops.toml, or PTOOL_DATABASE_URL.",
    )


def api_endpoint(settings: EnvironmentSettings) -> tuple[str, SecretStr | None]:
    """The booking API's base URL and ops token (settings > the local stand-in)."""
    if settings.api_url is not None:
        return settings.api_url, settings.api_token
    if settings.is_local:
        from ptool_ops.errors import ServiceUnavailable
        from ptool_ops.local.env import LocalEnvironment

        env = LocalEnvironment(settings.local_dir)
        running = env.api()
        if running is None:
            from ptool_ops.local.api import last_url

            where = last_url(env.paths)
            raise ServiceUnavailable(
                f"the local booking API{f' at {where}' if where else ''} is not running.",
                hint="Start it with 'ptool-ops local up'.",
            )
        url, token = running
        return url, SecretStr(token)
    raise ConfigError(
        f"environment {settings.name!r} has no API configured.",
        hint=f"Set api_url and api_token in [environments.{settings.name}] of ptool-ops.toml, "
        "or PTOOL_API_URL and PTOOL_API_TOKEN.",
    )
