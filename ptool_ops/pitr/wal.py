"""``wal push`` (archive_command) and ``wal fetch`` (restore_command).

The two rules PostgreSQL's documentation sets, and the two ways tools broke them:

* **push** exits 0 only once the file is stored (a create-if-absent write: an S3
  ``PutObject`` with ``If-None-Match: *``, on disk an fsynced temp file hard-linked to its
  name). A file already archived under the name is compared, not overwritten: the same
  bytes (PostgreSQL re-archives after a crash) succeed, different bytes fail, and
  PostgreSQL keeps the segment and retries -- nothing is ever dropped to make progress.
* **fetch** says "not in the archive" (exit 1) only when the object is not there. Anything
  else -- the repository unreachable, a checksum or decryption failure, a foreign
  cluster's segment -- must stop recovery (exit 128, above 125), because PostgreSQL reads
  1..125 as "no such file" and would end recovery early and promote a short database.

Both run once per 16 MB segment, so the command path is lean (see ``ptool_ops/cli/wal.py``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptool_ops.errors import ConfigError, Refused
from ptool_ops.pitr import archive
from ptool_ops.repo.errors import CorruptObject, ObjectMissing
from ptool_ops.repo.repository import Repository

#: exit codes of ``wal fetch`` (PostgreSQL's contract, not the CLI's general table)
FETCH_FOUND = 0
FETCH_NOT_ARCHIVED = 1
FETCH_FATAL = 128


class NotArchived(ObjectMissing):
    """The archive has no such file (the one answer that lets recovery end)."""

    kind = "not_archived"


class ForeignCluster(Refused):
    """A segment of another cluster (or another major version's WAL format)."""

    kind = "foreign_cluster"


class DifferentSegment(Refused):
    """A file under the same name with other bytes is already archived."""

    kind = "different_segment"


@dataclass(frozen=True)
class PushResult:
    name: str
    key: str
    raw_bytes: int
    stored_bytes: int
    already_archived: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FetchResult:
    name: str
    key: str
    raw_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _major(data_dir: Path) -> int | None:
    """The server's major version from PG_VERSION (archive_command runs in the data dir)."""
    try:
        return int((data_dir / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return None


def read_identity(repo: Repository, name: str = archive.LIVE) -> archive.Identity | None:
    found = repo.storage.read_versioned(archive.identity_key(name))
    if found is None:
        return None
    return archive.Identity.from_json(found.data, f"{repo.url}/{archive.identity_key(name)}")


def _check_identity(
    repo: Repository, name: str, segment: archive.Identity, *, create: bool, what: str
) -> None:
    """Compare a segment's identity with the archive's (writing it first when ``create``)."""
    key = archive.identity_key(name)
    known = read_identity(repo, name)
    if known is None and create:
        if repo.storage.create_exclusive(key, segment.to_json()) is not None:
            return
        known = read_identity(repo, name)  # another push was first
    if known is None:
        return  # fetch from an archive without identity: a damaged repository shows elsewhere
    if not known.same_cluster(segment):
        raise ForeignCluster(
            f"{what} comes from {segment.describe()}, but the archive {repo.url}/"
            f"{archive.prefix(name)} belongs to {known.describe()}.",
            hint="Point archive_command at this cluster's own repository, or take a new "
            "base backup into a fresh archive; never mix two clusters' WAL.",
        )


def push(
    repo: Repository, path: Path, *, archive_name: str = archive.LIVE, data_dir: Path | None = None
) -> PushResult:
    """Archive the file at ``path`` (archive_command's ``%p``, relative to the data dir)."""
    name = path.name
    key = archive.object_key(name, archive_name)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read {path}: {err.strerror}.",
            hint="archive_command must pass %p and run in the data directory.",
        ) from None
    if archive.SEGMENT.match(name):
        ident = archive.segment_identity(data, _major(data_dir or Path.cwd()))
        if ident is None:
            raise CorruptObject(f"{path} does not start with a WAL page header.")
        _check_identity(repo, archive_name, ident, create=True, what=f"segment {name}")
    packed = repo.pack(data)
    if repo.storage.create_exclusive(key, packed) is not None:
        return PushResult(name, key, len(data), len(packed), already_archived=False)
    stored = repo.unpack(repo.storage.get_bytes(key), name)
    if hashlib.sha256(stored).digest() == hashlib.sha256(data).digest():
        return PushResult(name, key, len(data), len(packed), already_archived=True)
    raise DifferentSegment(
        f"{name} is already archived with different content; refusing to overwrite it.",
        hint="Two clusters may be archiving into one repository, or this one was restored "
        "without a fresh archive. Check 'ptool-ops pitr window'; PostgreSQL keeps the file "
        "and retries.",
    )


def _checked(repo: Repository, name: str, archive_name: str) -> tuple[str, bytes]:
    """The archived file's bytes, proven: checksum (and key), whole segment, this cluster."""
    key = archive.object_key(name, archive_name)
    try:
        blob = repo.storage.get_bytes(key)
    except ObjectMissing:
        if read_identity(repo, archive_name) is None:
            # no archive at all: an unmounted or mistyped repository is no "end of WAL"
            raise ConfigError(
                f"{repo.url}/{archive.prefix(archive_name)} holds no WAL archive (no "
                "archive.json), so it cannot say what is archived.",
                hint="Check the repository URL and that it is mounted/reachable.",
            ) from None
        raise NotArchived(f"{name} is not in the archive {repo.url}/{key}.") from None
    data = repo.unpack(blob, name)
    if archive.SEGMENT.match(name) and not name.endswith(".partial"):
        ident = archive.segment_identity(data)
        if ident is None or len(data) != ident.segment_size:
            raise CorruptObject(f"{name} in the archive is not a whole WAL segment.")
        _check_identity(repo, archive_name, ident, create=False, what=f"segment {name}")
    return key, data


def _place(data: bytes, dest: Path) -> None:
    temp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.fetch")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, dest)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {dest}: {err.strerror}.") from None


def fetch(
    repo: Repository,
    name: str,
    dest: Path,
    *,
    archive_name: str = archive.LIVE,
    spool: Path | None = None,
    on_segment: Callable[[str], None] | None = None,
) -> FetchResult:
    """Restore ``name`` (restore_command's ``%f``) to ``dest`` (``%p``): from ``spool``
    when a prefetcher already fetched and checked it, else from the archive.
    ``on_segment`` is told each whole segment fetched (to start prefetching after it)."""
    if spool is not None:
        ready = spool / name
        try:
            os.replace(ready, dest)
            return FetchResult(name, "spool", dest.stat().st_size)
        except FileNotFoundError:
            pass
    key, data = _checked(repo, name, archive_name)
    _place(data, dest)
    if on_segment is not None and archive.SEGMENT.match(name) and not name.endswith(".partial"):
        on_segment(name)
    return FetchResult(name, key, len(data))


#: in a spool: asks its prefetcher to stop (``pitr drop`` removes the spool after it)
STOP = ".stop"


def stop_prefetch(spool: Path, timeout_s: float = 15.0) -> bool:
    """Ask the prefetcher of ``spool`` to stop and wait until it has (its lock is free), so
    the directory can be removed without a segment landing in it meanwhile; whether it
    stopped within ``timeout_s`` (a spool without a prefetcher: at once)."""
    import fcntl
    import time

    if not spool.is_dir():
        return True
    (spool / STOP).touch()
    deadline = time.monotonic() + timeout_s
    with open(spool / ".lock", "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)


def prefetch(
    repo: Repository,
    after: str,
    spool: Path,
    *,
    archive_name: str = archive.LIVE,
    ahead: int = 8,
    workers: int = 2,
    idle_s: float = 30.0,
) -> int:
    """Keep up to ``ahead`` checked segments after ``after`` ready in ``spool`` while
    recovery consumes them (one prefetcher per spool: an flock on ``spool/.lock``). Stops
    at the archive's end, on any failure (the real fetch then reports it), or when nothing
    was taken from the spool for ``idle_s``, or when asked to (:func:`stop_prefetch`).
    Returns how many segments it fetched."""
    import fcntl
    import time
    from concurrent.futures import ThreadPoolExecutor

    spool.mkdir(parents=True, exist_ok=True)
    with open(spool / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # another prefetcher serves this spool
        identity = read_identity(repo, archive_name)
        size = identity.segment_size if identity else 16 * 1024 * 1024
        start = archive.Segment.parse(after, size)
        if start is None:
            return 0
        number = start.number + 1
        fetched = 0
        last_taken = time.monotonic()

        def ready() -> set[str]:
            return {p.name for p in spool.iterdir() if not p.name.startswith(".")}

        def one(name: str) -> bool:
            try:
                _, data = _checked(repo, name, archive_name)
            except Exception:  # the real fetch reports what is wrong
                return False
            _place(data, spool / name)
            return True

        with ThreadPoolExecutor(workers, thread_name_prefix="prefetch") as pool:
            while True:
                if (spool / STOP).exists():
                    return fetched
                present = ready()
                if len(present) >= ahead:
                    if time.monotonic() - last_taken > idle_s:
                        return fetched
                    time.sleep(0.05)
                    continue
                last_taken = time.monotonic()
                wanted = ahead - len(present)
                batch = [
                    archive.Segment(start.timeline, n).name(size)
                    for n in range(number, number + wanted)
                ]
                number += wanted
                batch = [n for n in batch if n not in present]
                results = list(pool.map(one, batch))
                fetched += sum(results)
                if not all(results):
                    return fetched
