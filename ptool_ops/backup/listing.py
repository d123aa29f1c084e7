"""Finding backups in a repository: list, resolve an id, read verification marks.

One ``LIST`` of ``backups/`` groups every key by backup id (:func:`scan`). A prefix that
holds a ``manifest.json`` is a backup -- readable or not: a manifest this ptool-ops cannot
read (damaged JSON, failed validation, a newer ``format_version``) makes an
:class:`Unreadable` entry, which ``list`` shows and ``prune`` refuses to guess about.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ptool_ops.backup.models import (
    PREFIX,
    BackupManifest,
    BackupSummary,
    manifest_key,
    verified_key,
)
from ptool_ops.repo.errors import ObjectMissing, UnreadableManifest
from ptool_ops.repo.repository import Repository
from ptool_ops.repo.storage import ObjectInfo

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

log = logging.getLogger(__name__)

#: what a backup id (or a prefix of one) may contain
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*")


def new_id(now: datetime | None = None) -> str:
    """Sortable by time: ``20261124T171217Z-3f9a``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


@dataclass
class Found:
    """Everything stored under ``backups/<id>/``."""

    id: str
    objects: list[ObjectInfo] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objects]

    @property
    def has_manifest(self) -> bool:
        return manifest_key(self.id) in self.keys

    @property
    def newest(self) -> datetime | None:
        return max((o.modified for o in self.objects), default=None)


@dataclass
class Unreadable:
    """A backup whose manifest is there but cannot be trusted."""

    id: str
    error: UnreadableManifest
    started_at: datetime | None = None

    @property
    def newer(self) -> bool:
        return self.error.newer

    def summary(self) -> BackupSummary:
        return BackupSummary(
            id=self.id,
            started_at=self.started_at,
            finished_at=None,
            database=None,
            schema_version=None,
            stored_bytes=None,
            raw_bytes=None,
            encrypted=None,
            verified_at=None,
            status="newer-format" if self.newer else "unreadable",
            problem=self.error.message,
        )


def must_exist(env: Environment) -> bool:
    """Whether the repository's location must exist to be read: always, but for the local
    environment's default directory, which the first backup makes."""
    return bool(env.settings.repo_url) or not env.is_local


def scan(repo: Repository, *, must_exist: bool = True) -> dict[str, Found]:
    """Every ``backups/<id>/`` prefix and its objects, complete or not. An empty answer
    is checked: a ``file://`` directory that does not exist is an error (a typo in
    repo_url must not read as "no backups"), unless ``must_exist`` is false."""
    found: dict[str, Found] = {}
    for item in repo.storage.list(f"{PREFIX}/"):
        parts = item.key.split("/")
        if len(parts) >= 3:
            found.setdefault(parts[1], Found(parts[1])).objects.append(item)
    if not found and must_exist:
        repo.storage.check_location()
    return found


def _started_at(raw: bytes) -> datetime | None:
    """Best effort, for listing an unreadable manifest in its place."""
    try:
        value = json.loads(raw).get("started_at")
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except (ValueError, AttributeError, TypeError):
        return None


def read_all(
    repo: Repository, found: dict[str, Found] | None = None, *, must_exist: bool = True
) -> tuple[list[BackupManifest], list[Unreadable]]:
    """The readable manifests (oldest first by recorded start time) and the backups whose
    manifest cannot be read."""
    found = scan(repo, must_exist=must_exist) if found is None else found
    readable: list[BackupManifest] = []
    unreadable: list[Unreadable] = []
    for backup_id, entry in sorted(found.items()):
        if not entry.has_manifest:
            continue
        key = manifest_key(backup_id)
        try:
            raw = repo.storage.get_bytes(key)
        except ObjectMissing:
            continue  # deleted since the listing
        try:
            readable.append(repo.parse_manifest(raw, key, BackupManifest))
        except UnreadableManifest as err:
            log.warning("cannot read %s: %s", key, err.message)
            unreadable.append(Unreadable(backup_id, err, _started_at(raw)))
    readable.sort(key=lambda m: (m.started_at, m.id))
    return readable, unreadable


def manifests(repo: Repository, *, must_exist: bool = True) -> list[BackupManifest]:
    """Complete, readable backups, oldest first by recorded start time."""
    return read_all(repo, must_exist=must_exist)[0]


def summaries(repo: Repository, *, must_exist: bool = True) -> list[BackupSummary]:
    """'backup list': every backup holding a manifest, oldest first; those whose manifest
    cannot be read are in their place by the start time they record (first if none)."""
    readable, unreadable = read_all(repo, must_exist=must_exist)
    rows = [BackupSummary.of(m, verified_at(repo, m.id)) for m in readable]
    rows += [u.summary() for u in unreadable]
    floor = datetime.min.replace(tzinfo=UTC)
    return sorted(rows, key=lambda r: (r.started_at or floor, r.id))


def check_id(backup_id: str) -> None:
    if backup_id != "latest" and not _ID.fullmatch(backup_id):
        raise ObjectMissing(
            f"{backup_id!r} is not a backup id (ids look like 20261124T171217Z-3f9a).",
            hint="'ptool-ops backup list' shows the ids; a unique prefix or 'latest' works too.",
        )


def resolve(repo: Repository, backup_id: str, *, must_exist: bool = True) -> BackupManifest:
    """``latest``, an exact id, or an unambiguous prefix of one."""
    check_id(backup_id)
    if backup_id != "latest" and repo.storage.exists(manifest_key(backup_id)):
        return repo.read_manifest(manifest_key(backup_id), BackupManifest)
    every, unreadable = read_all(repo, must_exist=must_exist)
    if backup_id == "latest":
        if not every:
            raise ObjectMissing(
                f"the repository {repo.url} holds no complete backup.",
                hint="Create one with 'ptool-ops backup create'.",
            )
        return every[-1]
    matches = [m for m in every if m.id.startswith(backup_id)]
    others = [u for u in unreadable if u.id.startswith(backup_id)]
    if len(matches) == 1 and not others:
        return matches[0]
    if len(matches) + len(others) > 1:
        raise ObjectMissing(
            f"{backup_id!r} matches {len(matches) + len(others)} backups; give more of the id.",
            hint="'ptool-ops backup list' shows the ids.",
        )
    if others:
        raise others[0].error
    raise ObjectMissing(
        f"there is no complete backup {backup_id!r} in {repo.url}.",
        hint="'ptool-ops backup list' shows the complete backups.",
    )


def verified_at(repo: Repository, backup_id: str) -> str | None:
    mark = repo.get_json(verified_key(backup_id))
    if mark and mark.get("ok"):
        return str(mark.get("verified_at"))
    return None
