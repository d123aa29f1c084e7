"""The narrow storage interface every repository backend implements.

Backends move bytes and nothing else: checksums, compression, encryption, retries of whole
objects and manifests live above them in :mod:`ptool_ops.repo.repository`. Keys are
``/``-separated paths relative to the repository root (``backups/<id>/manifest.json``).

A write is a small lifecycle: :meth:`Storage.open_writer` returns a :class:`Writer`;
``write`` as often as needed, then ``commit`` (the object appears, atomically) or ``abort``
(nothing appears). A process killed in between leaves a *partial upload* — a temp file, an
S3 multipart upload — that :meth:`Storage.list_partial` finds and
:meth:`Storage.abort_partial` removes.

Small coordination objects (leases, the prune lock: :mod:`ptool_ops.repo.lease`) need
compare-and-swap: :meth:`Storage.create_exclusive` (S3 ``If-None-Match: *``; on disk a
hard link, which fails like ``O_EXCL`` when the name exists), :meth:`Storage.replace_if`
and :meth:`Storage.delete_if` (S3 ``If-Match: <ETag>``; on disk under an ``flock`` on the
repository's ``.ptool-guard`` file), against the tag :meth:`Storage.read_versioned`
returned.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

#: How much a reader asks for at a time.
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class PartialUpload:
    """An upload that was started and neither committed nor aborted."""

    key: str
    upload_id: str  # the S3 UploadId, or the temp file's name on disk
    started: datetime


@dataclass(frozen=True)
class Versioned:
    """A small object's bytes with the tag a conditional write compares against."""

    data: bytes
    tag: str  # the S3 ETag; on disk the SHA-256 of the content
    modified: datetime  # the store's own time of the last write


class Writer(abc.ABC):
    """One object being written. Exactly one of ``commit`` / ``abort`` ends it."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...


class Storage(abc.ABC):
    """put stream, get stream, list, delete, exists, and the partial-upload lifecycle."""

    url: str

    @abc.abstractmethod
    def open_writer(self, key: str, before_store: Callable[[], None] | None = None) -> Writer:
        """A writer of ``key``. ``before_store`` runs (and may raise) before the writer first
        touches the store, so a caller can produce bytes while a precondition is checked."""

    @abc.abstractmethod
    def get_stream(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The object's bytes in order; raises ``ObjectMissing`` if there is none."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Committed objects whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list_partial(self, prefix: str = "") -> builtins.list[PartialUpload]: ...

    @abc.abstractmethod
    def abort_partial(self, partial: PartialUpload) -> None: ...

    @abc.abstractmethod
    def check_location(self) -> None:
        """Raise (one sentence) unless the repository's location exists and can be read:
        the directory for ``file://``; the bucket, credentials and endpoint for ``s3://``."""

    # --- compare-and-swap, for leases and locks ----------------------------------------------

    @abc.abstractmethod
    def read_versioned(self, key: str) -> Versioned | None:
        """The object with its tag, or None when there is none."""

    @abc.abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> str | None:
        """Store ``data`` under ``key`` only if there is no such object; its tag, or None
        when the key exists (someone else was first)."""

    @abc.abstractmethod
    def replace_if(self, key: str, data: bytes, tag: str) -> str | None:
        """Overwrite ``key`` only while it still carries ``tag``; the new tag, or None when
        the object changed or is gone."""

    @abc.abstractmethod
    def delete_if(self, key: str, tag: str) -> bool:
        """Delete ``key`` only while it still carries ``tag``; whether it was deleted."""

    # --- written once, on top of the primitives ---------------------------------------------

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        before_store: Callable[[], None] | None = None,
    ) -> int:
        """Write ``chunks`` as one object; on any failure the upload is aborted."""
        writer: Writer | None = None
        size = 0
        try:
            writer = self.open_writer(key, before_store)
            for chunk in chunks:
                if chunk:
                    writer.write(chunk)
                    size += len(chunk)
        except BaseException:
            if writer is not None:
                writer.abort()
            close_stream(chunks)
            raise
        writer.commit()
        return size

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_stream(key, [data])

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.get_stream(key))


def close_stream(chunks: Iterable[bytes]) -> None:
    """Run a generator's cleanup (killing its pg_dump, say) now rather than at GC."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def check_key(key: str) -> str:
    """Keys are relative, ``/``-separated, without ``.`` or ``..`` parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
        raise ValueError(f"invalid repository key {key!r}")
    return key
