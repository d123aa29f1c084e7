"""Who is using ``pitr/`` right now: the leases that keep ``pitr prune`` from racing a base
backup or a restore, and the prune lock that keeps them from racing a prune.

* a running ``pitr base-backup`` holds ``pitr/base/<id>/lease.json``; a running ``pitr
  restore`` holds ``locks/pitr-restore-<id>.json`` (its chain and the live WAL are read
  until the copy has reached its target; not under ``pitr/restores/<id>/``, which is the
  copy's server's to make);
* ``pitr prune`` holds ``locks/pitr-prune.json`` (one prune of ``pitr/`` at a time; the
  logical ``backups/`` prune has its own lock and touches other keys).

Both sides write their own lease first and look for the other's after it: a prune that
finds a live base-backup or restore lease deletes nothing; a base backup or restore that
finds a live prune lock waits for it (a prune takes seconds), then refuses. Whichever
writes second sees the first, so the two never run on together. The leases are
:class:`ptool_ops.repo.lease.Lease` objects, refreshed while their holder works.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ptool_ops.errors import Conflict
from ptool_ops.repo.lease import read_holder

if TYPE_CHECKING:
    from ptool_ops.repo.repository import Repository

PRUNE_LOCK = "locks/pitr-prune.json"
RESTORES = "pitr/restores"
BASE = "pitr/base"
LEASE = "lease.json"
#: written into a restored copy's prefix when its copy is gone ('pitr drop') or became live
#: ('pitr promote --replace', its WAL copied into the live archive): prune may then delete it
RETIRED = "retired.json"
#: how long a base backup or a restore waits for a running prune
PRUNE_WAIT_S = 30.0


def restore_prefix(restore_id: str) -> str:
    return f"{RESTORES}/{restore_id}"


#: where running restores' leases are
RESTORE_LEASES = "locks/pitr-restore-"


def restore_lease_key(restore_id: str) -> str:
    return f"{RESTORE_LEASES}{restore_id}.json"


def restore_of(lease_key: str) -> str | None:
    """The restore id a lease key names, or None."""
    if lease_key.startswith(RESTORE_LEASES) and lease_key.endswith(".json"):
        return lease_key[len(RESTORE_LEASES) : -len(".json")]
    return None


def retired_key(restore_id: str) -> str:
    return f"{RESTORES}/{restore_id}/{RETIRED}"


def base_lease_key(backup_id: str) -> str:
    return f"{BASE}/{backup_id}/{LEASE}"


def wait_for_prune(repo: Repository, what: str, *, wait_s: float | None = None) -> None:
    """Return once no live ``pitr prune`` holds the repository (the caller holds its own
    lease already); raise :class:`Conflict` naming the prune after ``wait_s``."""
    limit = PRUNE_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + limit
    while True:
        holder = read_holder(repo.storage, PRUNE_LOCK)
        if holder is None or holder.dead_because(datetime.now(UTC)) is not None:
            return
        if time.monotonic() >= deadline:
            raise Conflict(
                f"{what} cannot start while 'pitr prune' runs on {repo.url}: "
                f"{holder.describe()}; waited {limit:g} s.",
                hint="Run it again once the prune has finished.",
            )
        time.sleep(0.5)


def live_leases(repo: Repository, keys: list[str]) -> dict[str, str]:
    """Of the lease objects ``keys``, those alive: key -> who holds it."""
    now = datetime.now(UTC)
    alive: dict[str, str] = {}
    for key in keys:
        holder = read_holder(repo.storage, key)
        if holder is not None and holder.dead_because(now) is None:
            alive[key] = holder.describe(now)
    return alive
