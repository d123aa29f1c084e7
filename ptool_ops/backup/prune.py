"""``backup prune``: apply the retention policy, remove leftovers of failed or killed runs.

Deleting a backup removes its manifest first, so a prune interrupted half-way leaves
objects without a manifest (an orphan, cleaned next time), never a listed backup with
missing objects. Orphans and unfinished uploads are only touched once older than
``orphan_age`` so a backup running right now is left alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ptool_ops.backup.listing import backup_ids_with_objects, manifests, verified_at
from ptool_ops.backup.models import PruneResult, backup_dir, manifest_key
from ptool_ops.backup.retention import Candidate, Policy, decide
from ptool_ops.settings import EnvironmentSettings

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

DEFAULT_ORPHAN_AGE = timedelta(hours=1)


def policy_for(settings: EnvironmentSettings) -> Policy:
    return Policy(
        keep_last=settings.backup_keep_last,
        keep_daily=settings.backup_keep_daily,
        keep_weekly=settings.backup_keep_weekly,
        keep_monthly=settings.backup_keep_monthly,
    )


def prune(
    env: Environment,
    *,
    policy: Policy | None = None,
    dry_run: bool = False,
    orphan_age: timedelta = DEFAULT_ORPHAN_AGE,
    now: datetime | None = None,
) -> PruneResult:
    repo = env.repository()
    policy = policy or policy_for(env.settings)
    cutoff = (now or datetime.now(UTC)) - orphan_age
    complete = manifests(repo)
    candidates = [
        Candidate(m.id, m.started_at, verified_at(repo, m.id) is not None) for m in complete
    ]
    decisions = decide(candidates, policy)
    ids = {m.id for m in complete}
    orphans: dict[str, list[str]] = {}
    for backup_id, keys in backup_ids_with_objects(repo).items():
        if backup_id in ids:
            continue
        newest = max(
            (o.modified for o in repo.storage.list(f"{backup_dir(backup_id)}/")), default=None
        )
        if newest is None or newest <= cutoff:
            orphans[backup_id] = keys
    partials = [p for p in repo.storage.list_partial("") if p.started <= cutoff]
    result = PruneResult(
        dry_run=dry_run,
        kept=[d for d in decisions if d.keep],
        deleted=[d for d in decisions if not d.keep],
        orphans=sorted(orphans),
        partial_uploads=[f"{p.key} ({p.upload_id})" for p in partials],
    )
    if dry_run:
        return result
    with env.audit(
        "backup.prune",
        {
            "deleted": [d.id for d in result.deleted],
            "orphans": result.orphans,
            "partial_uploads": len(partials),
        },
    ):
        for decision in result.deleted:
            repo.storage.delete(manifest_key(decision.id))
            for item in list(repo.storage.list(f"{backup_dir(decision.id)}/")):
                repo.storage.delete(item.key)
        for keys in orphans.values():
            for key in keys:
                repo.storage.delete(key)
        for partial in partials:
            repo.storage.abort_partial(partial)
    return result
