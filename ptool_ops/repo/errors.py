"""Errors of the backup repository (all carry the exit codes of :mod:`ptool_ops.errors`)."""

from __future__ import annotations

from ptool_ops.errors import ConfigError, OperationFailed


class ObjectMissing(OperationFailed):
    """A key the caller expected is not in the repository."""

    kind = "object_missing"


class CorruptObject(OperationFailed):
    """Stored bytes do not match their checksum, or fail to decrypt or decompress."""

    kind = "corrupt_object"


class UnreadableManifest(CorruptObject):
    """A manifest that cannot be trusted: damaged JSON, failed validation, or (``newer``)
    a ``format_version`` above the one this ptool-ops knows."""

    kind = "unreadable_manifest"

    def __init__(self, message: str, *, hint: str | None = None, newer: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.newer = newer


class WrongKey(ConfigError):
    """The configured encryption key is not the one the object was written with."""

    kind = "wrong_key"
