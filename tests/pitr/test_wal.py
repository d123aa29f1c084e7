"""``wal push`` / ``wal fetch`` as PostgreSQL runs them: real processes, real segments of
a real cluster, and the exit codes PostgreSQL acts on."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from tests.pitr.conftest import PitrEnv, wal

SEGMENT_SIZE = 16 * 1024 * 1024


def _segment(pitr_env: PitrEnv, into: Path) -> Path:
    """A finished segment of the cluster, copied out of its pg_wal."""
    pitr_env.switch_wal()
    wal_dir = pitr_env.local / "pgdata" / "pg_wal"
    done = sorted(p for p in wal_dir.iterdir() if len(p.name) == 24)[0]
    copy = into / done.name
    shutil.copyfile(done, copy)
    return copy


def test_push_is_idempotent_and_never_overwrites(pitr_env: PitrEnv, tmp_path: Path) -> None:
    repo = f"file://{tmp_path / 'repo'}"
    segment = _segment(pitr_env, tmp_path)
    first = wal("push", str(segment), "--repo", repo)
    assert first.returncode == 0, first.stderr
    stored = tmp_path / "repo" / "pitr" / "wal" / segment.name[:8] / f"{segment.name}.zst"
    assert stored.exists() and stored.stat().st_size < SEGMENT_SIZE  # compressed
    identity = json.loads((tmp_path / "repo" / "pitr" / "wal" / "archive.json").read_text())
    assert identity["segment_size"] == SEGMENT_SIZE

    # PostgreSQL re-archives after a crash: the same bytes are a success
    assert wal("push", str(segment), "--repo", repo).returncode == 0
    # other bytes under the same name are refused, and the stored copy stays
    original = segment.read_bytes()
    changed = bytearray(original)
    changed[SEGMENT_SIZE // 2] ^= 0xFF
    segment.write_bytes(bytes(changed))
    before = stored.read_bytes()
    refused = wal("push", str(segment), "--repo", repo)
    assert refused.returncode not in (0, 1) and refused.returncode < 126
    assert "already archived with different content" in refused.stderr
    assert stored.read_bytes() == before

    fetched = tmp_path / "fetched"
    assert wal("fetch", segment.name, str(fetched), "--repo", repo).returncode == 0
    assert fetched.read_bytes() == original


def test_a_foreign_cluster_is_refused(pitr_env: PitrEnv, tmp_path: Path) -> None:
    repo = f"file://{tmp_path / 'repo'}"
    segment = _segment(pitr_env, tmp_path)
    assert wal("push", str(segment), "--repo", repo).returncode == 0
    other = bytearray(segment.read_bytes())
    other[24:32] = (int.from_bytes(other[24:32], "little") + 1).to_bytes(8, "little")
    foreign = tmp_path / "other" / f"{segment.name[:16]}000000FF"
    foreign.parent.mkdir()
    foreign.write_bytes(bytes(other))
    refused = wal("push", str(foreign), "--repo", repo)
    assert refused.returncode not in (0, 1) and refused.returncode < 126
    assert "never mix two clusters' WAL" in refused.stderr
    assert not list((tmp_path / "repo").rglob(f"{foreign.name}*"))


def test_fetch_says_missing_only_when_missing(pitr_env: PitrEnv, tmp_path: Path) -> None:
    repo = f"file://{tmp_path / 'repo'}"
    segment = _segment(pitr_env, tmp_path)
    assert wal("push", str(segment), "--repo", repo).returncode == 0
    dest = tmp_path / "RECOVERYXLOG"

    missing = wal("fetch", "0000000100000000000000FE", str(dest), "--repo", repo)
    assert missing.returncode == 1 and not dest.exists()
    assert wal("fetch", "00000009.history", str(dest), "--repo", repo).returncode == 1

    # everything else stops recovery: a usage error, a damaged object, a missing key
    assert wal("fetch", segment.name, str(dest), "--repo", repo, "--bogus").returncode == 128
    stored = next((tmp_path / "repo").rglob(f"{segment.name}.zst"))
    good = stored.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    stored.write_bytes(bytes(damaged))
    corrupt = wal("fetch", segment.name, str(dest), "--repo", repo)
    assert corrupt.returncode == 128, corrupt.stderr
    assert "damaged" in corrupt.stderr and not dest.exists()
    stored.write_bytes(good)
    assert wal("fetch", "not-a-wal-name", str(dest), "--repo", repo).returncode == 128


def test_an_encrypted_archive_needs_its_key(pitr_env: PitrEnv, tmp_path: Path) -> None:
    repo = f"file://{tmp_path / 'repo'}"
    key_file = tmp_path / "key"
    key_file.write_text(base64.b64encode(bytes(range(32))).decode())
    segment = _segment(pitr_env, tmp_path)
    pushed = wal("push", str(segment), "--repo", repo, "--key-file", str(key_file))
    assert pushed.returncode == 0, pushed.stderr
    stored = next((tmp_path / "repo").rglob(f"{segment.name}.zst"))
    assert stored.read_bytes().startswith(b"PTAEAD")
    dest = tmp_path / "out"
    without = wal("fetch", segment.name, str(dest), "--repo", repo)
    assert without.returncode == 128 and "no backup key" in without.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text(base64.b64encode(bytes(32)).decode())
    assert (
        wal("fetch", segment.name, str(dest), "--repo", repo, "--key-file", str(wrong)).returncode
        == 128
    )
    right = wal("fetch", segment.name, str(dest), "--repo", repo, "--key-file", str(key_file))
    assert right.returncode == 0 and dest.read_bytes() == segment.read_bytes()


def test_history_files_are_archived_beside_the_segments(tmp_path: Path) -> None:
    repo = f"file://{tmp_path / 'repo'}"
    history = tmp_path / "00000002.history"
    history.write_text("1\t0/5000000\tno recovery target specified\n")
    assert wal("push", str(history), "--repo", repo).returncode == 0
    assert (tmp_path / "repo" / "pitr" / "wal" / "history" / "00000002.history.zst").exists()
    dest = tmp_path / "fetched.history"
    assert wal("fetch", "00000002.history", str(dest), "--repo", repo).returncode == 0
    assert dest.read_text() == history.read_text()


@pytest.mark.parametrize("args", [["push"], ["push", "a", "b"], []])
def test_push_usage_errors_are_not_success(args: list[str]) -> None:
    result = wal(*args)
    assert result.returncode not in (0, 1), result


def _as_postgres_runs_it(command: str, name: str, dest: Path) -> int:
    """restore_command as PostgreSQL runs it: placeholders filled, through /bin/sh."""
    import subprocess

    line = command.replace("%f", name).replace("%p", str(dest)).replace("%%", "%")
    return subprocess.run(["/bin/sh", "-c", line], capture_output=True, check=False).returncode


def test_the_generated_restore_command_never_mistakes_a_crash_for_the_end(
    pitr_env: PitrEnv, tmp_path: Path
) -> None:
    import sys

    from ptool_ops.pitr.commands import restore_command

    repo = f"file://{tmp_path / 'repo'}"
    segment = _segment(pitr_env, tmp_path)
    assert wal("push", str(segment), "--repo", repo).returncode == 0
    command = restore_command(repo, spool=tmp_path / "spool")
    dest = tmp_path / "RECOVERYXLOG"
    assert _as_postgres_runs_it(command, segment.name, dest) == 0
    assert dest.read_bytes() == segment.read_bytes()
    assert _as_postgres_runs_it(command, "0000000100000000000000FE", dest) == 1
    # an interpreter that cannot start exits 1 as well: that must stop recovery (128)
    broken = command.replace(sys.executable, "/bin/false")
    assert _as_postgres_runs_it(broken, "0000000100000000000000FE", dest) == 128
    # a repository that is not there is no "end of the archive"
    gone = restore_command(f"file://{tmp_path / 'unmounted'}")
    assert _as_postgres_runs_it(gone, segment.name, dest) == 128


def test_a_prefetcher_stops_when_asked_so_its_spool_can_be_removed(
    pitr_env: PitrEnv, tmp_path: Path
) -> None:
    """A restore's restore_command leaves a prefetcher filling its spool; 'pitr drop' asks
    it to stop and waits before removing the copy (it raced with a segment landing)."""
    import threading
    import time

    from ptool_ops.pitr import wal as wal_mod
    from ptool_ops.repo.file import FileStorage
    from ptool_ops.repo.repository import Repository

    with pitr_env.owner("postgres") as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        assert row is not None
        first = str(row[0])
    for n in range(3):
        with pitr_env.owner() as conn:
            conn.execute(
                "INSERT INTO booking.tenants (slug, name) VALUES (%s, %s)",
                (f"prefetch-{n}-{time.time_ns()}", "prefetch"),
            )
        pitr_env.wait_archived()
    repo = Repository(FileStorage(pitr_env.repo))
    spool = tmp_path / "spool"
    fetched: list[int] = []
    worker = threading.Thread(
        target=lambda: fetched.append(wal_mod.prefetch(repo, first, spool, ahead=2, idle_s=60))
    )
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if spool.is_dir() and len([p for p in spool.iterdir() if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.05)
    assert wal_mod.stop_prefetch(spool, timeout_s=10)  # it idled, waiting for recovery
    worker.join(5)
    assert not worker.is_alive() and fetched == [2]
    shutil.rmtree(spool)
    assert wal_mod.stop_prefetch(spool)  # no spool: nothing to stop
