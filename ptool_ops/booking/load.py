"""A bounded, paced request load against the booking API, for tests and benchmarks.

Requests are scheduled at a fixed rate on an absolute clock (no coordinated omission: a slow
answer does not delay the next request), bounded by a count and a duration; the generator
stops by itself. Loopback only — the base URL is checked.

``actions`` run at given request numbers (e.g. a credential reload at request 1200), in a
thread so the load keeps flowing while they work.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_IN_FLIGHT = 64


@dataclass
class LoadResult:
    sent: int
    elapsed_s: float
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    roles_seen: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": len(self.failures),
            "rate_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(0.50), 2),
            "p99_ms": round(self.percentile(0.99), 2),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else 0,
        }


@dataclass
class Target:
    base_url: str
    tenant_id: str
    tenant_token: str
    artist_ids: list[str] = field(default_factory=list)
    project_id: str | None = None


async def _run(
    target: Target,
    *,
    rate: float,
    duration_s: float,
    write_every: int,
    ready_every: int,
    actions: dict[int, Callable[[], None]],
) -> LoadResult:
    total = int(rate * duration_s)
    result = LoadResult(sent=0, elapsed_s=0.0)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    headers = {"Authorization": f"Bearer {target.tenant_token}"}
    base_start = datetime(2040, 1, 1, tzinfo=UTC)
    async with httpx.AsyncClient(base_url=target.base_url, timeout=10, limits=limits) as http:
        # at most as many requests in flight as connections: httpcore's own wait queue is
        # quadratic in its length and collapses a client that falls behind
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(n: int, began: float) -> None:
            async with slots:
                await _send(n)
            # from the scheduled time, so waiting for a slot counts (no coordinated omission)
            result.latencies_ms.append((time.perf_counter() - began) * 1000)

        async def _send(n: int) -> None:
            try:
                if ready_every and n % ready_every == 0:
                    response = await http.get("/health/ready")
                    if response.status_code == 200:
                        result.roles_seen.append(response.json()["checks"]["database_role"])
                elif write_every and n % write_every == 0 and target.artist_ids:
                    # each write books its own slot: n-th hour of one artist's calendar
                    artist = target.artist_ids[n % len(target.artist_ids)]
                    start = base_start + timedelta(hours=n)
                    response = await http.post(
                        f"/tenants/{target.tenant_id}/bookings",
                        headers=headers,
                        json={
                            "artist_id": artist,
                            "project_id": target.project_id,
                            "starts_at": start.isoformat(),
                            "ends_at": (start + timedelta(minutes=30)).isoformat(),
                        },
                    )
                else:
                    response = await http.get(
                        f"/tenants/{target.tenant_id}/bookings",
                        headers=headers,
                        params={"limit": 5},
                    )
                if response.status_code >= 400:
                    result.failures.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as err:
                result.failures.append(repr(err))

        tasks = []
        start = time.monotonic()
        for n in range(total):
            if time.monotonic() - start > duration_s * 3:
                result.failures.append("the load generator fell too far behind; stopped")
                break
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if n in actions:
                await asyncio.to_thread(actions[n])
            lag = min(0.0, start + n / rate - time.monotonic())  # negative when behind
            scheduled = time.perf_counter() + lag
            tasks.append(asyncio.create_task(one(n, scheduled)))
            result.sent += 1
        await asyncio.gather(*tasks)
        result.elapsed_s = time.monotonic() - start
    return result


def run(
    target: Target,
    *,
    rate: float,
    duration_s: float,
    write_every: int = 0,
    ready_every: int = 50,
    actions: dict[int, Callable[[], None]] | None = None,
) -> LoadResult:
    """Send ``rate`` requests/s for ``duration_s``: mostly reads, a write every
    ``write_every``-th request, a readiness probe every ``ready_every``-th."""
    host = urlsplit(target.base_url).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise ValueError(f"load is only ever sent to loopback, not {host!r}")
    return asyncio.run(
        _run(
            target,
            rate=rate,
            duration_s=duration_s,
            write_every=write_every,
            ready_every=ready_every,
            actions=actions or {},
        )
    )
