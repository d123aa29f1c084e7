"""A backup interrupted mid-upload — the process SIGKILLed, or the S3 endpoint dying under
it — is never listed, and 'prune' leaves no multipart upload behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.backup.conftest import Env

MiB = 1024 * 1024


class Proxy:
    """A TCP proxy to moto that, after ``limit`` request bytes, stalls or dies."""

    def __init__(self, upstream: str, limit: int, mode: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.limit = limit
        self.mode = mode
        self.sent = 0
        self.tripped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.tripped.is_set() and self.mode == "die":
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                        if self.sent >= self.limit:
                            self.tripped.set()
                    if self.tripped.is_set():
                        if self.mode == "die":
                            self.close()
                            return
                        threading.Event().wait(120)  # stall: hold the upload open
                        return
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def big_s3_env(s3_env: Env) -> Env:
    """~25 MB of hex text (about 12 MB after zstd): several 5 MiB parts."""
    with s3_env.db.connect() as conn:
        conn.execute(
            "CREATE TABLE public.filler AS SELECT i, md5(random()::text) || md5(random()::text) "
            "AS pad FROM generate_series(1, 400000) i"
        )
    return s3_env


def _uploads(client: Any, bucket: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _bucket(env: Env) -> str:
    return env.repo_url.removeprefix("s3://").split("/")[0]


def _after_interruption(env: Env, moto: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    bucket = _bucket(env)
    assert _uploads(client, bucket), "the interrupted upload should still be open"
    env.configure(aws_endpoint_url=moto)
    listed = env.run("backup list -o json")
    assert listed.exit_code == 0, listed.output
    assert listed.json() == []
    dry = env.run("backup prune --orphans-older-than 0 --dry-run -o json").json()
    assert dry["partial_uploads"] and dry["deleted"] == []
    assert _uploads(client, bucket)
    pruned = env.run("backup prune --orphans-older-than 0 -o json")
    assert pruned.exit_code == 0, pruned.output
    assert _uploads(client, bucket) == []
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert [k for k in keys if "/backups/" in k] == []


def test_sigkilled_backup_is_not_listed_and_prune_aborts_its_upload(
    big_s3_env: Env, aws_env: str
) -> None:
    env = big_s3_env
    proxy = Proxy(aws_env, limit=7 * MiB, mode="stall")
    env.configure(aws_endpoint_url=proxy.url, repo_part_size_mb="5")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
    child_env.update(env.cli.env)
    exe = Path(sys.executable).with_name("ptool-ops")
    child = subprocess.Popen(
        [str(exe), "--env", "t", "backup", "create", "-o", "json"],
        cwd=env.cli.cwd,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proxy.tripped.wait(60), "the backup never reached the S3 endpoint"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        proxy.close()
    assert child.returncode == -signal.SIGKILL
    _after_interruption(env, aws_env)


def test_s3_endpoint_dying_mid_upload_fails_cleanly(big_s3_env: Env, aws_env: str) -> None:
    env = big_s3_env
    proxy = Proxy(aws_env, limit=7 * MiB, mode="die")
    env.configure(aws_endpoint_url=proxy.url, repo_part_size_mb="5")
    try:
        result = env.run("backup create")
    finally:
        proxy.close()
    assert result.exit_code == 5, result.output
    assert "failed while dumping the data" in result.stderr
    assert "Traceback" not in result.output
    _after_interruption(env, aws_env)
