"""``pitr prune``: apply the base-backup retention policy to ``pitr/``, then the WAL that no
kept backup needs, and the leftovers of interrupted runs.

The rules, in the order they are applied (docs/pitr.md, "Retention"):

1. One prune of ``pitr/`` at a time (the lease ``locks/pitr-prune.json``; a live holder
   makes this one wait ``lock_wait_s``, then refuse); a dry run reads only. A running
   base backup or restore (a live lease, :mod:`ptool_ops.pitr.locks`) makes the prune
   delete nothing: exit 6, naming it.
2. A base backup whose manifest cannot be read stops the prune before anything is deleted,
   unless the operator names it (``forget_unreadable``): what it depends on, and which
   WAL it needs, cannot be known.
3. Retention decides over this archive's cluster's backups
   (:mod:`ptool_ops.pitr.retention`); another cluster's are left alone, and said so.
   Deleting a backup removes its manifest first (newest first, so an incremental goes
   before what it is built on): a prune interrupted half-way leaves a prefix without a
   manifest, never a listed backup with missing objects.
4. A ``pitr/base/<id>/`` without a manifest and without a live lease, whose newest object
   is older than ``orphan_age`` (default 6 h), is an interrupted base backup: garbage,
   removed (looked at again right before: a manifest or a live lease since spares it).
5. A restored copy's own archive ``pitr/restores/<id>/`` goes once it is marked retired
   (``pitr drop`` of its copy, or ``pitr promote --replace`` after its WAL was copied into
   the live archive); an unmarked one is left, and named: its copy may run elsewhere.
6. Restore points before the oldest kept backup's end can no longer be reached: removed.
7. WAL last, oldest segment first (an interrupted prune leaves the archive without a gap):
   every segment below the start of the oldest kept backup; history files never.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ptool_ops.audit import audited
from ptool_ops.errors import Conflict, Refused
from ptool_ops.pitr import archive, base, locks
from ptool_ops.pitr.retention import (
    Ancestry,
    BackupDecision,
    Policy,
    decide,
    parse_history,
    wal_cutoff,
    wal_number,
)
from ptool_ops.pitr.target import format_lsn
from ptool_ops.pitr.wal import read_identity
from ptool_ops.repo.errors import ObjectMissing, UnreadableManifest
from ptool_ops.repo.lease import Lease, read_holder
from ptool_ops.repo.storage import ObjectInfo, PartialUpload

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.repo.repository import Repository
    from ptool_ops.settings import EnvironmentSettings

DEFAULT_ORPHAN_AGE = timedelta(hours=6)
DEFAULT_LOCK_WAIT_S = 30.0
POINTS = "pitr/points/"


def policy_for(settings: EnvironmentSettings) -> Policy:
    return Policy(keep_full=settings.pitr_keep_full)


@dataclass
class Leftover:
    """A ``pitr/base/<id>/`` without a manifest: an interrupted base backup."""

    id: str
    bytes: int
    newest: datetime | None


@dataclass
class RestorePrefix:
    id: str
    bytes: int
    reason: str


@dataclass
class WalPrune:
    #: the kept backup whose start is the cutoff, and that start
    oldest_kept: str | None = None
    cutoff_lsn: str | None = None
    first_kept: str | None = None
    deleted: int = 0
    first_deleted: str | None = None
    last_deleted: str | None = None
    bytes: int = 0
    histories_kept: int = 0
    note: str | None = None
    keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "keys"}

    def describe(self, verb: str) -> str:
        if self.note:
            return f"WAL: {self.note}"
        span = ""
        if self.deleted:
            span = f" {self.first_deleted}..{self.last_deleted}"
        return (
            f"WAL: {verb} {self.deleted} file(s){span}, below {self.cutoff_lsn} (the start of "
            f"{self.oldest_kept}, the oldest kept base backup; kept from {self.first_kept}); "
            f"{self.histories_kept} timeline history file(s) kept"
        )


@dataclass
class PitrPruneResult:
    dry_run: bool
    repository: str
    policy: dict[str, Any]
    kept: list[BackupDecision]
    deleted: list[BackupDecision]
    #: interrupted base backups (no manifest, older than the orphan age): removed
    incomplete: list[Leftover]
    #: no manifest yet, younger than the orphan age: left for a later prune
    young: list[str]
    #: base backups of another cluster than the archive's: left alone
    foreign: list[str]
    forgotten: list[str]
    #: live leases (a base backup or restore running): a prune deletes nothing then
    running: dict[str, str]
    wal: WalPrune
    restores_deleted: list[RestorePrefix]
    restores_left: list[RestorePrefix]
    points_deleted: list[str]
    partial_uploads: list[str]
    bytes_freed: int
    took_over_lock: str | None = None


def _group(items: Iterable[ObjectInfo], prefix: str) -> dict[str, list[ObjectInfo]]:
    """``prefix<id>/...`` objects by id."""
    found: dict[str, list[ObjectInfo]] = {}
    for item in items:
        rest = item.key[len(prefix) :].split("/", 1)
        if item.key.startswith(prefix) and len(rest) == 2:
            found.setdefault(rest[0], []).append(item)
    return found


def _ancestry(repo: Repository, timeline: int | None) -> Ancestry | None:
    if timeline is None:
        return None
    if timeline == 1:
        return Ancestry(1)
    name = f"{timeline:08X}.history"
    try:
        text = repo.unpack(repo.storage.get_bytes(archive.object_key(name)), name).decode()
        return parse_history(timeline, text)
    except ObjectMissing:
        reason = "it is not in the archive"
    except (ValueError, UnicodeDecodeError) as err:
        reason = f"it cannot be read ({err})"
    raise Refused(
        f"prune stopped, nothing was deleted: the history file of the current timeline "
        f"{timeline} is needed to tell which base backups lead to it, and {reason}.",
        hint=f"Archive it from the server's data directory: 'ptool-ops wal push "
        f"pg_wal/{name}', then prune again.",
    )


def _unreadable(blocking: dict[str, UnreadableManifest]) -> Refused:
    first, err = next(iter(blocking.items()))
    return Refused(
        f"prune stopped, nothing was deleted: the manifest of base backup {first} cannot be "
        f"read ({err.message.rstrip('.')}), so what it depends on and the WAL it needs are "
        "unknown.",
        hint="Upgrade ptool-ops if a newer one wrote it; if it is beyond saving: "
        f"ptool-ops pitr prune --forget-unreadable {first}",
    )


@dataclass
class _Plan:
    result: PitrPruneResult
    partials: list[PartialUpload]
    point_keys: list[str]


def _manifests(
    repo: Repository, groups: dict[str, list[ObjectInfo]], forget: set[str]
) -> tuple[list[base.BaseBackupManifest], set[str]]:
    """The readable manifests, and the ids of unreadable ones (each named in ``forget``:
    any other stops the prune)."""
    manifests: list[base.BaseBackupManifest] = []
    unreadable: dict[str, UnreadableManifest] = {}
    for backup_id, items in sorted(groups.items()):
        key = base.manifest_key(backup_id)
        if key in {i.key for i in items}:
            try:
                manifests.append(repo.read_manifest(key, base.BaseBackupManifest))
            except UnreadableManifest as err:
                unreadable[backup_id] = err
    unknown = sorted(forget - set(unreadable))
    if unknown:
        raise Refused(
            f"--forget-unreadable {unknown[0]} names no base backup whose manifest cannot be "
            "read; nothing was deleted.",
            hint="Retention deletes the readable ones; 'pitr window' lists them.",
        )
    blocking = {i: e for i, e in unreadable.items() if i not in forget}
    if blocking:
        raise _unreadable(blocking)
    return manifests, set(unreadable)


def _running(repo: Repository, groups: dict[str, list[ObjectInfo]]) -> dict[str, str]:
    """Base backups and restores holding a live lease: id -> who."""
    keys = [
        locks.base_lease_key(i)
        for i, items in groups.items()
        if any(o.key == locks.base_lease_key(i) for o in items)
    ]
    keys += [o.key for o in repo.storage.list(locks.RESTORE_LEASES)]
    return {
        locks.restore_of(key) or key.split("/")[2]: holder
        for key, holder in locks.live_leases(repo, keys).items()
    }


def _restore_prefixes(
    repo: Repository, listing: list[ObjectInfo], running: dict[str, str]
) -> tuple[list[RestorePrefix], list[RestorePrefix]]:
    """Restored copies' own archives: (retired, to delete), (left, and why)."""
    retired: list[RestorePrefix] = []
    left: list[RestorePrefix] = []
    for restore_id, items in sorted(_group(listing, f"{locks.RESTORES}/").items()):
        total = sum(i.size for i in items)
        marker = None
        if any(i.key == locks.retired_key(restore_id) for i in items):
            marker = repo.get_json(locks.retired_key(restore_id))
        if restore_id in running:
            left.append(RestorePrefix(restore_id, total, "its restore is running"))
        elif marker is not None:
            retired.append(RestorePrefix(restore_id, total, str(marker.get("reason") or "retired")))
        else:
            left.append(
                RestorePrefix(
                    restore_id,
                    total,
                    "not known to be dropped (its copy may still run, perhaps on another "
                    f"machine); once it is gone, 'ptool-ops pitr drop {restore_id}' marks it",
                )
            )
    return retired, left


