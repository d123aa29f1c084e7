"""Retention: which backups a policy keeps. Pure logic on (id, start time, verified).

A backup is kept when any rule claims it: the newest ``keep_last``; the newest backup of
each of the newest ``keep_daily`` days, ``keep_weekly`` ISO weeks and ``keep_monthly``
months (UTC); the newest *verified* backup, always; and the newest backup, always (so a
policy of zeros never empties the repository). Backups are ordered by their recorded start
time, never by name (WAL-G issue #636: ordering by name deleted the newest backups).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime

from ptool_ops.backup.models import PruneDecision


@dataclass(frozen=True)
class Policy:
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6


@dataclass(frozen=True)
class Candidate:
    id: str
    started_at: datetime
    verified: bool = False


_BUCKETS: tuple[tuple[str, Callable[[datetime], Hashable]], ...] = (
    ("daily", lambda t: t.date()),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
)


def decide(candidates: Iterable[Candidate], policy: Policy) -> list[PruneDecision]:
    """One decision per candidate, newest first."""
    ordered = sorted(candidates, key=lambda c: (c.started_at, c.id), reverse=True)
    reasons: dict[str, list[str]] = {c.id: [] for c in ordered}
    for c in ordered[: policy.keep_last]:
        reasons[c.id].append(f"last {policy.keep_last}")
    counts = {
        "daily": policy.keep_daily,
        "weekly": policy.keep_weekly,
        "monthly": policy.keep_monthly,
    }
    for name, bucket in _BUCKETS:
        seen: set[Hashable] = set()
        for c in ordered:
            if len(seen) >= counts[name]:
                break
            key = bucket(c.started_at)
            if key not in seen:
                seen.add(key)
                reasons[c.id].append(name)
    newest_verified = next((c for c in ordered if c.verified), None)
    if newest_verified is not None:
        reasons[newest_verified.id].append("newest verified")
    if ordered:
        reasons[ordered[0].id].append("newest")
    return [
        PruneDecision(c.id, c.started_at, keep=bool(reasons[c.id]), reasons=reasons[c.id])
        for c in ordered
    ]
