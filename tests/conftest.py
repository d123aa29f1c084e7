"""Test harness: real PostgreSQL, real moto server, real CLI, production's roles.

* ``pg_server`` — one embedded PostgreSQL 18 per test session, set up by the same code as
  ``ptool-ops local up`` (Neon's platform roles, the stack roles, scram over TCP).
* ``booking_db`` / ``empty_db`` — a fresh database per test, owned by ``booking_owner`` as
  on Neon, cloned from a template that the migration runner migrated as
  ``booking_migrator`` (cloning is a file copy: fast). ``db.url(ROLE)`` is a login as one
  of the privilege model's roles; ``db.connect()`` is the harness's own superuser session
  for setting up and inspecting, never for the code under test.
* ``moto_server`` — moto's ThreadedMotoServer on a free loopback port (S3, Secrets Manager).
* ``cli`` — runs ``ptool-ops`` through Typer's CliRunner with a clean ``PTOOL_*`` environment.
* ``CANARY`` — a secret value planted in settings by the suite; the session fails if any
  test's output contained it (see ``pytest_runtest_logreport``); every database password
  and the backup key of the suite count as canaries too.
* the superuser guard — the server logs every login with its role and application_name;
  a test fails when anything but ``local up/down/reset`` (server set-up) or the harness
  logged in as the superuser while it ran.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from ptool_ops import pg, privileges
from ptool_ops.booking import MIGRATIONS_DIR
from ptool_ops.local import SUPERUSER
from ptool_ops.local.cluster import SETUP_APPLICATION
from ptool_ops.local.env import LocalEnvironment

TEMPLATE = "ptool_test_template"
EMPTY_TEMPLATE = "ptool_test_empty"
CANARY = "canary-Secret-7f3a9c1e5b"
#: application_name of the harness's own superuser sessions (set-up and inspection)
HARNESS = "ptool-tests harness"
OWNER = privileges.OWNER
MIGRATOR = privileges.MIGRATOR
BACKUP = privileges.BACKUP
_counter = itertools.count()


def admin_url(server: LocalEnvironment, dbname: str) -> str:
    """The harness's superuser session on ``dbname`` (Unix socket, marked as the harness)."""
    state = server.state()
    return (
        f"postgresql://{SUPERUSER}@/{dbname}?host={state.socket_dir}&port={state.port}"
        f"&application_name={quote(HARNESS)}"
    )


@dataclass
class TestDatabase:
    __test__ = False  # not a test class
    name: str
    admin_url: str
    server: LocalEnvironment

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """The harness's superuser session: for setting up and inspecting only."""
        return psycopg.connect(self.admin_url, autocommit=True, **kwargs)

    def url(self, role: str) -> str:
        """A login as ``role`` (scram-sha-256 over 127.0.0.1): what commands use."""
        return self.server.facts.role_url(role, self.name)

    def role_url(self, role: str) -> str:
        return self.url(role)


def create_database(server: LocalEnvironment, name: str, template: str | None = None) -> None:
    """A database owned by booking_owner, as Neon makes them, with the template's grants."""
    from ptool_ops import pg

    with psycopg.connect(admin_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}{}").format(
                sql.Identifier(name),
                sql.Identifier(OWNER),
                sql.SQL(" TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(template))
                if template
                else sql.SQL(""),
            )
        )
        if template:
            pg.copy_database_grants(conn, template, name)
    if not template:
        with psycopg.connect(server.facts.role_url(OWNER, name), autocommit=True) as conn:
            for statement in privileges.database_grant_statements(name):
                conn.execute(statement)


