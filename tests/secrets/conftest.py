"""A local environment with its stand-in API (one per module: rotation tests follow each
other on the same logins), a prober that logs in the way the consumers do, and a runner of
``ptool-ops`` as its own process (so a test can kill it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.local.env import LocalEnvironment
from tests.conftest import Cli, add_canaries, superuser_logins


@dataclass
class RotationEnv:
    root: Path
    env: LocalEnvironment

    @property
    def local(self) -> Path:
        return self.env.paths.root

    @property
    def work(self) -> Path:
        return self.root / "work"

    def config(self, extra: str = "") -> str:
        return (
            f'[environments.local]\nlocal_dir = "{self.local}"\n'
            "secret_revoke_grace_s = 0\napi_ready_timeout_s = 10\n" + extra
        )

    def configure(self, cli: Cli, extra: str = "") -> Cli:
        cli.write_config(self.config(extra))
        return cli

    def secrets_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.env.paths.secrets.read_text())
        return doc

    def store(self, name: str = "app-db") -> dict[str, Any]:
        path = self.local / "secret-store" / f"{name}.json"
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def login(self, role: str, password: str) -> bool:
        url = self.url(role, password)
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.OperationalError:
            return False
        return True

    def url(self, role: str, password: str) -> str:
        from urllib.parse import quote

        port = self.env.facts.require_running().port
        return f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:{port}/booking"

    def owner(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.env.facts.role_url(privileges.OWNER), autocommit=True)

    def api_url(self) -> str:
        running = self.env.facts.api()
        assert running is not None
        return running[0]

    def run(self, *args: str, timeout: float = 120) -> subprocess.Popen[str]:
        """``ptool-ops ARGS`` as its own process, in the work directory (its config)."""
        self.work.mkdir(exist_ok=True)
        (self.work / "ptool-ops.toml").write_text(self.config())
        env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
        env["COLUMNS"] = "200"
        return subprocess.Popen(
            [sys.executable, "-m", "ptool_ops", *args],
            cwd=self.work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def canaries(self) -> None:
        """Every password the rotations made: none may show in any output."""
        add_canaries(*self.secrets_doc()["passwords"].values())
        doc = self.secrets_doc()
        add_canaries(doc["api_token"], *doc.get("api_tokens_previous", []))
        add_canaries(*(doc.get("signing_keys") or {}).get("keys", {}).values())
        for path in (self.local / "secret-store").glob("*.json"):
            for version in json.loads(path.read_text()).get("versions", []):
                value = json.loads(version["value"])
                add_canaries(*(value.get(k, "") for k in ("password", "token", "key")))


@pytest.fixture(scope="module")
def rot_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RotationEnv]:
    root = tmp_path_factory.mktemp("rotation")
    env = LocalEnvironment(root / "local", archive=False)
    env.up()
    creds = env.facts.secrets()
    assert creds is not None
    add_canaries(*creds.values())
    yield RotationEnv(root, env)
    env.down()
    bad = superuser_logins(env.paths.log)
    assert not bad, f"superuser login(s) by the code under test: {bad[0]}"


@dataclass
class Prober:
    """Logs in every few milliseconds with what the consumers hold (secrets.json: the role
    the API uses and its password) and asks the API if it is ready: a rotation must leave a
    working credential at every moment."""

    rot: RotationEnv
    interval: float = 0.02
    checks: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def _loop(self) -> None:
        import httpx

        api = self.rot.api_url()
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    doc = self.rot.secrets_doc()
                except (OSError, ValueError) as err:  # atomic writes: never half a file
                    self.failures.append(f"secrets.json unreadable: {type(err).__name__}")
                    continue
                role = doc["app_role"]
                if not self.rot.login(role, doc["passwords"][role]):
                    self.failures.append(f"{role} with the consumers' password did not log in")
                response = client.get(f"{api}/health/ready")
                if response.status_code != 200:
                    self.failures.append(f"API not ready: {response.status_code}")
                self.checks += 1
                time.sleep(self.interval)


@pytest.fixture
def prober(rot_env: RotationEnv) -> Iterator[Prober]:
    probe = Prober(rot_env).start()
    yield probe
    probe.stop()
