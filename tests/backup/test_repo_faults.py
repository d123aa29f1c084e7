"""Faults of the store under leases and prune, on a real file system and a real moto server:
file-system errors are one sentence and end a lease instead of its refresh thread; a refresh
that hangs loses the lease by itself; an answer lost after S3 committed a conditional write
is recognised as ours; a lease refreshed between prune's last look and its deletion wins;
files that vanish while prune lists them are skipped."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ptool_ops.backup.models import lease_key
from ptool_ops.errors import OperationFailed
from ptool_ops.repo.file import GUARD, FileStorage
from ptool_ops.repo.lease import Lease, machine_id, read_holder
from ptool_ops.repo.repository import Repository
from ptool_ops.repo.s3 import S3Storage
from tests.backup.s3proxy import Exchange, S3Proxy, s3_proxy
from tests.conftest import Cli

MiB = 1024 * 1024
_buckets = iter(range(10_000))
KEY = "backups/20260101T000000Z-aaaa/lease.json"


def _wait_for(what: str, done: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _one_sentence(err: OperationFailed, path: Path) -> None:
    assert str(path) in err.message, err.message
    assert err.message.endswith(".") and "\n" not in err.message
    assert "Errno" not in err.message and "Traceback" not in err.message


# --- file-system errors -----------------------------------------------------------------------


def test_file_store_errors_are_one_sentence_naming_the_path(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "repo")
    tag = storage.create_exclusive(KEY, b"{}")
    assert tag is not None
    lease = storage.root / KEY
    # the lease is a directory now (a real EISDIR on every read, replace and delete)
    lease.unlink()
    lease.mkdir()
    for attempt in (
        lambda: storage.read_versioned(KEY),
        lambda: storage.replace_if(KEY, b"{}", tag),
        lambda: storage.delete_if(KEY, tag),
    ):
        with pytest.raises(OperationFailed) as err:
            attempt()
        _one_sentence(err.value, lease)
        assert "Is a directory" in err.value.message
    # a file where a backup's directory should be: its lease cannot be created
    (storage.root / "backups" / "20260101T000000Z-bbbb").write_bytes(b"x")
    with pytest.raises(OperationFailed) as err:
        storage.create_exclusive("backups/20260101T000000Z-bbbb/lease.json", b"{}")
    assert "cannot write" in err.value.message
    assert str(storage.root / "backups" / "20260101T000000Z-bbbb") in err.value.message
    assert not [p.name for p in (storage.root / "backups").iterdir() if p.name.startswith(".")]


def test_a_lease_whose_store_turned_unreadable_fails_check_in_one_sentence(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path / "repo")
    lease = Lease(storage, KEY, "backup create", refresh_s=3600).create()
    path = storage.root / KEY
    path.unlink()
    path.symlink_to(path)  # ELOOP, as real as ESTALE and much easier to have
    with pytest.raises(OperationFailed) as err:
        lease.check()
    _one_sentence(err.value, path)
    lease.release()


#: run in a child: RLIMIT_FSIZE makes every write past a few bytes fail with EFBIG, what a
#: full disk does to a write (SIGXFSZ is ignored by Python)
_FULL_DISK = """
import json, resource, sys, time
from ptool_ops.errors import PtoolError
from ptool_ops.repo.file import FileStorage
from ptool_ops.repo.lease import Lease

storage = FileStorage(__import__("pathlib").Path(sys.argv[1]))
lost = []
lease = Lease(storage, sys.argv[2], "backup create", refresh_s=0.02, timeout_s=0.6,
              on_lost=lost.append).create()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))
deadline = time.monotonic() + 10
while not lost and time.monotonic() < deadline:
    time.sleep(0.01)
lease._thread.join(5)  # ended, not stuck or dead of an exception
out = {"lost": lease.lost, "called": lost, "thread_alive": lease._thread.is_alive()}
try:
    Lease(storage, "locks/prune.json", "backup prune").acquire()
