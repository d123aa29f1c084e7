"""Unpack a base backup's tar stream into a directory, the writes spread over threads.

The stream comes decompressed from :meth:`Repository.read_object`; decompressing holds the
interpreter while writing into the page cache does not, so one thread decompresses and
parses headers (``tarfile.TarInfo.frombuf``: the standard library's ustar parser and
header checksum) while a pool ``pwrite``\\ s the file data, sliced out of the decompressed
chunks without a copy. Measured on a 1 GB data directory, against the ``tar -x`` command
fed through a pipe (``bench/pitr.py``; docs/pitr.md): the pipe and tar's own read and
write copies cost more than the unpacking itself.

pg_basebackup's tar holds directories and regular files only (a tablespace would be a tar
of its own, which ``-D -`` refuses), with names relative to the data directory. Anything
else -- a link, a device, an extended header, a name leaving the directory -- is refused
before it is written: what ``tarfile``'s ``"tar"`` extraction filter would block, and more.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from ptool_ops.errors import OperationFailed

BLOCK = tarfile.BLOCKSIZE
#: bytes handed to the writers and not yet written (the decompressor waits beyond it)
IN_FLIGHT = 64 * 1024 * 1024
#: a write of less is done by the decompressing thread itself (most files are 8 KiB); a
#: queued write counts at least this much, which bounds the files open at once
SMALL = 256 * 1024
#: the largest piece of a file one write takes (the writers share a big file)
PIECE = 4 * 1024 * 1024
WRITERS = 2

_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a device",
    tarfile.BLKTYPE: "a device",
    tarfile.FIFOTYPE: "a pipe",
    tarfile.XHDTYPE: "an extended header",
    tarfile.XGLTYPE: "an extended header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long name",
    tarfile.GNUTYPE_LONGLINK: "a GNU long name",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


class _Budget:
    """Bytes in flight between the decompressing thread and the writers."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._used == 0 or self._used + n <= self._limit)
            self._used += n

    def give(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class _File:
    """An open file, closed by whoever finishes its last write."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self._pending = 0
        self._complete = False
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self._pending += 1

    def finish_one(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._complete and self._pending == 0
        if last:
            os.close(self.fd)

    def complete(self) -> None:
        with self._lock:
            self._complete = True
            last = self._pending == 0
        if last:
            os.close(self.fd)


class _Stream:
    """Exact reads from a stream of chunks, as views into them (no copy unless a read
    spans two chunks)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._chunk = memoryview(b"")
        self._at = 0

    def views(self, n: int) -> Iterator[memoryview]:
        """Up to ``n`` bytes, as views (fewer only at the stream's end)."""
        while n > 0:
            if self._at >= len(self._chunk):
                chunk = next(self._chunks, None)
                if chunk is None:
                    return
                self._chunk, self._at = memoryview(chunk), 0
                continue
            end = min(len(self._chunk), self._at + n)
            view = self._chunk[self._at : end]
            self._at = end
            n -= len(view)
            yield view

    def read(self, n: int) -> bytes:
        return b"".join(self.views(n))

    def drain(self) -> None:
        """Read to the end: the source checks size and checksum there."""
        for _ in self._chunks:
            pass


def _destination(into: Path, info: tarfile.TarInfo, what: str) -> Path:
    name = PurePosixPath(info.name)
    if name.is_absolute() or ".." in name.parts or not name.parts or name.parts == (".",):
        raise OperationFailed(
            f"{what} holds {info.name!r}, a name outside the data directory; nothing of it "
            "was used.",
            hint="The backup was not written by 'ptool-ops pitr base-backup'; use another one.",
        )
    return into.joinpath(*name.parts)


def unpack(
    chunks: Iterable[bytes],
    into: Path,
    *,
    what: str,
    progress: Callable[[int], None] | None = None,
    writers: int = WRITERS,
) -> int:
    """Unpack the tar in ``chunks`` into ``into`` (made if missing; files must not exist
    yet); ``what`` names the backup in errors, ``progress`` is told the bytes read so far.
    Returns the number of files written."""
    into.mkdir(parents=True, exist_ok=True)
    stream = _Stream(chunks)
    budget = _Budget(IN_FLIGHT)
    failed: list[tuple[Path, OSError]] = []
    stopping = threading.Event()
    made: set[Path] = {into}
    files = 0
    done = 0

    def write(file: _File, view: memoryview, offset: int, cost: int) -> None:
        try:
            while view and not stopping.is_set():
                written = os.pwrite(file.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as err:
            failed.append((file.path, err))
            stopping.set()
        finally:
            file.finish_one()
            budget.give(cost)

    def directory(path: Path, mode: int) -> None:
        if path not in made:
            path.mkdir(mode=mode, parents=True, exist_ok=True)
            made.add(path)

    with ThreadPoolExecutor(max(1, writers), thread_name_prefix="untar") as pool:
        try:
            while not failed:
                header = stream.read(BLOCK)
                if len(header) < BLOCK or header == bytes(BLOCK):
                    break  # the end-of-archive blocks (or a bare end)
                try:
                    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
                except tarfile.HeaderError as err:
                    raise OperationFailed(
                        f"{what} is not a readable tar after {done} bytes ({err}).",
                        hint="Nothing live was touched; use another base backup.",
                    ) from None
                done += BLOCK
                dest = _destination(into, info, what)
                if info.isdir():
                    directory(dest, 0o700 | (info.mode & 0o050))
                    continue
                if not info.isreg():
                    raise OperationFailed(
                        f"{what} holds {info.name!r}, {_KINDS.get(info.type, 'of tar type ')}"
                        f"{'' if info.type in _KINDS else info.type.decode(errors='replace')}; a"
                        " base backup holds directories and regular files only, so nothing of"
                        " it was used.",
                        hint="The backup was not written by 'ptool-ops pitr base-backup'; use "
                        "another one.",
                    )
                directory(dest.parent, 0o700)
                try:
                    fd = os.open(
                        dest,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                        0o600 | (info.mode & 0o040),
                    )
                except OSError as err:
                    failed.append((dest, err))
                    break
                file = _File(fd, dest)
                offset = 0
                try:
                    while offset < info.size and not failed:
                        got = 0
                        for view in stream.views(min(PIECE, info.size - offset)):
                            file.add()
                            if len(view) < SMALL:
                                write(file, view, offset, 0)
                            else:
                                budget.take(len(view))
                                pool.submit(write, file, view, offset, len(view))
                            offset += len(view)
                            got += len(view)
                        if not got:
                            break
                        if progress is not None:
                            progress(done + offset)
                finally:
                    file.complete()
                if failed:
                    break
                if offset < info.size:
                    raise OperationFailed(
                        f"{what} ends inside {info.name!r} ({offset} of {info.size} bytes).",
                        hint="The stored base backup is cut short; use another one.",
                    )
                files += 1
                padding = -info.size % BLOCK
                stream.read(padding)
                done += info.size + padding
            if not failed:
                stream.drain()
        except BaseException:
            stopping.set()  # queued writes of a failed unpack are not worth waiting for
            raise
    if failed:
        path, error = failed[0]
        raise OperationFailed(
            f"cannot write {path} while unpacking {what}: {error.strerror or error}.",
            hint="Nothing live was touched; check the free space of the restore directory "
            "and remove the partial copy with 'ptool-ops pitr drop'.",
        )
    return files
