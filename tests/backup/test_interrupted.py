"""A backup interrupted mid-upload — the process SIGKILLed, or the S3 endpoint dying under
it — is never listed, and 'prune' leaves no multipart upload behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.backup.conftest import Env

MiB = 1024 * 1024


class Proxy:
    """A TCP proxy to moto that, after ``limit`` request bytes, stalls, dies, or (``slow``)
    passes requests on at ``rate`` bytes per second per connection -- a slow uplink."""

    def __init__(self, upstream: str, limit: int, mode: str, rate: float = 0) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.limit = limit
        self.mode = mode
        self.rate = rate
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
                    if self.tripped.is_set() and self.mode == "slow":
                        time.sleep(len(data) / self.rate)
                    elif self.tripped.is_set():
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


def _spawn(env: Env, *args: str) -> subprocess.Popen[bytes]:
    """``ptool-ops --env t ARGS`` as its own process (its lease names its pid)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
    child_env.update(env.cli.env)
    exe = Path(sys.executable).with_name("ptool-ops")
    return subprocess.Popen(
        [str(exe), "--env", "t", *args],
        cwd=env.cli.cwd,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigkilled_backup_is_not_listed_and_prune_aborts_its_upload(
    big_s3_env: Env, aws_env: str
) -> None:
    env = big_s3_env
    proxy = Proxy(aws_env, limit=7 * MiB, mode="stall")
    env.configure(aws_endpoint_url=proxy.url, repo_part_size_mb="5")
    child = _spawn(env, "backup", "create", "-o", "json")
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
    # its own process: the lease it could not delete (the endpoint is gone) names a pid
    # that has exited once the command has, so prune knows the backup is not running
    env = big_s3_env
    proxy = Proxy(aws_env, limit=7 * MiB, mode="die")
    env.configure(aws_endpoint_url=proxy.url, repo_part_size_mb="5")
    child = _spawn(env, "backup", "create")
    try:
        _, stderr = child.communicate(timeout=120)
    finally:
        proxy.close()
    assert child.returncode == 5, stderr
    assert b"failed while dumping the data" in stderr
    assert b"Traceback" not in stderr
    _after_interruption(env, aws_env)


# --- prune beside a backup that takes longer than the orphan age ------------------------------


def _keys(client: Any, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _slow_backup(env: Env, moto: str) -> tuple[subprocess.Popen[bytes], str, Any, Proxy]:
    """A backup whose big table streams through a slow link; returns once its small objects
    are stored and the big one's multipart upload is under way (and its id)."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    bucket = _bucket(env)
    proxy = Proxy(moto, limit=0, mode="slow", rate=3 * MiB)
    env.configure(aws_endpoint_url=proxy.url, repo_part_size_mb="5")
    child = _spawn(env, "backup", "create", "-o", "json")
    deadline = time.monotonic() + 60
    while True:
        keys = _keys(client, bucket)
        done = {k.rsplit("/", 1)[-1] for k in keys if "/backups/" in k}
        if {"lease.json", "data.pgdump.zst", "post-data.pgdump.zst"} <= done and _uploads(
            client, bucket
        ):
            break
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the backup never got going"
        time.sleep(0.05)
    backup_id = next(k for k in keys if k.endswith("/lease.json")).split("/")[-2]
    assert "table-000.pgdump.zst" not in done  # still streaming
    env.configure(aws_endpoint_url=moto)  # the child read its settings; others go direct
    return child, backup_id, client, proxy


def test_prune_beside_a_backup_streaming_longer_than_the_orphan_age(
    big_s3_env: Env, aws_env: str
) -> None:
    env = big_s3_env
    child, backup_id, client, proxy = _slow_backup(env, aws_env)
    try:
        bucket = _bucket(env)
        before = sorted(_keys(client, bucket))
        pruned = env.run(
            "backup prune --orphans-older-than 0 --keep-last 0 --keep-daily 0 --keep-weekly 0 "
            "--keep-monthly 0 -o json"
        )
        assert pruned.exit_code == 0, pruned.output
        result = pruned.json()
        assert list(result["running"]) == [backup_id]
        assert result["orphans"] == [] and result["partial_uploads"] == []
        assert set(before) <= set(_keys(client, bucket))  # nothing of it was deleted
        assert _uploads(client, bucket)  # its upload is still open
        out, err = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
        proxy.close()
    assert child.returncode == 0, err
    assert json.loads(out)["id"] == backup_id
    listed = env.run("backup list -o json").json()
    assert [b["id"] for b in listed] == [backup_id]
    verified = env.run(f"backup verify {backup_id}")
    assert verified.exit_code == 0, verified.output
    assert not [k for k in _keys(client, bucket) if k.endswith("/lease.json")]


@pytest.mark.parametrize("gone", ["data.pgdump.zst", "lease.json"])
def test_a_backup_whose_objects_went_meanwhile_is_not_listed(
    big_s3_env: Env, aws_env: str, gone: str
) -> None:
    # what a prune of a ptool-ops without leases, or an operator, could do to it
    env = big_s3_env
    child, backup_id, client, proxy = _slow_backup(env, aws_env)
    try:
        bucket = _bucket(env)
        key = next(k for k in _keys(client, bucket) if k.endswith(f"{backup_id}/{gone}"))
        client.delete_object(Bucket=bucket, Key=key)
        _, err = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
        proxy.close()
    assert child.returncode == 8, err
    message = err.decode()
    assert f"backup {backup_id} failed while checking the stored objects" in message
    if gone == "lease.json":
        assert "was replaced or removed by someone else" in message
    else:
        assert "data.pgdump.zst is gone since it was written; the backup is not listed" in message
    assert env.run("backup list -o json").json() == []