def _stale_points(
    repo: Repository, keys: Iterable[str], kept: list[base.BaseBackupManifest]
) -> tuple[list[str], list[str]]:
    """Restore points before every kept backup's end (no longer reachable): keys, names."""
    if not kept:
        return [], []
    horizon = min(m.end for m in kept)
    stale: list[str] = []
    names: list[str] = []
    for key in sorted(k for k in keys if k.startswith(POINTS) and k.endswith(".json")):
        point = repo.get_json(key)
        if point is not None and int(point.get("lsn", horizon)) < horizon:
            stale.append(key)
            names.append(str(point.get("name", key)))
    return stale, names


def _plan(
    repo: Repository,
    policy: Policy,
    *,
    dry_run: bool,
    orphan_age: timedelta,
    forget: set[str],
    now: datetime,
) -> _Plan:
    listing = list(repo.storage.list(f"{archive.ROOT}/"))
    sizes = {i.key: i.size for i in listing}
    groups = _group(listing, f"{base.PREFIX}/")
    manifests, unreadable = _manifests(repo, groups, forget)

    identity = read_identity(repo)
    system = identity.system_identifier if identity else None
    ours = [m for m in manifests if m.system_identifier == system]
    foreign = sorted(m.id for m in manifests if m.system_identifier != system)
    stored = list(archive.names_in((i.key, i.size, i.modified) for i in listing))
    size = identity.segment_size if identity else 16 * 1024 * 1024
    segments = [archive.Segment.parse(s.name, size) for s in stored]
    timelines = {s.timeline for s in segments if s is not None}
    current = max(timelines | {m.timeline for m in ours}, default=None)
    decisions = decide(ours, policy, _ancestry(repo, current) if ours else None)
    kept_ids = {d.id for d in decisions if d.keep}
    kept = [m for m in ours if m.id in kept_ids]

    running = _running(repo, groups)
    cutoff_time = now - orphan_age
    incomplete: list[Leftover] = []
    young: list[str] = []
    for backup_id, items in sorted(groups.items()):
        if backup_id in running or backup_id in unreadable:
            continue
        if base.manifest_key(backup_id) in {i.key for i in items}:
            continue
        newest = max((i.modified for i in items), default=None)
        if newest is None or newest <= cutoff_time:
            incomplete.append(Leftover(backup_id, sum(i.size for i in items), newest))
        else:
            young.append(backup_id)
    restores_deleted, restores_left = _restore_prefixes(repo, listing, running)
    point_keys, points_deleted = _stale_points(repo, sizes, kept)
    wal = _plan_wal(stored, kept, size, sizes)
    protected = [*running, *young]
    partials = [
        p
        for p in repo.storage.list_partial(f"{archive.ROOT}/")
        if p.started <= cutoff_time
        and not any(p.key.startswith(f"{base.base_dir(i)}/") for i in protected)
        and not any(p.key.startswith(f"{locks.restore_prefix(i)}/") for i in protected)
    ]
    deleted = [d for d in decisions if not d.keep]
    freed = (
        sum(sum(i.size for i in groups[d.id]) for d in deleted)
        + sum(sum(i.size for i in groups.get(f, [])) for f in forget)
        + sum(o.bytes for o in incomplete)
        + sum(r.bytes for r in restores_deleted)
        + sum(sizes[k] for k in point_keys)
        + wal.bytes
    )
    result = PitrPruneResult(
        dry_run=dry_run,
        repository=repo.url,
        policy={"keep_full": policy.keep_full, "orphan_age_s": orphan_age.total_seconds()},
        kept=[d for d in decisions if d.keep],
        deleted=deleted,
        incomplete=incomplete,
        young=young,
        foreign=foreign,
        forgotten=sorted(forget),
        running=running,
        wal=wal,
        restores_deleted=restores_deleted,
        restores_left=restores_left,
        points_deleted=points_deleted,
        partial_uploads=[f"{p.key} ({p.upload_id})" for p in partials],
        bytes_freed=freed,
    )
    return _Plan(result, partials, point_keys)