except PtoolError as err:
    out["acquire"] = [type(err).__name__, err.message, err.exit_code]
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
lease.release()
print(json.dumps(out))
"""


def test_a_refresh_failing_on_a_full_disk_loses_the_lease(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(root), KEY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    # given up after half its timeout, with the reason, and the holder was told
    assert out["lost"] is not None, done.stderr
    assert out["lost"].startswith(f"{KEY} could not be refreshed for ")
    assert ": cannot write " in out["lost"] and out["lost"].endswith(": File too large")
    assert out["called"] == [out["lost"]] and not out["thread_alive"]
    assert "Traceback" not in done.stderr
    # the prune lock on the same disk: one sentence, exit 8, not a traceback (exit 70)
    kind, message, code = out["acquire"]
    assert kind == "OperationFailed" and code == 8
    assert message.startswith(f"cannot write {root / 'locks'}/.prune.json.")
    assert message.endswith(": File too large.")
    assert not list((root / "locks").iterdir())  # no temp file left behind


def test_a_refresh_that_hangs_loses_the_lease_by_itself(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "repo")
    lost: list[str] = []
    lease = Lease(
        storage, KEY, "backup create", refresh_s=0.02, timeout_s=1.0, on_lost=lost.append
    ).create()
    # another process's conditional write stuck under the guard: the next refresh blocks
    guard = os.open(storage.root / GUARD, os.O_RDWR)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        time.sleep(0.05)  # the refresh thread is waiting for the guard now
        assert lost == [] and lease.lost is None  # younger than half the timeout
        _wait_for("the holder to be told, unasked", lambda: lost)
        assert lost[0].startswith(f"{KEY} was not refreshed for ")
        assert lost[0].endswith(": the store did not answer")
        assert lease.lost == lost[0]
        with pytest.raises(OperationFailed, match=r"was lost: .* was not refreshed for"):
            lease.check()
    finally:
        os.close(guard)
    lease.release()
    assert lost == [lease.lost]  # told once


# --- S3 answers lost after the write was done --------------------------------------------------


@pytest.fixture
def proxy(aws_env: str) -> Iterator[S3Proxy]:
    with s3_proxy(aws_env) as running:
        yield running


@pytest.fixture
def bucket(s3_bucket: Callable[[str], Any]) -> str:
    name = f"faults-{os.getpid()}-{next(_buckets)}"
    s3_bucket(name)
    return name


def _via(proxy: S3Proxy, bucket: str) -> S3Storage:
    return S3Storage(bucket, "pre", part_size=5 * MiB, endpoint_url=proxy.url)


def _conditional(method: str) -> Callable[[Exchange], bool]:
    return lambda x: x.method == method and x.conditional and x.path.endswith("/lease.json")


def test_a_lease_created_while_its_answer_was_lost_is_ours(proxy: S3Proxy, bucket: str) -> None:
    storage = _via(proxy, bucket)
    proxy.drop_first(_conditional("PUT"))
    lease = Lease(storage, KEY, "backup create", refresh_s=3600).create()  # no Conflict
    try:
        assert len(proxy.dropped) == 1 and proxy.dropped[0].status == 200
        retried = [x for x in proxy.seen if _conditional("PUT")(x)]
        assert [x.status for x in retried] == [200, 412]  # the retry found our own write
        holder = read_holder(storage, KEY)
        assert holder is not None and holder.token == lease.token
        lease.check()
    finally:
        lease.release()
    assert storage.read_versioned(KEY) is None  # and released it: nothing left behind


def test_a_refresh_whose_answer_was_lost_keeps_the_lease(proxy: S3Proxy, bucket: str) -> None:
    storage = _via(proxy, bucket)
    lost: list[str] = []
    lease = Lease(storage, KEY, "backup create", refresh_s=0.05, on_lost=lost.append).create()
    try:
        # a refresh within the same second writes the same bytes, hence the same ETag, and
        # its retry would succeed: lose the answer of one that changed the tag
        proxy.drop_first(
            lambda x: _conditional("PUT")(x) and x.answered("ETag") != x.headers["if-match"]
        )
        _wait_for("a lost answer", lambda: proxy.dropped)

        def refreshed_since() -> int:
            at = next(i for i, x in enumerate(proxy.seen) if x is proxy.dropped[0])
            after = proxy.seen[at + 1 :]
            return sum(1 for x in after if _conditional("PUT")(x) and x.status == 200)

        _wait_for("three refreshes after it", lambda: refreshed_since() >= 3)
        at = next(i for i, x in enumerate(proxy.seen) if x is proxy.dropped[0])
        retry = next(x for x in proxy.seen[at + 1 :] if _conditional("PUT")(x))
        assert retry.status == 412  # the retry found our own write
        assert lost == [] and lease.lost is None
        lease.check()
    finally:
        lease.release()
    assert storage.read_versioned(KEY) is None


def test_a_release_whose_answer_was_lost_says_nothing(
    proxy: S3Proxy, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _via(proxy, bucket)
    lease = Lease(storage, KEY, "backup create", refresh_s=3600).create()
    proxy.drop_first(_conditional("DELETE"))
    lease.release()
    assert len(proxy.dropped) == 1
    assert storage.read_versioned(KEY) is None
    assert "no longer ours" not in caplog.text


def test_a_store_answering_nonsense_to_a_refresh_loses_the_lease_at_once(
    proxy: S3Proxy, bucket: str
) -> None:
    storage = _via(proxy, bucket)
    lost: list[str] = []
    lease = Lease(storage, KEY, "backup create", refresh_s=0.05, on_lost=lost.append).create()
    try:

        def no_etag(exchange: Exchange) -> bool:
            if _conditional("PUT")(exchange):
                exchange.response_headers = [
                    (k, v) for k, v in exchange.response_headers if k.lower() != "etag"
                ]
            return True

        proxy.hook = no_etag  # a write accepted without the tag the next one must name
        _wait_for("the lease to be lost", lambda: lost)
        assert lost == [f"{KEY} could not be refreshed (KeyError)"]
        assert lease.lost == lost[0]
        with pytest.raises(OperationFailed, match="was lost"):
            lease.check()
    finally:
        lease.release()


# --- prune ------------------------------------------------------------------------------------


def _dead_lease(pid: int, refreshed: datetime) -> bytes:
    """A 'backup create' lease of a process gone from this machine: dead at once."""
    doc = {
        "purpose": "backup create",
        "token": "someone-else",
        "actor": "ci",
        "host": "here",
        "pid": pid,
        "machine": machine_id(),
        "started_at": (refreshed - timedelta(hours=1)).isoformat(),
        "refreshed_at": refreshed.isoformat(),
        "timeout_s": 1200,
    }
    return json.dumps(doc).encode()


def _gone_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_a_lease_refreshed_between_prunes_last_look_and_its_deletion_wins(
    proxy: S3Proxy, bucket: str, aws_env: str, cli: Cli
) -> None:
    import boto3

    backup_id = "20260101T000000Z-cccc"
    direct = S3Storage(bucket, "ptool/t", part_size=5 * MiB, endpoint_url=aws_env)
    Repository(direct).ensure_initialised()
    pid = _gone_pid()
    direct.put_bytes(lease_key(backup_id), _dead_lease(pid, datetime.now(UTC)))
    direct.put_bytes(f"backups/{backup_id}/data.pgdump.zst", b"x" * 10)
    client = boto3.client("s3", endpoint_url=aws_env)
    full = f"ptool/t/{lease_key(backup_id)}"

    def refreshed_after_each_read(exchange: Exchange) -> bool:
        # the holder writes its lease again right after prune read it: prune still holds
        # the old ETag when it deletes
        if exchange.method == "GET" and exchange.path.split("?")[0].endswith(full):
            stamp = datetime.now(UTC) + timedelta(seconds=len(proxy.seen))
            client.put_object(Bucket=bucket, Key=full, Body=_dead_lease(pid, stamp))
        return True

    proxy.hook = refreshed_after_each_read
    cli.write_config(
        f'[environments.t]\nrepo_url = "s3://{bucket}/ptool/t"\naws_endpoint_url = "{proxy.url}"\n'
    )
    done = cli("--env t backup prune --orphans-older-than 0 -o json")
    assert done.exit_code == 0, done.output
    result = done.json()
    assert result["orphans"] == []
    assert "refreshed or replaced while prune looked at it" in result["running"][backup_id]
    assert direct.exists(lease_key(backup_id))
    assert direct.exists(f"backups/{backup_id}/data.pgdump.zst")

    proxy.hook = lambda _exchange: True  # nobody writes it any more: the next prune takes it
    again = cli("--env t backup prune --orphans-older-than 0 -o json")
    assert again.exit_code == 0, again.output
    assert again.json()["orphans"] == [backup_id]
    assert list(direct.list("backups/")) == []


def test_listing_beside_leases_that_come_and_go(tmp_path: Path, cli: Cli) -> None:
    # prune lists while backups refresh their leases (a temp file renamed every 30 s) and
    # release them (the file and its emptied directory deleted): what vanishes is skipped
    storage = FileStorage(tmp_path / "repo")
    Repository(storage).ensure_initialised()
    stop = threading.Event()
    failures: list[BaseException] = []

    def churn(n: int) -> None:
        try:
            while not stop.is_set():
                key = lease_key(f"20260102T0000{n:02d}Z-{os.urandom(2).hex()}")
                Lease(storage, key, "backup create", refresh_s=0).create().release()
        except BaseException as err:
            failures.append(err)

    steady = Lease(storage, lease_key("20260101T000000Z-dddd"), "backup create", refresh_s=0)
    steady.create()
    threads = [threading.Thread(target=churn, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 2
        listed = 0
        while time.monotonic() < deadline:
            storage.list_partial("")
            listed += len(list(storage.list("")))
        assert listed
        cli.write_config(f'[environments.t]\nrepo_url = "file://{storage.root}"\n')
        for _ in range(3):
            done = cli("--env t backup prune -o json")
            assert done.exit_code == 0, done.output
            assert "20260101T000000Z-dddd" in done.json()["running"]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        steady.release()
    assert failures == []
    assert steady.lost is None
