"""Retention of base backups and WAL: which base backups a policy keeps, and from where the
archived WAL must stay. Pure logic on manifests and names (``pitr prune`` applies it,
:mod:`ptool_ops.pitr.prune`).

A base backup is kept when a rule claims it:

* the newest ``keep_full`` full base backups (at least one);
* every incremental whose chain ends on a kept full and is whole (an incremental is never
  kept without every backup it depends on, and a backup a kept incremental depends on is
  kept: "needed by ...");
* the newest full backup on the current timeline's history, always: after a timeline
  switch (a promoted copy that replaced live) the newest fulls can lie on the abandoned
  branch, and the one the current timeline descends from must not be the one to go;
* the newest backup, always, with its chain (the parent of the next ``--incremental``).

An incremental with a broken chain can restore nothing and is not kept. Backups are
ordered by their recorded end LSN (then end time), never by name.

WAL: a restore from backup B replays from B's start LSN forward, on B's timeline and,
across a switch, on the timelines that branch from it -- and LSNs only grow along any
timeline's history. So a segment whose whole range lies below the start of the oldest
kept backup is on no kept backup's path, whatever timeline it is on; everything from that
segment on stays on *every* timeline, including an ancestor's segments between a kept
backup's start and the point where its timeline branched (a backup whose WAL range began
on the parent timeline). Timeline history files are never deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ptool_ops.pitr import archive
from ptool_ops.pitr.target import parse_lsn

if TYPE_CHECKING:
    from ptool_ops.pitr.base import BaseBackupManifest


@dataclass(frozen=True)
class Policy:
    keep_full: int = 2

    def __post_init__(self) -> None:
        if self.keep_full < 1:
            raise ValueError("keep_full must be at least 1")


@dataclass(frozen=True)
class Ancestry:
    """A timeline and where each of its ancestors was left (its history file)."""

    timeline: int
    #: ancestor timeline -> the LSN at which the history switched away from it
    switched_at: dict[int, int] = field(default_factory=dict)

    def leads_here(self, timeline: int, end_lsn: int) -> bool:
        """Whether a backup on ``timeline`` that ended at ``end_lsn`` is on this history
        (a restore from it can follow the switches to this timeline)."""
        if timeline == self.timeline:
            return True
        switch = self.switched_at.get(timeline)
        return switch is not None and end_lsn <= switch


def parse_history(timeline: int, text: str) -> Ancestry:
    """A ``<TLI>.history`` file: one line per ancestor, ``parentTLI <tab> switchpoint
    <tab> reason``; comments and blank lines are skipped. Raises ValueError."""
    switched: dict[int, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"history line {line!r} has no switch point")
        switched[int(parts[0])] = parse_lsn(parts[1])
    return Ancestry(timeline, switched)


@dataclass
class BackupDecision:
    id: str
    backup_type: str
    timeline: int
    start_lsn: str
    end_lsn: str
    end_time: datetime
    chain: list[str]
    stored_bytes: int
    keep: bool
    reasons: list[str]

    def describe(self) -> str:
        on = f" on {self.chain[-2]}" if len(self.chain) > 1 else ""
        return (
            f"{self.id} ({self.backup_type}{on}, timeline {self.timeline}, LSN "
            f"{self.start_lsn}..{self.end_lsn}, ended {self.end_time.isoformat()})"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ordered(backups: Iterable[BaseBackupManifest]) -> list[BaseBackupManifest]:
    return sorted(backups, key=lambda b: (b.end, b.end_time))


def decide(
    backups: Iterable[BaseBackupManifest], policy: Policy, ancestry: Ancestry | None = None
) -> list[BackupDecision]:
    """One decision per backup, newest first. ``ancestry``: the current timeline's
    history (None: no timeline rule)."""
    ordered = _ordered(backups)
    by_id = {b.id: b for b in ordered}
    reasons: dict[str, list[str]] = {b.id: [] for b in ordered}
    fulls = [b for b in ordered if b.backup_type == "full"]
    for b in fulls[::-1][: policy.keep_full]:
        reasons[b.id].append(f"one of the newest {policy.keep_full} full")
    if ancestry is not None and ancestry.switched_at:
        on_history = [b for b in fulls if ancestry.leads_here(b.timeline, b.end)]
        if on_history:
            reasons[on_history[-1].id].append(
                f"newest full on timeline {ancestry.timeline}'s history"
            )
    broken = {b.id: [i for i in b.chain if i not in by_id] for b in ordered}
    if ordered and not broken[ordered[-1].id]:
        reasons[ordered[-1].id].append("newest")
    kept_fulls = {b.id for b in fulls if reasons[b.id]}
    for b in ordered:
        if b.backup_type != "full" and not broken[b.id] and b.chain[0] in kept_fulls:
            reasons[b.id].append(f"incremental on kept full {b.chain[0]}")
    # whatever a kept incremental is built on stays (its chain is whole: checked above)
    needed_by: dict[str, list[str]] = {}
    for b in ordered:
        if reasons[b.id] and b.backup_type != "full":
            for dep in b.chain[:-1]:
                needed_by.setdefault(dep, []).append(b.id)
    for dep, users in needed_by.items():
        reasons[dep].append(f"needed by kept incremental {', '.join(users)}")
    decisions = []
    for b in ordered[::-1]:
        why = reasons[b.id]
        if not why and broken[b.id]:
            why_not = [f"its chain is broken: {', '.join(broken[b.id])} is not in the repository"]
        else:
            why_not = []
        decisions.append(
            BackupDecision(
                id=b.id,
                backup_type=b.backup_type,
                timeline=b.timeline,
                start_lsn=b.start_lsn,
                end_lsn=b.end_lsn,
                end_time=b.end_time,
                chain=list(b.chain),
                stored_bytes=b.stored_bytes,
                keep=bool(why),
                reasons=why or why_not,
            )
        )
    return decisions


def wal_number(name: str, segment_size: int) -> int | None:
    """The segment number an archived file belongs to (a segment, a ``.partial``, a
    backup history file); None for timeline history files, which always stay."""
    if archive.HISTORY.match(name):
        return None
    if archive.BACKUP_FILE.match(name):
        name = name[:24]
    segment = archive.Segment.parse(name, segment_size)
    return segment.number if segment is not None else None


def wal_cutoff(kept: Iterable[BaseBackupManifest]) -> BaseBackupManifest | None:
    """The kept backup whose start LSN is lowest: WAL below its segment can go."""
    by_start = sorted(kept, key=lambda b: (b.start, b.end_time))
    return by_start[0] if by_start else None
