"""The composition root: an environment's settings → one :class:`Environment`, built once per
command and handed to every capability.

It holds what a command needs to find and reach things -- a database login per role of
the privilege model, the backup repository, the booking API, the Neon client, the audit
sink -- so nothing below it imports upward to find an address. Secret references
(``*_secret`` settings) are resolved on first use, and every value they yield is passed to
``on_secret`` (the CLI's redactor) before anything can print it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ptool_ops import privileges
from ptool_ops.audit import Entry
from ptool_ops.errors import ConfigError, ServiceUnavailable
from ptool_ops.settings import EnvironmentSettings

if TYPE_CHECKING:
    import psycopg

    from ptool_ops.audit import Trail
    from ptool_ops.booking.api import BookingApi
    from ptool_ops.local.facts import LocalFacts
    from ptool_ops.platform.neon import NeonClient
    from ptool_ops.repo.repository import Repository

__all__ = ["Environment", "Login"]

#: role → (URL setting, secret reference setting) of a deployed environment; a role
#: without its own falls back to the operator's (database_url / database_secret)
_ROLE_SETTINGS: dict[str, tuple[str, str]] = {
    privileges.OPERATOR: ("database_url", "database_secret"),
    privileges.MIGRATOR: ("migrator_url", "migrator_secret"),
    privileges.BACKUP: ("backup_url", "backup_secret"),
}


@dataclass(frozen=True)
class Login:
    """A database login for one duty: the URL (a secret), the role the privilege model
    names for the duty, and where the URL came from (for messages)."""

    url: SecretStr
    role: str
    source: str

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        from ptool_ops import pg

        return pg.connect(self.url, **kwargs)

    def describe(self) -> str:
        from ptool_ops import pg

        return pg.describe(self.url)

    @property
    def user(self) -> str:
        """The role the URL logs in as."""
        from ptool_ops import pg

        return str(pg._params(self.url).get("user") or "?")


class Environment:
    """One environment: settings plus everything a command reaches through them."""

    def __init__(
        self,
        settings: EnvironmentSettings,
        *,
        on_secret: Callable[[str], None] | None = None,
        redact: Callable[[Any], Any] | None = None,
        invocation: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self._on_secret = on_secret or (lambda value: None)
        #: masks every secret known so far in a JSON-able value (the CLI's redactor)
        self.redact = redact or (lambda value: value)
        #: the command line acting on the environment (the CLI's), for the audit trail
        self.invocation = invocation
        #: the database roles this environment handed logins for (names, for messages)
        self.login_users: list[str] = []
        #: secret references resolved so far: one fetch per reference per command
        self._resolved: dict[str, SecretStr] = {}

    # --- facts ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def kind(self) -> str:
        return self.settings.kind

    @property
    def is_local(self) -> bool:
        return self.settings.is_local

    @property
    def protected(self) -> bool:
        """Changes need confirmation, and migrations a backup point."""
        return self.settings.needs_confirmation

    @cached_property
    def local(self) -> LocalFacts | None:
        if not self.is_local:
            return None
        from ptool_ops.local.facts import LocalFacts

        return LocalFacts(self.settings.local_dir)

    # --- secrets -------------------------------------------------------------------------

    def _secret(self, value: SecretStr | None, ref: str | None, key: str) -> SecretStr | None:
        """A secret setting: its value, or what its reference points at (resolved here,
        once per reference for the Environment's life -- a command's)."""
        if value is not None:
            return value
        if ref is None:
            return None
        if ref in self._resolved:
            return self._resolved[ref]
        from ptool_ops.secrets.refs import parse_ref, resolve

        try:
            parsed = parse_ref(ref)
        except ValueError as err:  # validated at load; a reference built in code is not
            raise ConfigError(f"setting {key!r} is not a secret reference: {err}.") from None
        resolved = resolve(
            parsed,
            aws_region=self.settings.aws_region,
            aws_endpoint_url=self.settings.aws_endpoint_url,
        )
        self.mark_secret(resolved.get_secret_value())
        self._resolved[ref] = resolved
        return resolved

    def mark_secret(self, value: str) -> None:
        """Hand a secret value (and, for a URL, its password) to the redactor before anything
        can print it: for values a command reads or makes itself, e.g. a rotation's."""
        from ptool_ops.settings import url_passwords

        self._on_secret(value)
        for password in url_passwords(value):
            self._on_secret(password)

    # --- the database --------------------------------------------------------------------

    def database(self, duty: str) -> Login:
        """The login the privilege model names for ``duty`` (a key of
        :data:`ptool_ops.privileges.DUTIES`)."""
        return self.login(privileges.DUTIES[duty].role)

    def login(self, role: str) -> Login:
        """The URL for ``role``: the local environment's own login for it; elsewhere the
        role's setting, else the operator's."""
        login = self._login(role)
        user = login.user
        if user not in self.login_users:
            self.login_users.append(user)
        return login

    def _login(self, role: str) -> Login:
        if self.local is not None:
            return Login(SecretStr(self.local.role_url(role)), role, "the local environment")
        url_key, ref_key = _ROLE_SETTINGS.get(role, _ROLE_SETTINGS[privileges.OPERATOR])
        for value_key, secret_key in ((url_key, ref_key), _ROLE_SETTINGS[privileges.OPERATOR]):
            url = self._secret(
                getattr(self.settings, value_key), getattr(self.settings, secret_key), value_key
            )
            if url is not None:
                source = value_key if getattr(self.settings, value_key) else secret_key
                return Login(url, role, source)
        raise ConfigError(
            f"environment {self.name!r} has no database configured.",
            hint=f"Set database_url or database_secret (the operator's login) in "
            f"[environments.{self.name}] of ptool-ops.toml, or PTOOL_DATABASE_URL.",
        )

    def configured_logins(self) -> dict[str, Login]:
        """Every distinct login configured, by the role it stands for (``doctor``)."""
        if self.local is not None:
            return {r: self.login(r) for r in privileges.login_roles()}
        found: dict[str, Login] = {}
        for role, (url_key, ref_key) in _ROLE_SETTINGS.items():
            if getattr(self.settings, url_key) or getattr(self.settings, ref_key):
                found[role] = self.login(role)
        return found

    # --- the repository ------------------------------------------------------------------

    @property
    def repo_url(self) -> str:
        """The repository URL (the local environment has a default)."""
        if self.settings.repo_url:
            return self.settings.repo_url
        if self.is_local:
            return f"file://{(self.settings.local_dir / 'repo').resolve()}"
        raise ConfigError(
            f"environment {self.name!r} has no backup repository.",
            hint=f"Set repo_url (s3://bucket/prefix or file:///path) in [environments."
            f"{self.name}] of ptool-ops.toml, or PTOOL_REPO_URL.",
        )

    def backup_key(self) -> bytes | None:
        """The backup encryption key (``backup_key`` or ``backup_key_secret``), or None."""
        from ptool_ops.repo.crypto import parse_key

        key = self._secret(
            self.settings.backup_key, self.settings.backup_key_secret, "backup_key_secret"
        )
        return parse_key(key.get_secret_value()) if key is not None else None

    @cached_property
    def _repository(self) -> Repository:
        from ptool_ops.repo import open_storage
        from ptool_ops.repo.repository import Repository

        settings = self.settings
        storage = open_storage(
            self.repo_url,
            part_size=settings.repo_part_size_mb * 1024 * 1024,
            checksum=settings.repo_s3_checksum == "crc32",
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
        )
        return Repository(
            storage,
            key_loader=self.backup_key,
            compression_level=settings.backup_compression_level,
        )

    def repository(self) -> Repository:
        """The environment's backup repository (its key is read on first use)."""
        return self._repository

    # --- the booking API -----------------------------------------------------------------

    @property
    def has_api(self) -> bool:
        return self.settings.api_url is not None or self.is_local

    def api_endpoint(self) -> tuple[str, SecretStr | None]:
        """The booking API's base URL and ops token (settings > the local stand-in)."""
        if self.settings.api_url is not None:
            token = self._secret(
                self.settings.api_token, self.settings.api_token_secret, "api_token_secret"
            )
            return self.settings.api_url, token
        if self.local is not None:
            running = self.local.api()
            if running is None:
                where = self.local.api_last_url()
                raise ServiceUnavailable(
                    f"the local booking API{f' at {where}' if where else ''} is not running.",
                    hint="Start it with 'ptool-ops local up'.",
                )
            return running[0], SecretStr(running[1])
        raise ConfigError(
            f"environment {self.name!r} has no API configured.",
            hint=f"Set api_url and api_token (or api_token_secret) in [environments."
            f"{self.name}] of ptool-ops.toml, or PTOOL_API_URL and PTOOL_API_TOKEN.",
        )

    def api(self, *, ops_token: bool = True) -> BookingApi:
        """A client of the environment's booking API (use it as a context manager).
        ``ops_token=False``: without the ops token, for what needs none (``/health/*``,
        openapi.yaml), so a token secret that is missing or cannot be fetched has no say."""
        from ptool_ops.booking.api import BookingApi

        if not ops_token and self.settings.api_url is not None:
            return BookingApi(self.settings.api_url)
        url, token = self.api_endpoint()  # the local stand-in's token is no secret to fetch
        return BookingApi(url, token if ops_token else None)

    # --- platforms -----------------------------------------------------------------------

    def neon(self) -> NeonClient:
        from ptool_ops.platform.neon import NeonClient

        return NeonClient.from_settings(self.settings)

    # --- the audit trail -----------------------------------------------------------------

    @cached_property
    def audit_trail(self) -> Trail:
        """The environment's audit trail: ``audit/<name>/`` of its repository (of
        ``audit_dir`` when it has none), anchored in its database when it has one."""
        from ptool_ops.audit import Trail
        from ptool_ops.audit.anchor import Anchor

        has_repo = self.settings.repo_url is not None or self.is_local
        legacy = self.settings.audit_dir / f"{self.name}.jsonl"
        trail: Trail

        def storage() -> Any:
            if has_repo:
                return self.repository().storage
            from ptool_ops.repo.file import FileStorage

            return FileStorage(self.settings.audit_dir.resolve())

        def prepare() -> None:
            from ptool_ops.audit.legacy import import_file

            if has_repo:
                self.repository().ensure_initialised()
            import_file(trail, legacy)

        trail = Trail(
            self.name,
            storage=storage,
            prefix=f"audit/{self.name}" if has_repo else self.name,
            prepare=prepare,
            anchor=Anchor(self.name, self._anchor_login),
            redact=self.redact,
            invocation=self.invocation,
        )
        return trail

    def _anchor_login(self) -> Login | None:
        """The first login configured of the operator's, the migrator's and the backup
        role's (each may INSERT into the anchor table); None when there is none. A login
        that is configured but cannot be had now (the local server is down, a secret
        cannot be fetched) raises, so the warning says why."""
        if self.local is not None:
            return self._login(privileges.OPERATOR)
        for role in (privileges.OPERATOR, privileges.MIGRATOR, privileges.BACKUP):
            try:
                return self._login(role)
            except ConfigError:  # this one is not configured
                continue
        return None

    @contextmanager
    def audit(self, action: str, details: dict[str, Any] | None = None) -> Iterator[Entry]:
        """Record ``action`` in the environment's audit trail (started, then ok/failed)."""
        from ptool_ops import audit

        with audit.record(self.audit_trail, action, details) as entry:
            yield entry

    @property
    def pg_bin_dir(self) -> Path | None:
        return self.settings.pg_bin_dir
