"""Logical backups: create, list, show, verify, restore, prune (library API; the CLI is
``ptool_ops.cli.backup``). Objects and manifests live in :mod:`ptool_ops.repo`.

    create(settings, *, progress=None, exact_counts=True, jobs=2,
           split_bytes=SPLIT_TABLE_BYTES) -> CreateResult
    list_backups(settings) -> list[BackupSummary]
    show(settings, backup_id) -> BackupManifest
    verify(settings, backup_id, *, restore=False, jobs=2, progress=None) -> VerifyResult
    restore(settings, backup_id, *, target_db=None, in_place=False, jobs=2, dry_run=False,
            progress=None) -> RestoreResult
    prune(settings, *, policy=None, dry_run=False, orphan_age=timedelta(hours=1)) -> PruneResult
"""

from __future__ import annotations

from ptool_ops.backup.create import create
from ptool_ops.backup.models import BackupManifest, BackupSummary
from ptool_ops.backup.prune import prune
from ptool_ops.backup.restore import restore
from ptool_ops.backup.verify import verify
from ptool_ops.settings import EnvironmentSettings

__all__ = ["create", "list_backups", "prune", "restore", "show", "verify"]


def list_backups(settings: EnvironmentSettings) -> list[BackupSummary]:
    """Complete backups, oldest first."""
    from ptool_ops.backup.catalog import manifests, verified_at
    from ptool_ops.repo import for_settings

    repo = for_settings(settings)
    return [BackupSummary.of(m, verified_at(repo, m.id)) for m in manifests(repo)]


def show(settings: EnvironmentSettings, backup_id: str) -> BackupManifest:
    from ptool_ops.backup.catalog import resolve
    from ptool_ops.repo import for_settings

    return resolve(for_settings(settings), backup_id)