def _plan_wal(
    stored: list[archive.Stored],
    kept: list[base.BaseBackupManifest],
    segment_size: int,
    sizes: dict[str, int],
) -> WalPrune:
    histories = sum(1 for s in stored if archive.HISTORY.match(s.name))
    oldest = wal_cutoff(kept)
    if oldest is None:
        return WalPrune(
            histories_kept=histories,
            note="no base backup of this archive's cluster is kept, so no WAL is deleted",
        )
    first = oldest.start // segment_size
    doomed: list[tuple[int, str, str]] = []
    for s in stored:
        number = wal_number(s.name, segment_size)
        if number is not None and number < first:
            doomed.append((number, s.name, archive.object_key(s.name)))
    doomed.sort()
    return WalPrune(
        oldest_kept=oldest.id,
        cutoff_lsn=format_lsn(oldest.start),
        first_kept=archive.Segment(oldest.timeline, first).name(segment_size),
        deleted=len(doomed),
        first_deleted=doomed[0][1] if doomed else None,
        last_deleted=doomed[-1][1] if doomed else None,
        bytes=sum(sizes.get(key, 0) for _, _, key in doomed),
        histories_kept=histories,
        keys=[key for _, _, key in doomed],
    )


def prune(
    env: Environment,
    *,
    policy: Policy | None = None,
    dry_run: bool = False,
    orphan_age: timedelta = DEFAULT_ORPHAN_AGE,
    forget_unreadable: Iterable[str] = (),
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    now: datetime | None = None,
) -> PitrPruneResult:
    """Prune ``pitr/`` of the environment's repository (see the module's rules)."""
    repo = env.repository()
    policy = policy or policy_for(env.settings)
    repo.storage.check_location()
    lock: Lease | None = None
    if not dry_run:
        lock = Lease(repo.storage, locks.PRUNE_LOCK, "pitr prune").acquire(wait_s=lock_wait_s)
    try:
        plan = _plan(
            repo,
            policy,
            dry_run=dry_run,
            orphan_age=orphan_age,
            forget=set(forget_unreadable),
            now=now or datetime.now(UTC),
        )
        result = plan.result
        if lock is not None and lock.took_over is not None:
            result.took_over_lock = lock.took_over.describe()
        if dry_run:
            return result
        assert lock is not None
        if result.running:
            first, holder = next(iter(result.running.items()))
            raise Conflict(
                f"pitr prune deleted nothing: {first} is in use ({holder}).",
                hint="A base backup or restore reads what prune would delete; prune again "
                "once it has finished.",
            )
        with audited(
            env,
            "pitr.prune",
            {
                "deleted": [d.id for d in result.deleted],
                "kept": [d.id for d in result.kept],
                "forgotten": result.forgotten,
                "incomplete": [o.id for o in result.incomplete],
                "restores": [r.id for r in result.restores_deleted],
                "points": result.points_deleted,
                "wal": result.wal.to_dict(),
            },
            done=lambda: "the pitr prune completed",
        ) as entry:
            _execute(repo, lock, plan)
            entry.details["bytes_freed"] = result.bytes_freed
    finally:
        if lock is not None:
            lock.release()
    return result


