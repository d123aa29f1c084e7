"""Manifests: what a backup (or a base backup) is made of, written last, read by everything.

A manifest is JSON (``manifest.json`` beside the objects it lists). Its presence is what
makes a backup *complete*: objects without a manifest are leftovers of a failed or killed
run, never listed, and removed by ``prune``. ``format_version`` rises when a reader of an
older ptool-ops could misread the file; readers refuse versions newer than they know
(:class:`UnreadableManifest` with ``newer`` set) and ignore fields they do not know, at
every level: optional fields may be added without raising the version.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ptool_ops.repo.errors import UnreadableManifest

FORMAT_VERSION = 1


class EncryptionInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    algorithm: str
    chunk_size: int
    key_id: str
    kdf: str = "hkdf-sha256"


class ObjectEntry(BaseModel):
    """One stored object: its key, and size and SHA-256 of the bytes as stored."""

    model_config = ConfigDict(extra="ignore")

    key: str
    size: int
    sha256: str
    raw_size: int
    compression: str | None = "zstd"
    compression_level: int | None = None
    encryption: EncryptionInfo | None = None


class Manifest(BaseModel):
    """Fields every manifest has; each kind (logical backup, base backup) adds its own."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    kind: str
    id: str
    environment: str
    status: str = "complete"
    started_at: datetime
    finished_at: datetime
    tool_version: str
    objects: list[ObjectEntry]

    @property
    def stored_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def encrypted(self) -> bool:
        return any(o.encryption is not None for o in self.objects)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode() + b"\n"


M = TypeVar("M", bound=Manifest)


def parse_manifest(raw: bytes, model: type[M], where: str) -> M:
    """The manifest in ``raw``; :class:`UnreadableManifest` (``newer`` set for a higher
    ``format_version``) when it is not one this ptool-ops can trust."""
    import json

    try:
        data: Any = json.loads(raw)
    except ValueError:
        raise UnreadableManifest(f"the manifest {where} is not valid JSON.") from None
    if not isinstance(data, dict):
        raise UnreadableManifest(f"the manifest {where} is not a JSON object.")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UnreadableManifest(
            f"the manifest {where} has format version {version}; this ptool-ops reads up to "
            f"{FORMAT_VERSION}.",
            hint="Upgrade ptool-ops to read this repository.",
            newer=True,
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UnreadableManifest(
            f"the manifest {where} is invalid at {field}: {first['msg']}."
        ) from None
