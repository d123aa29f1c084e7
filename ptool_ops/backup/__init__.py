"""Logical backups: create, list, show, verify, restore, prune (library API; the CLI is
``ptool_ops.cli.backup``). Objects and manifests live in :mod:`ptool_ops.repo`.

Every function takes the :class:`~ptool_ops.environment.Environment` it acts on::

    create(env, *, progress=None, exact_counts=True, jobs=2,
           split_bytes=SPLIT_TABLE_BYTES) -> CreateResult
    list_backups(env) -> list[BackupSummary]
    show(env, backup_id) -> BackupManifest
    verify(env, backup_id, *, restore=False, jobs=2, progress=None) -> VerifyResult
    restore(env, backup_id, *, target_db=None, in_place=False, jobs=2, dry_run=False,
            progress=None, lock_wait_s=None) -> RestoreResult
    prune(env, *, policy=None, dry_run=False, orphan_age=timedelta(hours=1),
          forget_unreadable=(), lock_wait_s=30.0) -> PruneResult
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
    """Every backup holding a manifest, oldest first: complete ones, and those whose
    manifest this ptool-ops cannot read (``status`` newer-format / unreadable)."""
    from ptool_ops.backup.listing import must_exist, summaries

    return summaries(env.repository(), must_exist=must_exist(env))


def show(env: Environment, backup_id: str) -> BackupManifest:
    from ptool_ops.backup.listing import must_exist, resolve

    return resolve(env.repository(), backup_id, must_exist=must_exist(env))
