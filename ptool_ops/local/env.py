"""The ``local`` environment: an embedded PostgreSQL with the booking schema, ready to use.

``up`` is idempotent: it initialises what is missing, starts what is stopped, applies pending
booking migrations and makes sure every login role's password matches ``secrets.json``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptool_ops.errors import ConfigError, DatabaseUnavailable
from ptool_ops.local.cluster import DATABASE, SUPERUSER, LocalServer, ServerState, _atomic_write

# every LOGIN role of the booking schema gets a generated password
LOGIN_ROLES = (
    "booking_migrator",
    "booking_app_a",
    "booking_app_b",
    "booking_readonly",
    "booking_backup",
)
APP_ROLES = ("booking_app_a", "booking_app_b")
SECRETS_VERSION = 1


@dataclass
class LocalSecrets:
    """Generated credentials of the local environment, kept in ``secrets.json`` (0600)."""

    passwords: dict[str, str]
    api_token: str
    app_role: str = APP_ROLES[0]  # the login the booking API uses now (rotation alternates)

    @classmethod
    def generate(cls) -> LocalSecrets:
        roles = (SUPERUSER, *LOGIN_ROLES)
        return cls({r: secrets.token_urlsafe(24) for r in roles}, secrets.token_urlsafe(32))

    def values(self) -> list[str]:
        return [*self.passwords.values(), self.api_token]

    def to_json(self) -> str:
        doc = {
            "version": SECRETS_VERSION,
            "passwords": self.passwords,
            "api_token": self.api_token,
            "app_role": self.app_role,
        }
        return json.dumps(doc, indent=2) + "\n"


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
        raise ConfigError(f"{path} is not a ptool-ops secrets file of version {SECRETS_VERSION}.")
    return LocalSecrets(
        dict(doc["passwords"]), str(doc["api_token"]), str(doc.get("app_role", APP_ROLES[0]))
    )


@dataclass
class UpResult:
    started: bool
    port: int
    socket_dir: str
    database: str
    data_dir: str
    applied_migrations: list[str]
    schema_version: str | None
    api_url: str | None = None
    api_started: bool = False
    urls: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalStatus:
    data_dir: str
    server: dict[str, Any]
    database: str
    urls: dict[str, str]
    wal_archive: str
    archived_wal_files: int
    api: dict[str, Any] | None


class LocalEnvironment:
    def __init__(self, local_dir: Path, *, archive: bool = True) -> None:
        self.server = LocalServer(local_dir, archive=archive)
        self.paths = self.server.paths

    # --- secrets -------------------------------------------------------------------------

    def secrets(self) -> LocalSecrets | None:
        return load_secrets(self.paths.secrets)

    def _ensure_secrets(self) -> LocalSecrets:
        existing = self.secrets()
        if existing is not None:
            return existing
        if (self.paths.pgdata / "PG_VERSION").exists():
            raise ConfigError(
                f"{self.paths.secrets} is missing but the database in {self.paths.pgdata} exists, "
                "so its passwords are unknown.",
                hint="Restore the file, or run 'ptool-ops local reset' to start anew.",
            )
        fresh = LocalSecrets.generate()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.paths.secrets, fresh.to_json(), mode=0o600)
        return fresh

    # --- lifecycle -----------------------------------------------------------------------

    def up(
        self,
        *,
        port: int | None = None,
        apply_schema: bool = True,
        api: bool = True,
        api_port: int | None = None,
    ) -> UpResult:
        """Database first, then the schema, then the booking API stand-in (unless ``api``
        is false, as for the test harness's bare server)."""
        from ptool_ops import pg
        from ptool_ops.local import api as local_api

        with self.server.locked():
            creds = self._ensure_secrets()
            started = self.server.start(creds.passwords[SUPERUSER], port)
            with pg.connect(self.server.superuser_url("postgres")) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if not exists:
                    from psycopg import sql

                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
            applied: list[str] = []
            version = None
            if apply_schema:
                applied = self._migrate()
            with pg.connect(self.server.superuser_url(DATABASE)) as conn:
                if apply_schema:
                    from ptool_ops.booking.schema import schema_version

                    version = schema_version(conn)
                set_passwords(conn, creds.passwords)
            self._write_pgpass(creds)
            state = self.server.state()
            assert state.port is not None and state.socket_dir is not None
            api_process, api_started = (
                local_api.start(self.paths, state.port, api_port) if api else (None, False)
            )
            return UpResult(
                started=started,
                port=state.port,
                socket_dir=str(state.socket_dir),
                database=DATABASE,
                data_dir=str(self.paths.pgdata),
                applied_migrations=applied,
                schema_version=version,
                api_url=api_process.url if api_process else None,
                api_started=api_started,
                urls=self.urls(),
            )

    def _migrate(self) -> list[str]:
        """Apply the booking migrations with the migration runner (lint, run lock, verify,
        invariants). A fresh database gets no backup point (there is nothing to lose); one
        that already has migrations gets a logical backup into the local repository first.
        No API readiness check: the API starts after this."""
        from ptool_ops.audit import actor
        from ptool_ops.migrate.runner import Runner, RunOptions
        from ptool_ops.settings import EnvironmentSettings

        settings = EnvironmentSettings(
            name="local",
            kind="local",
            local_dir=self.paths.root,
            audit_dir=self.paths.root.parent / "audit",
        )
        run = Runner(
            self.server.superuser_url(DATABASE),
            options=RunOptions(actor=actor()),
            settings=settings,
            take_backup=True,
            backup_if_fresh=False,
            check_api=False,
        ).up()
        return [m.version for m in run.migrations]

    def down(self) -> bool:
        """Stop the API, then the database; False when neither was running."""
        from ptool_ops.local import api as local_api

        with self.server.locked():
            api_stopped = local_api.stop(self.paths)
            return self.server.stop() or api_stopped

    def reset(self) -> None:
        """Delete every byte of the local environment (the caller has confirmed)."""
        from ptool_ops.local import api as local_api

        with self.server.locked():
            local_api.stop(self.paths)
            self.server.destroy()

    def api(self) -> tuple[str, str] | None:
        """URL and ops token of the running API stand-in, or None when it is not running."""
        from ptool_ops.local import api as local_api

        process = local_api.running(self.paths)
        creds = self.secrets()
        if process is None or creds is None:
            return None
        return process.url, creds.api_token

    # --- facts ---------------------------------------------------------------------------

    def state(self) -> ServerState:
        return self.server.state()

    def database_url(self, dbname: str = DATABASE) -> str:
        """What the toolkit itself uses: the local superuser on the Unix socket."""
        return self.server.superuser_url(dbname)

    def role_url(self, role: str, dbname: str = DATABASE) -> str:
        """A TCP URL with password for ``role`` — a secret: for connecting, never for printing."""
        creds = self.secrets()
        if creds is None or role not in creds.passwords:
            known = ", ".join(sorted(creds.passwords)) if creds else "none yet"
            raise ConfigError(
                f"the local environment has no password for role {role!r} (roles: {known})."
            )
        return self.server.tcp_url(role, creds.passwords[role], dbname)

    def urls(self) -> dict[str, str]:
        """Printable URLs (no passwords): psql finds the passwords in the pgpass file."""
        state = self.server.state()
        if state.port is None:
            return {}
        out = {
            SUPERUSER: f"postgresql://{SUPERUSER}@/{DATABASE}?host={state.socket_dir}"
            f"&port={state.port}",
        }
        for role in LOGIN_ROLES:
            out[role] = f"postgresql://{role}@127.0.0.1:{state.port}/{DATABASE}"
        return out

    def status(self) -> LocalStatus:
        state = self.server.state()
        archived = (
            sum(1 for _ in self.paths.wal_archive.iterdir())
            if self.paths.wal_archive.is_dir()
            else 0
        )
        return LocalStatus(
            data_dir=str(self.paths.pgdata),
            server=state.to_dict(),
            database=DATABASE,
            urls=self.urls() if state.running else {},
            wal_archive=str(self.paths.wal_archive),
            archived_wal_files=archived,
            api=self._api_state(),
        )

    def _api_state(self) -> dict[str, Any] | None:
        from ptool_ops.local import api as local_api

        process = local_api.running(self.paths)
        return {"url": process.url, "pid": process.pid} if process else None

    def _write_pgpass(self, creds: LocalSecrets) -> None:
        port = self.server.state().port

        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace(":", "\\:")

        lines = [f"127.0.0.1:{port}:*:{esc(r)}:{esc(p)}" for r, p in creds.passwords.items()]
        _atomic_write(self.paths.pgpass, "\n".join(lines) + "\n", mode=0o600)


def set_passwords(conn: Any, passwords: dict[str, str]) -> None:
    """Make each existing role's password match ``passwords`` (superuser connection)."""
    from psycopg import sql

    existing = {
        row[0]
        for row in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(passwords),)
        )
    }
    for role, password in passwords.items():
        if role in existing:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )


def local_secret_values(local_dir: Path) -> list[str]:
    """Secrets of the local environment, for the redactor (empty when there are none yet)."""
    try:
        creds = load_secrets(local_dir / "secrets.json")
    except ConfigError:
        return []
    return creds.values() if creds else []


def require_running(env: LocalEnvironment) -> None:
    if not env.state().running:
        raise DatabaseUnavailable(
            f"the local database is not running (data in {env.paths.pgdata}).",
            hint="Start it with 'ptool-ops local up'.",
        )