def drop_database(server: LocalEnvironment, name: str) -> None:
    with psycopg.connect(admin_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def reset_passwords(server: LocalEnvironment) -> None:
    """Give every stack login the password of the local secrets again (as the owner, who
    administers them), after a test changed one."""
    creds = server.facts.secrets()
    assert creds is not None
    with psycopg.connect(server.facts.role_url(OWNER), autocommit=True) as conn:
        for r in privileges.STACK_ROLES:
            if r.login:
                pg.set_password(conn, r.name, creds.passwords[r.name])


def migrate(url: str) -> None:
    """Apply the booking migrations with the migration runner (no backup point, no API)."""
    from ptool_ops.migrate.runner import Runner, RunOptions

    Runner(url, directory=MIGRATIONS_DIR, options=RunOptions(actor="tests")).up()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    root = tmp_path_factory.mktemp("pg") / "local"
    env = LocalEnvironment(root, archive=False)
    env.up(apply_schema=False, api=False)
    creds = env.facts.secrets()
    assert creds is not None
    add_canaries(*creds.values())
    create_database(env, TEMPLATE)
    create_database(env, EMPTY_TEMPLATE)
    migrate(env.facts.role_url(MIGRATOR, TEMPLATE))
    yield env
    env.server.stop("immediate")


def _clone(server: LocalEnvironment, template: str) -> Iterator[TestDatabase]:
    name = f"t_{os.getpid()}_{next(_counter)}"
    create_database(server, name, template)
    yield TestDatabase(name, admin_url(server, name), server)
    drop_database(server, name)


@pytest.fixture
def booking_db(pg_server: LocalEnvironment) -> Iterator[TestDatabase]:
    yield from _clone(pg_server, TEMPLATE)


@pytest.fixture
def empty_db(pg_server: LocalEnvironment) -> Iterator[TestDatabase]:
    yield from _clone(pg_server, EMPTY_TEMPLATE)


# --- the superuser guard ---------------------------------------------------------------------

_AUTHORIZED = re.compile(
    r"connection authorized: user=(?P<user>\S+) database=(?P<db>\S+)"
    r"(?: application_name=(?P<app>.*?))?\s*$"
)


def _log_since(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def superuser_logins(log: Path, offset: int = 0) -> list[str]:
    """Superuser logins in a server log (from ``offset``) by anything but server set-up or
    the harness."""
    text = _log_since(log, offset)
    found = []
    for line in text.splitlines():
        match = _AUTHORIZED.search(line)
        if match is None or match["user"] != SUPERUSER:
            continue
        app = match["app"] or ""
        if app not in {f"{SETUP_APPLICATION}local up", HARNESS}:
            found.append(line.strip())
    return found


@pytest.fixture(autouse=True)
def _no_superuser_sessions(request: pytest.FixtureRequest) -> Iterator[None]:
    if "pg_server" not in request.fixturenames:
        yield
        return
    server: LocalEnvironment = request.getfixturevalue("pg_server")
    log = server.paths.log
    offset = log.stat().st_size if log.exists() else 0
    yield
    # the server logs DDL: a password sent in plain text would be on record
    leaked = [c for c in (CANARY, *_canaries) if c in _log_since(log, offset)]
    if leaked:
        pytest.fail(
            f"a secret ({leaked[0][:4]}…) appeared in the server log during {request.node.nodeid}",
            pytrace=False,
        )
    bad = superuser_logins(log, offset)
    if bad:
        pytest.fail(
            f"{len(bad)} superuser login(s) by the code under test (only local up/down/reset"
            f" may log in as {SUPERUSER}): {bad[0]}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto in server mode on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and region for boto3 against the moto server (never real AWS)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


class Cli:
    """Runs ``ptool-ops`` in-process with its own working directory and environment."""

    def __init__(self, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cwd = cwd
        # every run carries the canary as a secret setting; no output may ever show it
        self.env: dict[str, str] = {"PTOOL_API_TOKEN": CANARY}
        self._monkeypatch = monkeypatch

    def write_config(self, text: str) -> Path:
        path = self.cwd / "ptool-ops.toml"
        path.write_text(text)
        return path

    def __call__(self, *args: str, input: str | None = None) -> CliResult:
        from ptool_ops.cli.main import app

        argv = shlex.split(args[0]) if len(args) == 1 else list(args)
        self._monkeypatch.chdir(self.cwd)
        for key in [k for k in os.environ if k.startswith("PTOOL_")]:
            self._monkeypatch.delenv(key)
        # a worker's or another test's COLUMNS would make rich assume a terminal
        self._monkeypatch.delenv("COLUMNS", raising=False)
        for key, value in self.env.items():
            self._monkeypatch.setenv(key, value)
        result = CliRunner().invoke(app, argv, input=input, catch_exceptions=False)
        out = CliResult(result.exit_code, result.stdout, result.stderr)
        _seen_output.append(out.output)
        return out

    def audit_events(self, env: str | None = None, *, finished: bool = True) -> list[Any]:
        """The environment's audit trail as ``audit log`` reads it (oldest first); by
        default only the finished events (ok / failed), one per operation."""
        argv = ["audit", "log", "--last", "1000000", "-o", "json"]
        result = self(*(["--env", env] if env else []), *argv)
        assert result.exit_code == 0, result.output
        events = result.json()
        return [e for e in events if e["outcome"] != "started"] if finished else events


def trail_events(env: Any, *, finished: bool = True) -> list[Any]:
    """An :class:`~ptool_ops.environment.Environment`'s audit events (oldest first)."""
    events = list(env.audit_trail.events())
    return [e for e in events if e["outcome"] != "started"] if finished else events


def block_audit_event(trail: Path, seq: int) -> Path:
    """Event ``seq`` of the trail stored in directory ``trail`` cannot be written: a
    directory holds its name (root ignores file modes, so this is how a test makes a write
    fail); every earlier block there is lifted."""
    for old in trail.glob("*.json"):
        if old.is_dir():
            old.rmdir()
    path = trail / f"{seq:010d}.json"
    path.mkdir(parents=True)
    return path


def block_next_finish(trail: Path) -> Path:
    """The next command's ``started`` event is stored, its ``ok``/``failed`` one is not."""
    stored = [p for p in trail.glob("*.json") if p.is_file() and p.name != "head.json"]
    return block_audit_event(trail, len(stored) + 2)


_seen_output: list[str] = []


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    work = tmp_path / "work"
    work.mkdir()
    yield Cli(work, monkeypatch)
    local = work / ".ptool" / "local"
    if (local / "pgdata").exists():  # a test that brought the local environment up
        from ptool_ops.local.facts import local_secret_values

        add_canaries(*local_secret_values(local))
        LocalEnvironment(local).down()
        bad = superuser_logins(local / "log" / "server.log")
        if bad:
            pytest.fail(
                f"{len(bad)} superuser login(s) by the code under test: {bad[0]}", pytrace=False
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "teardown":
        return
    captured = "".join(_seen_output) + "".join(content for _, content in report.sections)
    _seen_output.clear()
    for canary in (CANARY, *_canaries):
        if canary in captured:
            report.outcome = "failed"
            report.longrepr = (
                f"a canary secret ({canary[:4]}…) appeared in the output of {item.nodeid}"
            )
            return


#: every password of the suite's servers and the backup keys of the tests
_canaries: set[str] = set()


def add_canaries(*values: str) -> None:
    _canaries.update(v for v in values if len(v) >= 8)


@contextmanager
def local_server(
    root: Path, *, archive: bool = True, api: bool = True
) -> Iterator[LocalEnvironment]:
    """A local environment of a test module's own in ``root`` (what ``local up`` makes),
    its passwords counted as canaries; stopped afterwards."""
    env = LocalEnvironment(root, archive=archive)
    env.up(api=api)
    creds = env.facts.secrets()
    assert creds is not None
    add_canaries(*creds.values())
    try:
        yield env
    finally:
        env.down()
