"""``file:///path`` backend: plain files, written to a temp name, fsynced, then renamed.

A temp file is ``.<name>.<random>.partial`` beside its final name, so a crash leaves
something :meth:`FileStorage.list_partial` can find, never a half-written object under
the real name.
"""

from __future__ import annotations

import builtins
import contextlib
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
    Writer,
    check_key,
)

PARTIAL_SUFFIX = ".partial"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(PARTIAL_SUFFIX):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    st = path.stat()
                    found.append(
                        ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
                    )
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_partial(self, prefix: str = "") -> builtins.list[PartialUpload]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.rglob(f".*{PARTIAL_SUFFIX}"):
            name = path.name[1:].removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[0]
            key = (path.parent / name).relative_to(self.root).as_posix()
            if key.startswith(prefix):
                started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                found.append(PartialUpload(key, path.name, started))
        return sorted(found, key=lambda p: p.key)

    def abort_partial(self, partial: PartialUpload) -> None:
        path = self._path(partial.key).parent / partial.upload_id
        path.unlink(missing_ok=True)
