"""Finding backups in a repository: list, resolve an id, read verification marks."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from ptool_ops.backup.models import PREFIX, BackupManifest, manifest_key, verified_key
from ptool_ops.repo.errors import CorruptObject, ObjectMissing
from ptool_ops.repo.repository import Repository

log = logging.getLogger(__name__)


def new_id(now: datetime | None = None) -> str:
    """Sortable by time: ``20261124T171217Z-3f9a``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


def manifests(repo: Repository) -> list[BackupManifest]:
    """Complete backups (those with a manifest), oldest first by recorded start time."""
    found = []
    for item in repo.storage.list(f"{PREFIX}/"):
        parts = item.key.split("/")
        if len(parts) == 3 and parts[2] == "manifest.json":
            try:
                found.append(repo.read_manifest(item.key, BackupManifest))
            except (CorruptObject, ObjectMissing) as err:
                log.warning("skipping %s: %s", item.key, err.message)
    return sorted(found, key=lambda m: (m.started_at, m.id))


def backup_ids_with_objects(repo: Repository) -> dict[str, list[str]]:
    """Every ``backups/<id>/`` directory and its object keys, complete or not."""
    found: dict[str, list[str]] = {}
    for item in repo.storage.list(f"{PREFIX}/"):
        parts = item.key.split("/")
        if len(parts) >= 3:
            found.setdefault(parts[1], []).append(item.key)
    return found


def resolve(repo: Repository, backup_id: str) -> BackupManifest:
    """``latest``, an exact id, or an unambiguous prefix of one."""
    if backup_id != "latest" and repo.storage.exists(manifest_key(backup_id)):
        return repo.read_manifest(manifest_key(backup_id), BackupManifest)
    every = manifests(repo)
    if backup_id == "latest":
        if not every:
            raise ObjectMissing(
                f"the repository {repo.url} holds no complete backup.",
                hint="Create one with 'ptool-ops backup create'.",
            )
        return every[-1]
    matches = [m for m in every if m.id.startswith(backup_id)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ObjectMissing(
            f"{backup_id!r} matches {len(matches)} backups; give more of the id.",
            hint="'ptool-ops backup list' shows the ids.",
        )
    raise ObjectMissing(
        f"there is no complete backup {backup_id!r} in {repo.url}.",
        hint="'ptool-ops backup list' shows the complete backups.",
    )


def verified_at(repo: Repository, backup_id: str) -> str | None:
    mark = repo.get_json(verified_key(backup_id))
    if mark and mark.get("ok"):
        return str(mark.get("verified_at"))
    return None
