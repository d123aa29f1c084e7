"""The backup repository shared by ``backup/`` and ``pitr/``.

:func:`for_settings` opens an environment's repository: its ``repo_url`` (``s3://`` or
``file://``), or ``file://<local_dir>/repo`` for the local environment. Backends implement
the narrow :class:`~ptool_ops.repo.storage.Storage` interface; checksums, compression,
encryption and manifests are in :class:`~ptool_ops.repo.repository.Repository`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptool_ops.repo.repository import Repository
    from ptool_ops.settings import EnvironmentSettings


def repo_url(settings: EnvironmentSettings) -> str:
    """The environment's repository URL (the local environment has a default)."""
    from ptool_ops.errors import ConfigError

    if settings.repo_url:
        return settings.repo_url
    if settings.is_local:
        return f"file://{(settings.local_dir / 'repo').resolve()}"
    raise ConfigError(
        f"environment {settings.name!r} has no backup repository.",
        hint=f"Set repo_url (s3://bucket/prefix or file:///path) in [environments."
        f"{settings.name}] of ptool-ops.toml, or PTOOL_REPO_URL.",
    )


def for_settings(settings: EnvironmentSettings) -> Repository:
    """Open the environment's repository with its key (read on first use) and compression
    level."""
    from ptool_ops.repo.crypto import load_key
    from ptool_ops.repo.repository import Repository
    from ptool_ops.repo.storage import open_storage

    storage = open_storage(
        repo_url(settings),
        part_size=settings.repo_part_size_mb * 1024 * 1024,
        checksum=settings.repo_s3_checksum == "crc32",
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
    )
    return Repository(
        storage,
        key_loader=lambda: load_key(settings),
        compression_level=settings.backup_compression_level,
    )
