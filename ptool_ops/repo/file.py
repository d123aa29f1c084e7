"""``file:///path`` backend: plain files, written to a temp name, fsynced, then renamed.

A temp file is ``.<name>.<random>.partial`` beside its final name, so a crash leaves
something :meth:`FileStorage.list_partial` can find, never a half-written object under
the real name. Names starting with ``.`` are never objects (temp files, the guard).

Compare-and-swap (leases, the prune lock): a new object is a complete temp file
hard-linked to its name (``link(2)`` fails with ``EEXIST`` exactly like
``open(O_CREAT|O_EXCL)`` when the name exists, and the object never appears half
written); replacing or deleting one compares its SHA-256 while holding an exclusive
``flock`` on ``<root>/.ptool-guard``, which every conditional operation takes. The file
system must support locks (local disks do; NFS since v4).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ptool_ops.errors import ConfigError, OperationFailed
from ptool_ops.repo.errors import ObjectMissing
from ptool_ops.repo.storage import (
    READ_CHUNK,
    ObjectInfo,
    PartialUpload,
    Storage,
    Versioned,
    Writer,
    check_key,
)

PARTIAL_SUFFIX = ".partial"
GUARD = ".ptool-guard"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(path: Path) -> datetime | None:
    """The file's modification time, or None when it went meanwhile (a lease released, a
    lease's temp file renamed: a prune lists beside running backups)."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None


def _walk(root: Path) -> Iterator[tuple[Path, builtins.list[str]]]:
    """Every directory under ``root`` with its file names; a directory removed during the
    walk (an emptied backup's) is skipped, as ``os.walk`` does."""
    for dirpath, _dirs, files in os.walk(root):
        yield Path(dirpath), files


@contextlib.contextmanager
def _failing(doing: str, path: Path) -> Iterator[None]:
    """An ``OSError`` (disk full, permissions, a stale NFS handle) as one sentence."""
    try:
        yield
    except OSError as err:
        raise OperationFailed(
            f"cannot {doing} {path}: {err.strerror or type(err).__name__}.",
            hint="Check free space and permissions of the repository directory.",
        ) from None


class FileWriter(Writer):
    def __init__(self, final: Path) -> None:
        self._final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self._temp = final.parent / f".{final.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
        fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=1024 * 1024)
        self._done = False

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as err:
            raise OperationFailed(
                f"cannot write {self._temp}: {err.strerror}.",
                hint="Check free space and permissions of the repository directory.",
            ) from None

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp, self._final)
            _fsync_dir(self._final.parent)
        except OSError as err:
            self.abort()
            raise OperationFailed(
                f"cannot store {self._final}: {err.strerror}.",
                hint="Check free space and permissions of the repository directory.",
            ) from None
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        self._temp.unlink(missing_ok=True)


class FileStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    @classmethod
    def from_url(cls, url: str) -> FileStorage:
        parts = urlsplit(url)
        if parts.netloc not in {"", "localhost"} or not parts.path.startswith("/"):
            raise ConfigError(
                f"repository URL {url!r} must be an absolute file:///path.",
                hint="Use three slashes: file:///var/backups/ptool.",
            )
        return cls(Path(unquote(parts.path)))

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def open_writer(self, key: str, before_store: Callable[[], None] | None = None) -> Writer:
        if before_store is not None:
            before_store()  # a temp file in the repository is already a mark in the store
        try:
            return FileWriter(self._path(key))
        except OSError as err:
            raise OperationFailed(
                f"cannot write to the repository {self.root}: {err.strerror}.",
                hint="Check that the directory exists or can be created, and is writable.",
            ) from None

    def get_stream(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ObjectMissing(f"{key} is not in the repository {self.url}.") from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        found: list[ObjectInfo] = []
        for directory, files in _walk(self.root):
            for name in files:
                if name.startswith("."):  # temp files and the guard
                    continue
                path = directory / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted since the walk saw it
                    continue
                found.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _failing("delete", path):
            path.unlink(missing_ok=True)
        self._remove_empty(path.parent)

    def _remove_empty(self, parent: Path) -> None:
        """Remove ``parent`` and its parents up to the root while they are empty."""
        while parent != self.root:
            try:
                parent.rmdir()  # refused unless empty: no look first, nothing to race
            except OSError:  # not empty, written into meanwhile, or gone already
                return
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_partial(self, prefix: str = "") -> builtins.list[PartialUpload]:
        if not self.root.is_dir():
            return []
        found = []
        for directory, files in _walk(self.root):
            for temp in files:
                if not (temp.startswith(".") and temp.endswith(PARTIAL_SUFFIX)):
                    continue
                name = temp[1:].removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[0]
                key = (directory / name).relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                started = _mtime(directory / temp)
                if started is not None:  # committed or aborted since the walk saw it
                    found.append(PartialUpload(key, temp, started))
        return sorted(found, key=lambda p: p.key)

    def abort_partial(self, partial: PartialUpload) -> None:
        path = self._path(partial.key).parent / partial.upload_id
        path.unlink(missing_ok=True)
        self._remove_empty(path.parent)

    def check_location(self) -> None:
        if not self.root.is_dir():
            raise ConfigError(
                f"no such repository directory {self.root} — a typo?",
                hint="Check repo_url (file:///path); 'ptool-ops backup create' makes the "
                "directory on first use, nothing else does.",
            )
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(
                f"the repository directory {self.root} cannot be read.",
                hint="Check its permissions for the user running ptool-ops.",
            )

    # --- compare-and-swap -----------------------------------------------------------------
    #
    # Every OSError of these (disk full, permissions, a stale NFS handle) becomes an
    # OperationFailed naming the path: a lease's refresh thread and prune's lock treat it
    # as a failed attempt, the CLI as one sentence (exit 8), never as a traceback.

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / GUARD, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise OperationFailed(
                f"cannot lock the repository {self.root}: {err.strerror}.",
                hint="Check that the directory exists and is writable.",
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                raise OperationFailed(
                    f"cannot lock the repository {self.root}: {err.strerror}.",
                    hint="The directory must be on a file system with working locks "
                    "(local disks; NFS since v4).",
                ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self, path: Path) -> Versioned | None:
        with _failing("read", path):
            try:
                data = path.read_bytes()
                modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except FileNotFoundError:
                return None
        return Versioned(data, hashlib.sha256(data).hexdigest(), modified)

    def read_versioned(self, key: str) -> Versioned | None:
        return self._read(self._path(key))

    def _temp_with(self, final: Path, data: bytes) -> Path:
        """A complete, fsynced temp file beside ``final``; nothing is left if it fails."""
        temp = final.parent / f".{final.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
        with _failing("write", temp):
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        return temp

    def create_exclusive(self, key: str, data: bytes) -> str | None:
        final = self._path(key)
        with self._guard():
            temp = self._temp_with(final, data)
            with _failing("create", final):
                try:
                    os.link(temp, final)
                except FileExistsError:
                    return None
                finally:
                    temp.unlink(missing_ok=True)
                _fsync_dir(final.parent)
        return hashlib.sha256(data).hexdigest()

    def replace_if(self, key: str, data: bytes, tag: str) -> str | None:
        final = self._path(key)
        with self._guard():
            current = self._read(final)
            if current is None or current.tag != tag:
                return None
            temp = self._temp_with(final, data)
            with _failing("replace", final):
                try:
                    os.replace(temp, final)
                except BaseException:
                    temp.unlink(missing_ok=True)
                    raise
                _fsync_dir(final.parent)
        return hashlib.sha256(data).hexdigest()

    def delete_if(self, key: str, tag: str) -> bool:
        final = self._path(key)
        with self._guard():
            current = self._read(final)
            if current is None or current.tag != tag:
                return False
            self.delete(key)
        return True
