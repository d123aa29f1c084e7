"""What can be restored: per timeline, the earliest restorable point (the oldest base
backup's end) up to the newest archived WAL, and every gap in between, by segment.

``pitr window`` exits 1 when the current timeline has a gap after its earliest restorable
point, or when there is no base backup at all (WAL-G's ``wal-verify`` reports a gap and
exits 0; we do not). ``pitr restore`` proves its own range with :func:`missing_between`
before it creates anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ptool_ops.pitr import archive
from ptool_ops.pitr.base import BaseBackupManifest, list_base_backups
from ptool_ops.pitr.target import format_lsn
from ptool_ops.pitr.wal import read_identity

if TYPE_CHECKING:
    from ptool_ops.repo.repository import Repository


@dataclass
class Listing:
    """The archive as listed: segments by timeline (number → when it was archived)."""

    identity: archive.Identity | None
    segment_size: int
    segments: dict[int, dict[int, datetime]] = field(default_factory=dict)
    histories: list[str] = field(default_factory=list)

    def has(self, timeline: int, number: int) -> bool:
        return number in self.segments.get(timeline, {})

    def name(self, timeline: int, number: int) -> str:
        return archive.Segment(timeline, number).name(self.segment_size)


def list_archive(repo: Repository, archive_name: str = archive.LIVE) -> Listing:
    identity = read_identity(repo, archive_name)
    size = identity.segment_size if identity else 16 * 1024 * 1024
    listing = Listing(identity, size)
    raw = ((i.key, i.size, i.modified) for i in repo.storage.list(archive.prefix(archive_name)))
    for stored in archive.names_in(raw, archive_name):
        if archive.HISTORY.match(stored.name):
            listing.histories.append(stored.name)
            continue
        segment = archive.Segment.parse(stored.name, size)
        if segment is None or segment.partial:
            continue
        listing.segments.setdefault(segment.timeline, {})[segment.number] = stored.modified
    return listing


@dataclass
class Gap:
    timeline: int
    first: str
    last: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        if self.count == 1:
            return f"{self.first} is missing"
        return f"{self.count} segments {self.first}..{self.last} are missing"


def missing_between(listing: Listing, timeline: int, first: int, last: int) -> list[Gap]:
    """The gaps among segments ``first..last`` (inclusive) of ``timeline``."""
    gaps: list[Gap] = []
    have = listing.segments.get(timeline, {})
    run_start: int | None = None
    for number in range(first, last + 2):
        absent = number <= last and number not in have
        if absent and run_start is None:
            run_start = number
        elif not absent and run_start is not None:
            gaps.append(
                Gap(
                    timeline,
                    listing.name(timeline, run_start),
                    listing.name(timeline, number - 1),
                    number - run_start,
                )
            )
            run_start = None
    return gaps


@dataclass
class TimelineWindow:
    timeline: int
    earliest_lsn: str | None
    earliest_time: str | None
    earliest_backup: str | None
    newest_segment: str | None
    newest_lsn: str | None  # the end of the newest archived segment
    newest_archived_at: str | None
    segments: int
    gaps: list[Gap]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "gaps": [g.to_dict() for g in self.gaps]}


@dataclass
class Window:
    repository: str
    identity: dict[str, Any] | None
    base_backups: int
    current_timeline: int | None
    timelines: list[TimelineWindow]
    #: seconds since the newest WAL was archived: the RPO right now
    newest_wal_age_s: float | None

    @property
    def current(self) -> TimelineWindow | None:
        return next((t for t in self.timelines if t.timeline == self.current_timeline), None)

    @property
    def ok(self) -> bool:
        current = self.current
        return (
            current is not None
            and current.earliest_lsn is not None
            and not current.gaps
            and current.newest_segment is not None
        )

    def problems(self) -> list[str]:
        current = self.current
        if self.base_backups == 0:
            return ["there is no base backup, so no point can be restored"]
        if current is None or current.earliest_lsn is None:
            return [f"no base backup covers the current timeline {self.current_timeline}"]
        return [f"timeline {g.timeline}: {g.describe()}" for g in current.gaps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "repository": self.repository,
            "identity": self.identity,
            "base_backups": self.base_backups,
            "current_timeline": self.current_timeline,
            "newest_wal_age_s": self.newest_wal_age_s,
            "timelines": [t.to_dict() for t in self.timelines],
            "problems": self.problems(),
        }


def _timeline_window(
    listing: Listing, timeline: int, backups: list[BaseBackupManifest]
) -> TimelineWindow:
    have = listing.segments.get(timeline, {})
    on_line = [b for b in backups if b.timeline == timeline]
    earliest = on_line[0] if on_line else None
    newest = max(have) if have else None
    gaps: list[Gap] = []
    if newest is not None:
        first = earliest.start // listing.segment_size if earliest else min(have)
        gaps = missing_between(listing, timeline, first, newest)
    return TimelineWindow(
        timeline=timeline,
        earliest_lsn=earliest.end_lsn if earliest else None,
        earliest_time=earliest.end_time.isoformat() if earliest else None,
        earliest_backup=earliest.id if earliest else None,
        newest_segment=listing.name(timeline, newest) if newest is not None else None,
        newest_lsn=format_lsn((newest + 1) * listing.segment_size) if newest is not None else None,
        newest_archived_at=have[newest].isoformat() if newest is not None else None,
        segments=len(have),
        gaps=gaps,
    )


def window(repo: Repository, *, now: datetime | None = None) -> Window:
    listing = list_archive(repo)
    backups = list_base_backups(repo)
    timelines = sorted(set(listing.segments) | {b.timeline for b in backups})
    per_line = [_timeline_window(listing, t, backups) for t in timelines]
    newest: datetime | None = None
    for stamps in listing.segments.values():
        for stamp in stamps.values():
            newest = stamp if newest is None or stamp > newest else newest
    moment = now or datetime.now(UTC)
    return Window(
        repository=repo.url,
        identity=(
            {
                "system_identifier": listing.identity.system_identifier,
                "major": listing.identity.major,
                "wal_magic": listing.identity.wal_magic,
                "segment_size": listing.identity.segment_size,
            }
            if listing.identity
            else None
        ),
        base_backups=len(backups),
        current_timeline=timelines[-1] if timelines else None,
        timelines=per_line,
        newest_wal_age_s=round((moment - newest).total_seconds(), 1) if newest else None,
    )
