"""What the ``local`` environment is, read without changing anything: its paths, generated
credentials, whether the server and the API stand-in run, and a URL per role.

``local up`` (:mod:`ptool_ops.local.env`) creates what these read; every other command
reads them through :class:`ptool_ops.environment.Environment`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ptool_ops import privileges
from ptool_ops.errors import ConfigError, DatabaseUnavailable
from ptool_ops.local import SUPERUSER
from ptool_ops.local.cluster import DATABASE, LocalPaths, ServerState, server_state

#: version 2: the platform's owner role (booking_owner) has a password too
SECRETS_VERSION = 2


@dataclass
class LocalSecrets:
    """Generated credentials of the local environment, kept in ``secrets.json`` (0600)."""

    passwords: dict[str, str]
    api_token: str
    app_role: str = privileges.APP_LOGINS[0]  # the login the booking API uses now
    #: ops tokens the API still accepts beside api_token (a rotation's overlap)
    api_tokens_previous: list[str] = field(default_factory=list)
    #: the API's tenant-token key set, {"signing": kid, "keys": {kid: base64url key}};
    #: empty: tokens keyed by the ops token (what local environments made before had)
    signing_keys: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> LocalSecrets:
        roles = (SUPERUSER, *privileges.login_roles())
        return cls(
            {r: secrets.token_urlsafe(24) for r in roles},
            secrets.token_urlsafe(32),
            signing_keys=new_keyset(),
        )

    def values(self) -> list[str]:
        keys = [str(k) for k in (self.signing_keys.get("keys") or {}).values()]
        return [*self.passwords.values(), self.api_token, *self.api_tokens_previous, *keys]

    def to_json(self) -> str:
        doc = {
            "version": SECRETS_VERSION,
            "passwords": self.passwords,
            "api_token": self.api_token,
            "app_role": self.app_role,
            "api_tokens_previous": self.api_tokens_previous,
            "signing_keys": self.signing_keys,
        }
        return json.dumps(doc, indent=2) + "\n"


def new_keyset() -> dict[str, Any]:
    """A tenant-token key set with one key (kid: when it was made, and a random tail)."""
    kid = new_kid()
    return {"signing": kid, "keys": {kid: secrets.token_urlsafe(32)}}


def new_kid() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("k%Y%m%d%H%M%S") + secrets.token_hex(2)


def load_secrets(path: Path) -> LocalSecrets | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise ConfigError(
            f"{path} is not readable JSON.",
            hint="Restore it, or run 'ptool-ops local reset' to start the local environment anew.",
        ) from None
    if not isinstance(doc, dict) or doc.get("version") != SECRETS_VERSION:
        raise ConfigError(
            f"{path} is not a ptool-ops secrets file of version {SECRETS_VERSION}: the local"
            " environment was made by another version of ptool-ops (before the deployed-roles"
            " privilege model, its roles differ).",
            hint="Run 'ptool-ops local reset' and 'ptool-ops local up' to make it anew.",
        )
    return LocalSecrets(
        dict(doc["passwords"]),
        str(doc["api_token"]),
        str(doc.get("app_role", privileges.APP_LOGINS[0])),
        [str(t) for t in doc.get("api_tokens_previous") or []],
        dict(doc.get("signing_keys") or {}),
    )


def local_secret_values(local_dir: Path) -> list[str]:
    """Secrets of the local environment, for the redactor (empty when there are none yet)."""
    try:
        creds = load_secrets(local_dir / "secrets.json")
    except ConfigError:
        return []
    return creds.values() if creds else []


@dataclass
class LocalStatus:
    data_dir: str
    server: dict[str, Any]
    database: str
    urls: dict[str, str]
    wal_archive: str
    archived_wal_files: int
    api: dict[str, Any] | None


class LocalFacts:
    """The local environment under ``root`` (default ``.ptool/local``), read-only."""

    def __init__(self, root: Path) -> None:
        self.paths = LocalPaths(root.resolve())

    def secrets(self) -> LocalSecrets | None:
        return load_secrets(self.paths.secrets)

    def server(self) -> ServerState:
        return server_state(self.paths)

    def require_running(self) -> ServerState:
        state = self.server()
        if not state.running or state.port is None:
            raise DatabaseUnavailable(
                f"the local database is not running (data in {self.paths.pgdata}).",
                hint="Start it with 'ptool-ops local up'.",
            )
        return state

    def role_url(self, role: str, dbname: str = DATABASE) -> str:
        """A TCP URL with password for ``role`` -- a secret: for connecting, never printing."""
        state = self.require_running()
        creds = self.secrets()
        if creds is None or role not in creds.passwords or role == SUPERUSER:
            known = ", ".join(
                sorted(r for r in (creds.passwords if creds else {}) if r != SUPERUSER)
            )
            raise ConfigError(
                f"the local environment has no login for role {role!r} (roles: {known or 'none'}).",
                hint="Run 'ptool-ops local up' to create them.",
            )
        password = quote(creds.passwords[role], safe="")
        return f"postgresql://{quote(role)}:{password}@127.0.0.1:{state.port}/{dbname}"

    def urls(self) -> dict[str, str]:
        """Printable URLs (no passwords): psql finds the passwords in the pgpass file. The
        superuser's is for server set-up (``local up``/``down``/``reset``) only."""
        state = self.server()
        if not state.running or state.port is None:
            return {}
        out = {
            role: f"postgresql://{role}@127.0.0.1:{state.port}/{DATABASE}"
            for role in privileges.login_roles()
        }
        out[SUPERUSER] = (
            f"postgresql://{SUPERUSER}@/{DATABASE}?host={state.socket_dir}&port={state.port}"
        )
        return out

    def api(self) -> tuple[str, str] | None:
        """URL and ops token of the running API stand-in, or None when it is not running."""
        from ptool_ops.local import api as local_api

        process = local_api.running(self.paths)
        creds = self.secrets()
        if process is None or creds is None:
            return None
        return process.url, creds.api_token

    def api_last_url(self) -> str | None:
        from ptool_ops.local import api as local_api

        return local_api.last_url(self.paths)

    def status(self) -> LocalStatus:
        from ptool_ops.local import api as local_api

        state = self.server()
        archived = (
            sum(1 for _ in (self.paths.repo / "pitr" / "wal").rglob("*.zst"))
            if (self.paths.repo / "pitr" / "wal").is_dir()
            else 0
        )
        process = local_api.running(self.paths)
        return LocalStatus(
            data_dir=str(self.paths.pgdata),
            server=state.to_dict(),
            database=DATABASE,
            urls=self.urls() if state.running else {},
            wal_archive=str(self.paths.repo / "pitr" / "wal"),
            archived_wal_files=archived,
            api={"url": process.url, "pid": process.pid} if process else None,
        )
