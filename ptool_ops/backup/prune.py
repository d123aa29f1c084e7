"""``backup prune``: apply the retention policy, remove leftovers of failed or killed runs.

The rules, in the order they are applied (docs/backup-repository.md, "Prune"):

1. One prune at a time: the prune lock ``locks/prune.json`` (a lease,
   :mod:`ptool_ops.repo.lease`) is created with a conditional write; a live holder makes
   this one wait ``lock_wait_s`` and then refuse (:class:`Conflict`, naming it); an
   abandoned one is taken over. A dry run reads only and takes no lock.
2. A prefix holding a ``manifest.json`` is a backup, never a leftover. A manifest this
   ptool-ops cannot read (damaged, or a newer ``format_version``) stops the prune before
   anything is deleted (:class:`Refused`, naming it) -- unless the operator names that
   backup in ``forget_unreadable``: then it is deleted, manifest first.
3. Retention decides over the readable backups (:mod:`ptool_ops.backup.retention`).
   Deleting a backup removes its manifest first, so a prune interrupted half-way leaves
   objects without a manifest (an orphan, cleaned next time), never a listed backup with
   missing objects.
4. A prefix without a manifest whose lease is alive is a backup being written: skipped,
   with its unfinished uploads. Otherwise it is an orphan once its newest object is older
   than ``orphan_age``. It is looked at again right before it goes: a manifest or a live
   lease since spares it. Its lease (if any) is deleted first, and only while it still
   carries the tag just read (a conditional delete), so a lease refreshed in between wins,
   and a holder that was only stalled finds out before it could write a manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ptool_ops.audit import audited
from ptool_ops.backup.listing import (
    Found,
    Unreadable,
    must_exist,
    read_all,
    scan,
    verified_at,
)
from ptool_ops.backup.models import (
    PRUNE_LOCK,
    PruneResult,
    backup_dir,
    lease_key,
    manifest_key,
)
from ptool_ops.backup.retention import Candidate, Policy, decide
from ptool_ops.errors import Conflict, PtoolError, Refused
from ptool_ops.repo.lease import Lease, read_holder
from ptool_ops.repo.repository import Repository
from ptool_ops.repo.storage import PartialUpload
from ptool_ops.settings import EnvironmentSettings

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

DEFAULT_ORPHAN_AGE = timedelta(hours=1)
DEFAULT_LOCK_WAIT_S = 30.0
LOCKS = PRUNE_LOCK.rsplit("/", 1)[0] + "/"


def policy_for(settings: EnvironmentSettings) -> Policy:
    return Policy(
        keep_last=settings.backup_keep_last,
        keep_daily=settings.backup_keep_daily,
        keep_weekly=settings.backup_keep_weekly,
        keep_monthly=settings.backup_keep_monthly,
    )


def _refuse_unreadable(blocking: list[Unreadable]) -> Refused:
    first = blocking[0]
    names = ", ".join(u.id for u in blocking)
    reason = first.error.message.rstrip(".")
    if len(blocking) == 1:
        message = f"prune stopped, nothing was deleted: the manifest of backup {names} cannot "
        message += f"be read ({reason})."
    else:
        message = f"prune stopped, nothing was deleted: the manifests of backups {names} "
        message += f"cannot be read ({first.id}: {reason})."
    if all(u.newer for u in blocking):
        hint = (
            "A newer ptool-ops wrote it: prune with that version. To delete it anyway: "
            f"ptool-ops backup prune --forget-unreadable {first.id}"
        )
    else:
        hint = (
            f"Look at it (ptool-ops backup show {first.id}); if it is beyond saving, delete "
            f"it with: ptool-ops backup prune --forget-unreadable {first.id}"
        )
    return Refused(message, hint=hint)


def _live_lease(repo: Repository, entry: Found, now: datetime) -> str | None:
    """Who is writing this backup right now, or None."""
    if lease_key(entry.id) not in entry.keys:
        return None
    holder = read_holder(repo.storage, lease_key(entry.id))
    if holder is None or holder.dead_because(now) is not None:
        return None
    return holder.describe(now)


def _named(partial: PartialUpload) -> str:
    return f"{partial.key} ({partial.upload_id})"


def _under(partial: PartialUpload, ids: Iterable[str]) -> bool:
    return any(partial.key.startswith(f"{backup_dir(i)}/") for i in ids)


def prune(
    env: Environment,
    *,
    policy: Policy | None = None,
    dry_run: bool = False,
    orphan_age: timedelta = DEFAULT_ORPHAN_AGE,
    forget_unreadable: Iterable[str] = (),
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    now: datetime | None = None,
) -> PruneResult:
    repo = env.repository()
    policy = policy or policy_for(env.settings)
    forget = set(forget_unreadable)
    lock: Lease | None = None
    required = must_exist(env)
    try:
        repo.storage.check_location()
    except PtoolError:
        if required:
            raise
        return PruneResult(dry_run, [], [], [], [])  # the local default, not made yet
    if not dry_run:
        lock = Lease(repo.storage, PRUNE_LOCK, "backup prune").acquire(wait_s=lock_wait_s)
    try:
        result, partials = _plan(repo, policy, dry_run, orphan_age, forget, now, required)
        if lock is not None and lock.took_over is not None:
            result.took_over_lock = lock.took_over.describe()
        if dry_run:
            return result
        assert lock is not None
        with audited(
            env,
            "backup.prune",
            {
                "deleted": [d.id for d in result.deleted],
                "forgotten": result.forgotten,
                "orphans": result.orphans,
                "partial_uploads": len(partials),
                "running": sorted(result.running),
            },
            done=lambda: "the prune completed",
        ):
            _execute(repo, lock, result, partials)
    finally:
        if lock is not None:
            lock.release()
    return result


def _plan(
    repo: Repository,
    policy: Policy,
    dry_run: bool,
    orphan_age: timedelta,
    forget: set[str],
    now: datetime | None,
    required: bool,
) -> tuple[PruneResult, list[PartialUpload]]:
    now = now or datetime.now(UTC)
    cutoff = now - orphan_age
    found = scan(repo, must_exist=required)
    readable, unreadable = read_all(repo, found)
    unknown = sorted(forget - {u.id for u in unreadable})
    if unknown:
        raise Refused(
            f"--forget-unreadable {unknown[0]} names no backup whose manifest cannot be read; "
            "nothing was deleted.",
            hint="It deletes only backups 'ptool-ops backup list' shows as unreadable or "
            "newer-format; retention deletes the others.",
        )
    blocking = [u for u in unreadable if u.id not in forget]
    if blocking:
        raise _refuse_unreadable(blocking)
    candidates = [
        Candidate(m.id, m.started_at, verified_at(repo, m.id) is not None) for m in readable
    ]
    decisions = decide(candidates, policy)
    running: dict[str, str] = {}
    orphans: dict[str, Found] = {}
    young: list[str] = []
    for backup_id, entry in sorted(found.items()):
        if entry.has_manifest:
            continue  # a backup, readable or not: never a leftover
        holder = _live_lease(repo, entry, now)
        if holder is not None:
            running[backup_id] = holder
        elif entry.newest is None or entry.newest <= cutoff:
            orphans[backup_id] = entry
        else:
            young.append(backup_id)
    # a running backup's unfinished uploads are its own; the prune lock's are ours
    partials = [
        p
        for p in repo.storage.list_partial("")
        if p.started <= cutoff
        and not _under(p, [*running, *young])
        and not p.key.startswith(LOCKS)
        # point-in-time objects are pitr prune's: a base backup may upload for hours
        and not p.key.startswith("pitr/")
    ]
    result = PruneResult(
        dry_run=dry_run,
        kept=[d for d in decisions if d.keep],
        deleted=[d for d in decisions if not d.keep],
        orphans=sorted(orphans),
        partial_uploads=[_named(p) for p in partials],
        running=running,
        forgotten=sorted(forget),
        young=young,
    )
    return result, partials


def _delete_prefix(repo: Repository, backup_id: str, first: str | None) -> None:
    """``first`` (the manifest), then everything else under it."""
    if first is not None:
        repo.storage.delete(first)
    for item in list(repo.storage.list(f"{backup_dir(backup_id)}/")):
        repo.storage.delete(item.key)


def _delete_dead_lease(repo: Repository, backup_id: str, now: datetime) -> str | None:
    """Delete a leftover's lease if it is (still) dead, and only while it carries the tag
    just read: None when it is gone, else who holds it (a live or a changed lease wins)."""
    holder = read_holder(repo.storage, lease_key(backup_id))
    if holder is None:
        return None
    if holder.dead_because(now) is None:
        return holder.describe(now)
    if not repo.storage.delete_if(holder.key, holder.tag):
        return "its lease was refreshed or replaced while prune looked at it"
    return None


def _execute(
    repo: Repository,
    lock: Lease,
    result: PruneResult,
    partials: list[PartialUpload],
) -> None:
    done = 0

    def still_ours() -> None:
        if lock.lost is not None:
            raise Conflict(
                f"prune stopped after {done} deletion(s): {lock.lost}; what is left is "
                "consistent (manifests go first).",
                hint="Run 'ptool-ops backup prune' again once the other prune is done.",
            )

    for backup_id in result.forgotten:
        still_ours()
        _delete_prefix(repo, backup_id, manifest_key(backup_id))
        done += 1
    for decision in result.deleted:
        still_ours()
        _delete_prefix(repo, decision.id, manifest_key(decision.id))
        done += 1
    now = datetime.now(UTC)
    spared: list[str] = []
    for backup_id in list(result.orphans):
        still_ours()
        # look again right before: a manifest or a refreshed lease since the plan wins
        entry = Found(backup_id, list(repo.storage.list(f"{backup_dir(backup_id)}/")))
        if entry.has_manifest:  # finished meanwhile: a backup now
            spared.append(backup_id)
            continue
        holder = _delete_dead_lease(repo, backup_id, now)
        if holder is not None:  # being written after all: left alone, and said so
            spared.append(backup_id)
            result.running[backup_id] = holder
            continue
        _delete_prefix(repo, backup_id, None)
        done += 1
    # the result says what was removed; a spared prefix keeps its unfinished uploads too
    result.orphans[:] = [o for o in result.orphans if o not in spared]
    for partial in partials:
        if _under(partial, spared):
            result.partial_uploads.remove(_named(partial))
            continue
        still_ours()
        repo.storage.abort_partial(partial)
