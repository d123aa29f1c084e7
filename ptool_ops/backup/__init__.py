"""Logical backups: create, list, show, verify, restore, prune (library API; the CLI is
``ptool_ops.cli.backup``). Objects and manifests live in :mod:`ptool_ops.repo`.

Every function takes the :class:`~ptool_ops.environment.Environment` it acts on::

    create(env, *, progress=None, exact_counts=True, jobs=2,
           split_bytes=SPLIT_TABLE_BYTES) -> CreateResult
    list_backups(env) -> list[BackupSummary]
    show(env, backup_id) -> BackupManifest
    verify(env, backup_id, *, restore=False, jobs=2, progress=None) -> VerifyResult
    restore(env, backup_id, *, target_db=None, in_place=False, jobs=2, dry_run=False,
            progress=None) -> RestoreResult
    prune(env, *, policy=None, dry_run=False, orphan_age=timedelta(hours=1)) -> PruneResult
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptool_ops.backup.create import create
from ptool_ops.backup.models import BackupManifest, BackupSummary
from ptool_ops.backup.prune import prune
from ptool_ops.backup.restore import restore
from ptool_ops.backup.verify import verify

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

__all__ = ["create", "list_backups", "prune", "restore", "show", "verify"]


def list_backups(env: Environment) -> list[BackupSummary]:
    """Complete backups, oldest first."""
    from ptool_ops.backup.listing import manifests, verified_at

    repo = env.repository()
    return [BackupSummary.of(m, verified_at(repo, m.id)) for m in manifests(repo)]


def show(env: Environment, backup_id: str) -> BackupManifest:
    from ptool_ops.backup.listing import resolve

    return resolve(env.repository(), backup_id)
