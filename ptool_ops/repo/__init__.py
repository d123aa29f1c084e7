"""The backup repository shared by ``backup/`` and ``pitr/``.

:func:`open_storage` picks the backend for a URL (``s3://bucket/prefix`` or
``file:///path``); backends implement the narrow :class:`~ptool_ops.repo.storage.Storage`
interface. Checksums, compression, encryption and manifests are in
:class:`~ptool_ops.repo.repository.Repository`. An environment's repository comes from
:meth:`ptool_ops.environment.Environment.repository`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptool_ops.repo.storage import Storage


def open_storage(
    url: str,
    *,
    part_size: int,
    checksum: bool = True,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> Storage:
    """The backend for ``url``: ``file:///path`` or ``s3://bucket/prefix``."""
    from ptool_ops.errors import ConfigError

    if url.startswith("file://"):
        from ptool_ops.repo.file import FileStorage

        return FileStorage.from_url(url)
    if url.startswith("s3://"):
        from ptool_ops.repo.s3 import S3Storage

        return S3Storage.from_url(
            url, part_size=part_size, checksum=checksum, region=region, endpoint_url=endpoint_url
        )
    raise ConfigError(
        f"repository URL {url!r} is neither s3://bucket/prefix nor file:///path.",
        hint="Fix repo_url in ptool-ops.toml or PTOOL_REPO_URL.",
    )
