"""A real stand-in API process per test, on its own database and a private secrets file."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ptool_ops.booking.api import BookingApi
from ptool_ops.local.env import LocalEnvironment

from ..conftest import TestDatabase, reset_passwords


@dataclass
class Standin:
    url: str
    ops_token: str
    secrets: Path
    log: Path
    proc: subprocess.Popen[bytes]
    db: TestDatabase

    def client(self, **kwargs: Any) -> BookingApi:
        return BookingApi(self.url, SecretStr(self.ops_token), **kwargs)

    def secrets_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.secrets.read_text())
        return doc

    def write_secrets(self, doc: dict[str, Any]) -> None:
        tmp = self.secrets.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.secrets)

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def standin(
    booking_db: TestDatabase, pg_server: LocalEnvironment, tmp_path: Path
) -> Iterator[Standin]:
    secrets = tmp_path / "secrets.json"
    shutil.copy(pg_server.paths.secrets, secrets)
    port = _free_port()
    log = tmp_path / "api.log"
    db_port = pg_server.state().port
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ptool_ops.booking.standin",
                "--secrets",
                str(secrets),
                "--db-port",
                str(db_port),
                "--db-name",
                booking_db.name,
                "--port",
                str(port),
            ],
            stdout=handle,
            stderr=handle,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "stand-in did not start"
        time.sleep(0.1)
    ops_token = json.loads(secrets.read_text())["api_token"]
    yield Standin(url, ops_token, secrets, log, proc, booking_db)
    proc.terminate()
    proc.wait(15)
    # roles are cluster-wide: put back the passwords every other test expects
    reset_passwords(pg_server)