def _delete_prefix(
    repo: Repository, path: str, *, first: str | None = None, last: str | None = None
) -> None:
    """``first`` (a manifest), then everything else under ``path/``, then ``last`` (a
    marker that must outlive the rest)."""
    if first is not None:
        repo.storage.delete(first)
    for item in list(repo.storage.list(f"{path}/")):
        if item.key != last:
            repo.storage.delete(item.key)
    if last is not None:
        repo.storage.delete(last)


def _execute(repo: Repository, lock: Lease, plan: _Plan) -> None:
    result = plan.result
    done = 0

    def still_ours() -> None:
        if lock.lost is not None:
            raise Conflict(
                f"pitr prune stopped after {done} deletion(s): {lock.lost}; what is left is "
                "consistent (manifests first, WAL oldest first).",
                hint="Run 'ptool-ops pitr prune' again.",
            )

    # newest first: an incremental goes before what it is built on
    for backup_id in [*result.forgotten, *(d.id for d in result.deleted)]:
        still_ours()
        _delete_prefix(repo, base.base_dir(backup_id), first=base.manifest_key(backup_id))
        done += 1
    spared: list[str] = []
    for leftover in list(result.incomplete):
        still_ours()
        why = _still_garbage(repo, leftover.id)
        if why is not None:  # finished or being written after all: left, and said so
            spared.append(leftover.id)
            result.incomplete.remove(leftover)
            result.bytes_freed -= leftover.bytes
            result.running[leftover.id] = why
            continue
        _delete_prefix(repo, base.base_dir(leftover.id))
        done += 1
    for partial in plan.partials:
        if any(partial.key.startswith(f"{base.base_dir(i)}/") for i in spared):
            result.partial_uploads.remove(f"{partial.key} ({partial.upload_id})")
            continue
        still_ours()
        repo.storage.abort_partial(partial)
    for restore in result.restores_deleted:
        still_ours()
        _delete_prefix(repo, locks.restore_prefix(restore.id), last=locks.retired_key(restore.id))
        done += 1
    for key in [*plan.point_keys, *result.wal.keys]:  # WAL last, oldest first: never a gap
        still_ours()
        repo.storage.delete(key)
        done += 1


def _still_garbage(repo: Repository, backup_id: str) -> str | None:
    """Right before an interrupted base backup goes: None if it still is one (its dead
    lease, if any, removed while it carries the tag just read), else why it stays."""
    keys = {i.key for i in repo.storage.list(f"{base.base_dir(backup_id)}/")}
    if base.manifest_key(backup_id) in keys:
        return "its manifest was written while prune looked at it"
    holder = read_holder(repo.storage, locks.base_lease_key(backup_id))
    if holder is None:
        return None
    if holder.dead_because() is None:
        return holder.describe()
    if not repo.storage.delete_if(holder.key, holder.tag):
        return "its lease was refreshed while prune looked at it"
    return None
