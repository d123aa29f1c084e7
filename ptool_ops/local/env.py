"""``local up / down / reset``: the embedded PostgreSQL set up as Neon sets up a project.

``up`` is idempotent and plays each party's part with that party's privileges:

1. **the platform** (Neon's control plane; here the embedded superuser on the Unix socket,
   the only place it is used): start the server, create ``neon_superuser`` and the owner
   role ``booking_owner`` (a member of it), the database ``booking`` owned by it
   (:mod:`ptool_ops.privileges`);
2. **the stack** (Pulumi on Neon; here ``up`` itself), logged in as ``booking_owner`` over
   TCP with scram: the booking roles, memberships, database grants and passwords
   (:func:`ptool_ops.privileges.provision`);
3. **CI**, logged in as ``booking_migrator``: the pending booking migrations, by the
   migration runner (lint, run lock, verify + invariants; a backup point when the
   database already had migrations; no API check, the API starts afterwards);
4. the booking API stand-in, as ``booking_app_a``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ptool_ops import privileges
from ptool_ops.errors import ConfigError
from ptool_ops.files import atomic_write
from ptool_ops.local import SUPERUSER
from ptool_ops.local.cluster import DATABASE, LocalPaths, LocalServer, ServerState
from ptool_ops.local.facts import LocalFacts, LocalSecrets

if TYPE_CHECKING:
    from ptool_ops.migrate.runner import BackupStep


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


class LocalEnvironment:
    def __init__(
        self,
        local_dir: Path,
        *,
        archive: bool = True,
        repo_url: str | None = None,
        backup_key: bytes | None = None,
    ) -> None:
        """``archive``: the server archives its WAL with ``ptool-ops wal push`` into the
        repository (``repo_url``, default ``<local_dir>/repo``), encrypted with
        ``backup_key`` when one is set."""
        self.server = LocalServer(local_dir)
        self.paths = self.server.paths
        self.facts = LocalFacts(self.paths.root)
        self.repo_url = repo_url or f"file://{self.paths.repo}"
        self._backup_key = backup_key
        if archive:
            from ptool_ops.pitr.commands import archive_command

            self.server.archive_command = archive_command(
                self.repo_url, key_file=self.key_file if backup_key else None
            )

    @property
    def key_file(self) -> Path:
        """The backup key for the server's archive and restore commands (0600, the
        server's own): a file, so the key never stands in a process's arguments."""
        return self.paths.root / "wal.key"

    def _prepare_archive(self) -> None:
        """Let the server's archive_command write the WAL archive of a file repository
        (its part only: ``pitr/wal`` and the restored clusters' ``pitr/restores``)."""
        if self.server.archive_command is None:
            return
        if self._backup_key is not None:
            self.server.write_key_file(self.key_file, self._backup_key)
        if not self.repo_url.startswith("file://"):
            return
        from ptool_ops.repo.file import GUARD, FileStorage

        root = FileStorage.from_url(self.repo_url).root
        root.mkdir(parents=True, exist_ok=True)
        for part in ("pitr", "pitr/wal", "pitr/restores"):
            self.server.share_with_server(root / part, mode=0o755 if part == "pitr" else 0o700)
        guard = root / GUARD
        guard.touch(mode=0o600, exist_ok=True)
        self.server.give_to_server(guard)

    def state(self) -> ServerState:
        return self.server.state()

    def _ensure_secrets(self) -> LocalSecrets:
        existing = self.facts.secrets()
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
        atomic_write(self.paths.secrets, fresh.to_json(), mode=0o600)
        return fresh

    def up(
        self,
        *,
        port: int | None = None,
        apply_schema: bool = True,
        api: bool = True,
        api_port: int | None = None,
        stack: bool = True,
    ) -> UpResult:
        """Platform, stack, migrations, API (``apply_schema``/``api`` false: the test
        harness's bare server with the roles but no schema; ``stack`` false as well: a
        server as a new Neon project is, with only the platform's roles)."""
        from ptool_ops import pg
        from ptool_ops.local import api as local_api

        with self.server.locked():
            creds = self._ensure_secrets()
            self._prepare_archive()
            started = self.server.start(creds.passwords[SUPERUSER], port)
            self._platform(creds)
            if stack:
                with pg.connect(self.facts.role_url(privileges.OWNER)) as owner:
                    owner.execute(
                        "SELECT set_config('application_name', 'ptool-ops local up', false)"
                    )
                    privileges.provision(owner, self._stack_passwords(creds), DATABASE)
            applied: list[str] = []
            version = None
            if apply_schema:
                applied, version = self._migrate()
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
                urls=self.facts.urls(),
            )

    def _platform(self, creds: LocalSecrets) -> None:
        """What Neon does for a project: its roles, the owner's password, the database."""
        from psycopg import sql

        from ptool_ops import pg

        with pg.connect(self.server.superuser_url("postgres", purpose="local up")) as conn:
            made_before = conn.execute(
                "SELECT datdba::regrole::text FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if made_before is not None and made_before[0] == SUPERUSER:
                raise ConfigError(
                    f"the local database in {self.paths.pgdata} was made by a ptool-ops before"
                    " the deployed-roles privilege model (its owner is the superuser).",
                    hint="Run 'ptool-ops local reset' and 'ptool-ops local up' to make it anew.",
                )
            for statement in privileges.platform_role_statements():
                conn.execute(statement)
            pg.set_password(conn, privileges.OWNER, creds.passwords[privileges.OWNER])
            if made_before is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(DATABASE), sql.Identifier(privileges.OWNER)
                    )
                )
            for statement in privileges.platform_database_statements(DATABASE):
                conn.execute(statement)
            # a self-managed server's administrator's part (point-in-time restore), in the
            # maintenance database: a grant on a pg_catalog function in 'booking' would be
            # in every dump of it, and only a superuser could restore that
            for statement in privileges.self_managed_statements():
                conn.execute(statement)

    @staticmethod
    def _stack_passwords(creds: LocalSecrets) -> dict[str, str]:
        return {r.name: creds.passwords[r.name] for r in privileges.STACK_ROLES if r.login}

    def _migrate(self) -> tuple[list[str], str | None]:
        """The booking migrations as booking_migrator, by the migration runner. A fresh
        database gets no backup point (there is nothing to lose); one that already has
        migrations gets a logical backup into the local repository first."""
        from ptool_ops import pg
        from ptool_ops.audit import actor
        from ptool_ops.booking import MIGRATIONS_DIR
        from ptool_ops.migrate import history
        from ptool_ops.migrate.runner import Runner, RunOptions

        url = self.facts.role_url(privileges.MIGRATOR)
        run = Runner(
            url,
            directory=MIGRATIONS_DIR,
            options=RunOptions(actor=actor()),
            backup=self._backup_step(),
            backup_if_fresh=False,
        ).up()
        with pg.connect(url) as conn:
            version = history.schema_version(conn)
        return [m.version for m in run.migrations], version

    def _backup_step(self) -> BackupStep:
        from ptool_ops.environment import Environment
        from ptool_ops.migrate.backup_point import EnvironmentBackupStep
        from ptool_ops.settings import EnvironmentSettings

        settings = EnvironmentSettings(
            name="local",
            kind="local",
            local_dir=self.paths.root,
            audit_dir=self.paths.root.parent / "audit",
        )
        return EnvironmentBackupStep(Environment(settings))

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

    def _write_pgpass(self, creds: LocalSecrets) -> None:
        write_pgpass(self.paths, self.server.state().port, creds)


def write_pgpass(paths: LocalPaths, port: int | None, creds: LocalSecrets) -> None:
    """The passwords in libpq's passfile format, for psql (0600)."""

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    lines = [
        f"127.0.0.1:{port}:*:{esc(r)}:{esc(p)}"
        for r, p in creds.passwords.items()
        if r != SUPERUSER
    ]
    atomic_write(paths.pgpass, "\n".join(lines) + "\n", mode=0o600)


def write_secrets(paths: LocalPaths, port: int | None, creds: LocalSecrets) -> None:
    """Replace ``secrets.json`` (atomically, 0600) and the pgpass file with ``creds``: what a
    rotation's local consumer does, as a deployment's variables are set elsewhere."""
    atomic_write(paths.secrets, creds.to_json(), mode=0o600)
    write_pgpass(paths, port, creds)
