"""Compare-and-swap on both backends, leases, and the prune lock: two prunes at once, an
abandoned lock taken over, a running backup's lease honoured by prune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ptool_ops.backup.models import PRUNE_LOCK, lease_key
from ptool_ops.errors import Conflict
from ptool_ops.repo.file import FileStorage
from ptool_ops.repo.lease import Lease, machine_id, read_holder
from ptool_ops.repo.s3 import S3Storage
from ptool_ops.repo.storage import Storage
from tests.backup.conftest import Env

MiB = 1024 * 1024
_buckets = iter(range(10_000))


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return FileStorage(tmp_path / "repo")
    s3_bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("aws_env")
    bucket = f"lease-{os.getpid()}-{next(_buckets)}"
    s3_bucket(bucket)
    return S3Storage(bucket, "pre", part_size=5 * MiB, endpoint_url=endpoint)


def test_compare_and_swap(storage: Storage) -> None:
    first = storage.create_exclusive("locks/x.json", b"one")
    assert first is not None
    assert storage.create_exclusive("locks/x.json", b"two") is None  # someone was first
    found = storage.read_versioned("locks/x.json")
    assert found is not None and found.data == b"one" and found.tag == first
    second = storage.replace_if("locks/x.json", b"three", first)
    assert second is not None and second != first
    assert storage.replace_if("locks/x.json", b"four", first) is None  # stale tag
    assert storage.delete_if("locks/x.json", first) is False
    assert storage.get_bytes("locks/x.json") == b"three"
    assert storage.delete_if("locks/x.json", second) is True
    assert storage.read_versioned("locks/x.json") is None
    assert storage.replace_if("locks/x.json", b"five", second) is None  # gone
    assert [o.key for o in storage.list("")] == []  # the guard file is no object


def test_exactly_one_of_many_racing_creators_wins(tmp_path: Path) -> None:
    # on disk only: moto's server honours If-None-Match, but looks the key up and stores
    # the object in two steps without a lock, so a race against it tests moto (AWS S3
    # evaluates the condition atomically); test_compare_and_swap covers its answers
    storage = FileStorage(tmp_path / "repo")
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def race(n: int) -> None:
        barrier.wait()
        if storage.create_exclusive("locks/race.json", str(n).encode()) is not None:
            wins.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert storage.get_bytes("locks/race.json") == str(wins[0]).encode()


def test_a_lease_is_refreshed_and_released(storage: Storage) -> None:
    lease = Lease(storage, "backups/x/lease.json", "backup create", refresh_s=0.05).create()
    try:
        first = read_holder(storage, lease.key)
        assert first is not None and first.token == lease.token
        assert first.pid == os.getpid() and first.dead_because() is None
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while (now := read_holder(storage, lease.key)) is not None and now.tag == first.tag:
            assert datetime.now(UTC) < deadline, "the lease was never refreshed"
        lease.check()
    finally:
        lease.release()
    assert storage.read_versioned(lease.key) is None


def test_a_holder_learns_it_lost_its_lease(storage: Storage) -> None:
    lost: list[str] = []
    lease = Lease(
        storage, "backups/y/lease.json", "backup create", refresh_s=0.05, on_lost=lost.append
    ).create()
    storage.delete(lease.key)  # an old prune, an operator
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while not lost:
        assert datetime.now(UTC) < deadline
        threading.Event().wait(0.02)
    assert "replaced or removed" in lost[0]
    with pytest.raises(Exception, match="was lost"):
        lease.check()
    lease.release()


def _write_lock(storage: Storage, key: str, **fields: Any) -> None:
    doc = {
        "purpose": "backup prune",
        "token": "someone-else",
        "actor": "ci",
        "host": "runner-7",
        "pid": 4242,
        "machine": "runner-7|boot|1",
        "started_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "refreshed_at": datetime.now(UTC).isoformat(),
        "timeout_s": 1200,
        **fields,
    }
    storage.put_bytes(key, json.dumps(doc).encode())


def _age_file(storage: FileStorage, key: str, age: timedelta) -> None:
    stamp = (datetime.now(UTC) - age).timestamp()
    os.utime(storage.root / key, (stamp, stamp))


def test_a_live_prune_lock_refuses_a_second_prune(storage: Storage) -> None:
    _write_lock(storage, PRUNE_LOCK)  # another machine, refreshed just now
    with pytest.raises(Conflict) as err:
        Lease(storage, PRUNE_LOCK, "backup prune").acquire(wait_s=0)
    message = err.value.message
    assert "backup prune is already running" in message
    assert "pid 4242 on runner-7" in message and "by ci" in message


def test_an_abandoned_prune_lock_is_taken_over(tmp_path: Path) -> None:
    # on disk the store's time can be set back; S3 keeps its own (the next two tests
    # cover how both clocks count, and the process-gone rule on S3 too)
    storage = FileStorage(tmp_path / "repo")
    old = datetime.now(UTC) - timedelta(minutes=25)
    _write_lock(storage, PRUNE_LOCK, refreshed_at=old.isoformat())
    _age_file(storage, PRUNE_LOCK, timedelta(minutes=25))
    lease = Lease(storage, PRUNE_LOCK, "backup prune").acquire(wait_s=0)
    try:
        assert lease.took_over is not None and lease.took_over.host == "runner-7"
        holder = read_holder(storage, PRUNE_LOCK)
        assert holder is not None and holder.token == lease.token
    finally:
        lease.release()


def test_the_timeout_is_judged_by_the_later_of_both_clocks(storage: Storage) -> None:
    # the holder's stamp is old, but the store wrote it just now: still alive (a holder
    # whose clock runs late must not lose its lease); a short timeout makes it dead
    old = datetime.now(UTC) - timedelta(minutes=25)
    _write_lock(storage, PRUNE_LOCK, refreshed_at=old.isoformat())
    holder = read_holder(storage, PRUNE_LOCK)
    assert holder is not None
    assert holder.dead_because() is None
    later = datetime.now(UTC) + timedelta(minutes=21)
    assert "not refreshed for" in (holder.dead_because(now=later) or "")


def test_a_lock_of_a_process_gone_on_this_machine_is_dead_at_once(storage: Storage) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone = int(done.stdout)
    _write_lock(storage, PRUNE_LOCK, pid=gone, machine=machine_id(), host="here")
    lease = Lease(storage, PRUNE_LOCK, "backup prune").acquire(wait_s=0)
    try:
        assert lease.took_over is not None and lease.took_over.pid == gone
    finally:
        lease.release()


def test_two_prunes_at_once_one_refuses(file_env: Env) -> None:
    assert file_env.run("backup create").exit_code == 0
    repo = Path(file_env.repo_url.removeprefix("file://"))
    holder = Lease(FileStorage(repo), PRUNE_LOCK, "backup prune").acquire()
    try:
        refused = file_env.run("backup prune --lock-wait 0")
        assert refused.exit_code == 6, refused.output
        assert f"pid {os.getpid()}" in refused.stderr
        assert "backup prune is already running" in refused.stderr
        as_json = file_env.run("backup prune --lock-wait 0 -o json")
        assert as_json.json()["error"] == "conflict"
        assert file_env.run("backup prune --dry-run").exit_code == 0  # reads only
    finally:
        holder.release()
    assert file_env.run("backup prune").exit_code == 0
    assert not (repo / PRUNE_LOCK).exists()


def test_prune_leaves_a_leased_backup_alone_and_cleans_a_dead_one(file_env: Env) -> None:
    repo = Path(file_env.repo_url.removeprefix("file://"))
    storage = FileStorage(repo)
    # a running backup: a live lease (this process), one object so far
    running = Lease(storage, lease_key("20260101T000000Z-aaaa"), "backup create").create()
    storage.put_bytes("backups/20260101T000000Z-aaaa/data.pgdump.zst", b"x" * 10)
    # a killed one on this machine: its process is gone
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    _write_lock(
        storage,
        lease_key("20260101T000000Z-bbbb"),
        purpose="backup create",
        pid=int(done.stdout),
        machine=machine_id(),
    )
    storage.put_bytes("backups/20260101T000000Z-bbbb/data.pgdump.zst", b"y" * 10)
    try:
        dry = file_env.run("backup prune --orphans-older-than 0 --dry-run -o json").json()
        assert list(dry["running"]) == ["20260101T000000Z-aaaa"]
        assert dry["orphans"] == ["20260101T000000Z-bbbb"]
        text = file_env.run("backup prune --orphans-older-than 0")
        assert text.exit_code == 0, text.output
        assert "left 20260101T000000Z-aaaa alone: being written (backup create by" in text.stdout
        assert storage.exists("backups/20260101T000000Z-aaaa/data.pgdump.zst")
        assert not (repo / "backups" / "20260101T000000Z-bbbb").exists()
    finally:
        running.release()
    assert file_env.run("backup prune --orphans-older-than 0").exit_code == 0
    assert not (repo / "backups" / "20260101T000000Z-aaaa").exists()
