"""Errors of the backup repository (all carry the exit codes of :mod:`ptool_ops.errors`)."""

from __future__ import annotations

from ptool_ops.errors import ConfigError, OperationFailed


class ObjectMissing(OperationFailed):
    """A key the caller expected is not in the repository."""

    kind = "object_missing"


class CorruptObject(OperationFailed):
    """Stored bytes do not match their checksum, or fail to decrypt or decompress."""

    kind = "corrupt_object"


class WrongKey(ConfigError):
    """The configured encryption key is not the one the object was written with."""

    kind = "wrong_key"
