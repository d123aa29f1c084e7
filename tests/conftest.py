"""Test harness: real PostgreSQL, real moto server, real CLI.

* ``pg_server`` — one embedded PostgreSQL 18 per test session, started by the same code as
  ``ptool-ops local up`` (TCP on 127.0.0.1 with scram-sha-256, superuser trust on the socket).
* ``booking_db`` / ``empty_db`` — a fresh database per test, cloned from a template that has
  the booking migrations applied (cloning is a file copy: fast).
* ``moto_server`` — moto's ThreadedMotoServer on a free loopback port (S3, Secrets Manager).
* ``cli`` — runs ``ptool-ops`` through Typer's CliRunner with a clean ``PTOOL_*`` environment.
* ``CANARY`` — a secret value planted in settings by the suite; the session fails if any
  test's output contained it (see ``pytest_runtest_logreport``).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from ptool_ops.local.env import LocalEnvironment, set_passwords

TEMPLATE = "ptool_test_template"
EMPTY_TEMPLATE = "ptool_test_empty"
CANARY = "canary-Secret-7f3a9c1e5b"
_counter = itertools.count()


@dataclass
class TestDatabase:
    __test__ = False  # not a test class
    name: str
    conninfo: str
    server: LocalEnvironment

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, autocommit=True, **kwargs)

    def role_url(self, role: str) -> str:
        """TCP URL with password for ``role`` (scram-sha-256 over 127.0.0.1)."""
        return self.server.role_url(role, self.name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    root = tmp_path_factory.mktemp("pg") / "local"
    env = LocalEnvironment(root, archive=False)
    env.up(apply_schema=False, api=False)
    from ptool_ops.booking.schema import apply_pending

    creds = env.secrets()
    assert creds is not None
    with psycopg.connect(env.database_url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMPTY_TEMPLATE)))
    with psycopg.connect(env.database_url(TEMPLATE), autocommit=True) as conn:
        apply_pending(conn)
        set_passwords(conn, creds.passwords)
    yield env
    env.server.stop("immediate")


def _clone(server: LocalEnvironment, template: str) -> Iterator[TestDatabase]:
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server.database_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    yield TestDatabase(name, server.database_url(name), server)
    with psycopg.connect(server.database_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def booking_db(pg_server: LocalEnvironment) -> Iterator[TestDatabase]:
    yield from _clone(pg_server, TEMPLATE)


@pytest.fixture
def empty_db(pg_server: LocalEnvironment) -> Iterator[TestDatabase]:
    yield from _clone(pg_server, EMPTY_TEMPLATE)


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
        for key, value in self.env.items():
            self._monkeypatch.setenv(key, value)
        result = CliRunner().invoke(app, argv, input=input, catch_exceptions=False)
        out = CliResult(result.exit_code, result.stdout, result.stderr)
        _seen_output.append(out.output)
        return out


_seen_output: list[str] = []


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    work = tmp_path / "work"
    work.mkdir()
    yield Cli(work, monkeypatch)
    local = work / ".ptool" / "local"
    if (local / "pgdata").exists():  # a test that brought the local environment up
        LocalEnvironment(local).down()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "teardown":
        return
    captured = "".join(_seen_output) + "".join(content for _, content in report.sections)
    _seen_output.clear()
    if CANARY in captured:
        report.outcome = "failed"
        report.longrepr = f"the canary secret {CANARY[:6]}… appeared in the output of {item.nodeid}"
