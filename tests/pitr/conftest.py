"""A local environment that archives its WAL with ``ptool-ops wal push`` (one per module:
point-in-time tests share its archive and base backups, in the order they are written)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.local.env import LocalEnvironment
from tests.conftest import Cli, add_canaries, superuser_logins


@dataclass
class PitrEnv:
    root: Path
    env: LocalEnvironment

    @property
    def local(self) -> Path:
        return self.env.paths.root

    @property
    def repo(self) -> Path:
        return self.env.paths.repo

    @property
    def restores(self) -> Path:
        return self.root / "restores"

    def owner(self, dbname: str = "booking") -> psycopg.Connection[Any]:
        """booking_owner, as the application's writes would come (BYPASSRLS, as on Neon);
        in ``postgres``, where a self-managed server's operator may switch WAL segments."""
        url = self.env.facts.role_url(privileges.OWNER, dbname)
        return psycopg.connect(url, autocommit=True)

    def switch_wal(self) -> None:
        with self.owner("postgres") as conn:
            conn.execute("SELECT pg_switch_wal()")

    def wait_archived(self, timeout: float = 30) -> None:
        """Switch the WAL segment and wait until the archiver has it (PostgreSQL's own
        counters; a switch with nothing written closes none: then the one before)."""
        deadline = time.monotonic() + timeout
        with self.owner("postgres") as conn:
            closed = conn.execute("SELECT pg_walfile_name(pg_switch_wal() - 1)").fetchone()
            assert closed is not None
            while time.monotonic() < deadline:
                row = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
                if row and row[0] and row[0] >= closed[0]:
                    return
                time.sleep(0.2)
        raise AssertionError("the archiver did not catch up")

    def configure(self, cli: Cli) -> Cli:
        cli.write_config(f'[environments.local]\nlocal_dir = "{self.local}"\n')
        return cli


@pytest.fixture(scope="module")
def pitr_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PitrEnv]:
    root = tmp_path_factory.mktemp("pitr")
    env = LocalEnvironment(root / "local")
    env.up(api=False)
    creds = env.facts.secrets()
    assert creds is not None
    add_canaries(*creds.values())
    yield PitrEnv(root, env)
    for copy in sorted(root.glob("restores/*/pgdata")):
        from ptool_ops.local.cluster import LocalServer

        LocalServer(copy.parent).stop("immediate")
    env.down()
    logs = [env.paths.log, *root.glob("restores/*/log/server.log")]
    bad = [line for log in logs for line in superuser_logins(log)]
    assert not bad, f"superuser login(s) by the code under test: {bad[0]}"


def wal(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``ptool-ops wal …`` as PostgreSQL runs it: its own process, exit code and stderr."""
    return subprocess.run(
        [sys.executable, "-I", "-m", "ptool_ops", "wal", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
