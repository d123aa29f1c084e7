"""The repository: checksums, compression, encryption and manifests over any :class:`Storage`.

Writing an object runs the stream through ``zstd → (AES-256-GCM chunks) → SHA-256 → storage``
and returns an :class:`ObjectEntry` for the manifest; reading runs it back and checks the
SHA-256 and byte counts at the end. Memory stays bounded whatever the object's size: a read
chunk, the compressor's window, one encryption chunk, and the backend's own buffers.

Layout (version 1, see docs/backup-repository.md)::

    ptool-repo.json                       repository marker: {"format": ..., "version": 1}
    backups/<id>/manifest.json            written last: a backup without it is incomplete
    backups/<id>/<name>.pgdump.zst[.aes]  objects listed in the manifest
    backups/<id>/verified.json            the last successful 'backup verify'
    pitr/...                              reserved for base backups and WAL
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import ConfigError
from ptool_ops.repo import crypto
from ptool_ops.repo.errors import CorruptObject, ObjectMissing, WrongKey
from ptool_ops.repo.storage import Storage

if TYPE_CHECKING:  # the models load pydantic: ``wal push`` (once per segment) never needs them
    from ptool_ops.repo.manifest import M, ObjectEntry

MARKER = "ptool-repo.json"
REPO_FORMAT = "ptool-ops-repository"
LAYOUT_VERSION = 1

#: called with (raw bytes read so far, stored bytes written so far)
Progress = Callable[[int, int], None]


class Repository:
    def __init__(
        self,
        storage: Storage,
        *,
        key: bytes | None = None,
        key_loader: Callable[[], bytes | None] | None = None,
        compression_level: int = 3,
    ) -> None:
        self.storage = storage
        self._key = key
        self._key_loader = key_loader
        self.compression_level = compression_level

    @property
    def key(self) -> bytes | None:
        """The encryption key, resolved on first use (listing and pruning never need it)."""
        if self._key_loader is not None:
            self._key = self._key_loader()
            self._key_loader = None
        return self._key

    @property
    def url(self) -> str:
        return self.storage.url

    # --- the repository marker ------------------------------------------------------------

    def ensure_initialised(self) -> None:
        """Write the marker on first use; refuse a marker of a newer layout."""
        if not self.check_marker():
            self.write_marker()

    def check_marker(self) -> bool:
        """Whether the marker is there (reads only); refuses a location that holds something
        else or a layout newer than this ptool-ops knows."""
        if self.storage.exists(MARKER):
            data = self.get_json(MARKER)  # None: not a JSON object
            if data is None or data.get("format") != REPO_FORMAT:
                raise ConfigError(
                    f"{self.url} holds something other than a ptool-ops repository.",
                    hint="Point repo_url at an empty location or an existing repository.",
                )
            version = data.get("version", 0)
            if not isinstance(version, int) or version > LAYOUT_VERSION:
                raise ConfigError(
                    f"the repository {self.url} has layout version {version}; this "
                    f"ptool-ops knows up to {LAYOUT_VERSION}.",
                    hint="Upgrade ptool-ops.",
                )
            return True
        return False

    def write_marker(self) -> None:
        """Make the location a repository of this layout."""
        from ptool_ops.repo.manifest import FORMAT_VERSION

        marker = {
            "format": REPO_FORMAT,
            "version": LAYOUT_VERSION,
            "manifest_format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
        }
        self.storage.put_bytes(MARKER, json.dumps(marker, indent=2).encode() + b"\n")

    # --- objects --------------------------------------------------------------------------

    def write_object(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        progress: Progress | None = None,
        encrypt: bool = True,
        before_store: Callable[[], None] | None = None,
    ) -> ObjectEntry:
        """Store ``chunks`` compressed (and encrypted when a key is set); the upload is
        aborted if anything fails, so a failed write leaves no object. ``before_store``
        runs before the store is first touched (see :meth:`Storage.open_writer`)."""
        import zstandard

        from ptool_ops.repo.manifest import EncryptionInfo, ObjectEntry

        compressor = zstandard.ZstdCompressor(level=self.compression_level).compressobj()
        secret = self.key if encrypt else None
        encryptor = crypto.Encryptor(secret) if secret is not None else None
        digest = hashlib.sha256()
        counts = [0, 0]  # raw, stored

        def stored(data: bytes) -> Iterator[bytes]:
            if encryptor is not None:
                data = encryptor.update(data)
            if data:
                digest.update(data)
                counts[1] += len(data)
                yield data

        def pipeline() -> Iterator[bytes]:
            for chunk in chunks:
                counts[0] += len(chunk)
                yield from stored(compressor.compress(chunk))
                if progress is not None:
                    progress(counts[0], counts[1])
            tail = compressor.flush()
            if encryptor is not None:
                tail = encryptor.update(tail) + encryptor.finalize()
            if tail:
                digest.update(tail)
                counts[1] += len(tail)
                yield tail

        self.storage.put_stream(key, pipeline(), before_store=before_store)
        if progress is not None:
            progress(counts[0], counts[1])
        encryption = None
        if encryptor is not None and secret is not None:
            encryption = EncryptionInfo(
                algorithm=crypto.ALGORITHM,
                chunk_size=encryptor.chunk_size,
                key_id=crypto.key_id(secret),
            )
        return ObjectEntry(
            key=key,
            size=counts[1],
            sha256=digest.hexdigest(),
            raw_size=counts[0],
            compression="zstd",
            compression_level=self.compression_level,
            encryption=encryption,
        )

    def pack(self, data: bytes) -> bytes:
        """A whole small object (a WAL segment, at most a few dozen MB) as it is stored:
        zstd with the content size and checksum in its frame, then sealed when a key is set.
        Such objects carry no manifest entry: :meth:`unpack` checks them on their own."""
        import zstandard

        packed = zstandard.ZstdCompressor(
            level=self.compression_level, write_checksum=True, write_content_size=True
        ).compress(data)
        secret = self.key
        if secret is None:
            return packed
        encryptor = crypto.Encryptor(secret)
        return encryptor.update(packed) + encryptor.finalize()

    def unpack(self, blob: bytes, name: str) -> bytes:
        """The original bytes of a :meth:`pack` object; :class:`CorruptObject` when the
        frame's checksum or size fails, :class:`WrongKey` when it cannot be decrypted."""
        import zstandard

        if blob.startswith(crypto.MAGIC):
            secret = self.key
            if secret is None:
                raise WrongKey(
                    f"{name} is encrypted and no backup key is configured.",
                    hint="Set backup_key or backup_key_secret (or --key-file) for this "
                    "environment.",
                )
            decryptor = crypto.Decryptor(secret, name)
            blob = decryptor.update(blob) + decryptor.finalize()
        try:
            return zstandard.ZstdDecompressor().decompress(blob)
        except zstandard.ZstdError as err:
            raise CorruptObject(
                f"{name} is damaged: {err}.",
                hint="The stored copy fails its checksum; use another copy or base backup.",
            ) from None

    def check_key(self, entry: ObjectEntry) -> None:
        """Fail before downloading when the configured key cannot decrypt ``entry``."""
        info = entry.encryption
        if info is None:
            return
        if info.algorithm != crypto.ALGORITHM:
            raise CorruptObject(f"{entry.key} uses unknown encryption {info.algorithm!r}.")
        key = self.key
        if key is None:
            raise WrongKey(
                f"{entry.key} is encrypted and no backup key is configured.",
                hint="Set backup_key or backup_key_secret for this environment.",
            )
        if crypto.key_id(key) != info.key_id:
            raise WrongKey(
                f"{entry.key} was encrypted with key {info.key_id}, but the configured "
                f"backup key is {crypto.key_id(key)}.",
                hint="Configure the key the backup was made with (backup_key or "
                "backup_key_secret).",
            )

    def read_stored(self, entry: ObjectEntry) -> Iterator[bytes]:
        """The stored bytes; raises :class:`CorruptObject` at the end if size or SHA-256
        differ from the manifest."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.storage.get_stream(entry.key):
            digest.update(chunk)
            size += len(chunk)
            if size > entry.size:
                raise self._mismatch(entry, "is longer than recorded")
            yield chunk
        if size != entry.size:
            raise self._mismatch(entry, f"has {size} bytes, the manifest says {entry.size}")
        if digest.hexdigest() != entry.sha256:
            raise self._mismatch(entry, "does not match its SHA-256 checksum")

    @staticmethod
    def _mismatch(entry: ObjectEntry, what: str) -> CorruptObject:
        return CorruptObject(
            f"{entry.key} {what}: the stored object is damaged.",
            hint="Use another backup ('ptool-ops backup list'); keep this one for investigation.",
        )

    def checksum(self, entry: ObjectEntry, progress: Progress | None = None) -> None:
        """Re-read ``entry`` and compare size and SHA-256 (no decryption)."""
        done = 0
        for chunk in self.read_stored(entry):
            done += len(chunk)
            if progress is not None:
                progress(done, done)

    def read_object(self, entry: ObjectEntry, progress: Progress | None = None) -> Iterator[bytes]:
        """The original bytes: checksum, decrypt and decompress as they stream."""
        import zstandard

        self.check_key(entry)
        decryptor = None
        if entry.encryption is not None:
            key = self.key
            assert key is not None
            decryptor = crypto.Decryptor(key, entry.key)
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        raw = stored = 0

        def inflate(data: bytes) -> bytes:
            try:
                return decompressor.decompress(data)
            except zstandard.ZstdError as err:
                raise CorruptObject(
                    f"{entry.key} cannot be decompressed ({err}).",
                    hint="The stored object is damaged; use another backup.",
                ) from None

        source = self.read_stored(entry)
        for chunk in source:
            stored += len(chunk)
            try:
                data = decryptor.update(chunk) if decryptor is not None else chunk
                out = inflate(data) if data else b""
            except CorruptObject:
                # name the root cause: a checksum mismatch explains a decode failure
                for _rest in source:
                    pass
                raise
            if out:
                raw += len(out)
                yield out
            if progress is not None:
                progress(raw, stored)
        if decryptor is not None:
            out = inflate(decryptor.finalize())
            raw += len(out)
            if out:
                yield out
        if not decompressor.eof:
            raise CorruptObject(f"{entry.key} ends in the middle of its compressed stream.")
        if raw != entry.raw_size:
            raise CorruptObject(
                f"{entry.key} decompresses to {raw} bytes, the manifest says {entry.raw_size}."
            )

    # --- small JSON documents and manifests -----------------------------------------------

    def put_json(self, key: str, data: dict[str, Any]) -> None:
        self.storage.put_bytes(key, json.dumps(data, indent=2, default=str).encode() + b"\n")

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self.storage.get_bytes(key)
        except ObjectMissing:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def read_manifest(self, key: str, model: type[M]) -> M:
        return self.parse_manifest(self.storage.get_bytes(key), key, model)

    def parse_manifest(self, raw: bytes, key: str, model: type[M]) -> M:
        from ptool_ops.repo.manifest import parse_manifest

        return parse_manifest(raw, model, f"{self.url}/{key}")
