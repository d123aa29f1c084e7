"""A lock-safe migration on a big bookings table while the API takes booking writes.

Run: ``.venv/bin/python bench/migrate_under_load.py [--bookings 1000000] [--rate 40]
[--baseline-seconds 20] [--chunk-seconds 5] [--backup-point]``

It brings up a scratch local environment (embedded PostgreSQL + the API stand-in) in a
temporary directory, seeds ``--bookings`` bookings, creates artists in the smoke tenant
(one fresh slice of artists per load chunk, so no two writes ever compete for a slot),
then sends a paced booking-WRITE load (every request a POST) on loopback:

* warm-up  -- one chunk, not measured (connections, caches);
* baseline -- ``--baseline-seconds`` of load with nothing else running;
* during   -- the same load, in chunks of ``--chunk-seconds``, for as long as
  ``migrate up`` runs migration 0006 (``no-transaction``: ADD COLUMN, CREATE INDEX
  CONCURRENTLY, ADD CONSTRAINT ... NOT VALID, VALIDATE CONSTRAINT; then verify + the
  booking invariants + the API readiness check, all through the real runner).

It prints the writers' failed requests and p50/p99 latency of both phases, the p99 ratio
and the migration's duration. Target: zero failures, p99 during <= 2x baseline.

``--expand-contract`` runs an expand + contract pair instead, through the compatibility
gate: before the baseline, 0006 adds ``booking.bookings.source`` (which the API does not
use; a constant default fills every row, so the backfill below copies them all) and
``migrate capture`` records the API's statements; then, under the same load,
the scaffolded rename of ``source`` to ``origin`` (``migrate new --rename``): the expand
half (new column, sync trigger on every booking write, backfill in committed batches over
every row), two captures (the contract needs a window that began after the expand), and
the contract half (drop trigger and column). Both halves pass the gate -- the API's
statements are prepared as booking_app against each migrated schema -- and the p99 of the
load during the pair is compared with the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ptool_ops import pg
from ptool_ops.booking import MIGRATIONS_DIR, load
from ptool_ops.booking.api import BookingApi
from ptool_ops.booking.seed import seed
from ptool_ops.environment import Environment
from ptool_ops.local.env import LocalEnvironment
from ptool_ops.migrate import queryset
from ptool_ops.migrate.backup_point import EnvironmentBackupStep
from ptool_ops.migrate.capture import capture
from ptool_ops.migrate.compat import Gate
from ptool_ops.migrate.runner import Runner, RunOptions, RunResult
from ptool_ops.migrate.scaffold import scaffold_rename
from ptool_ops.privileges import MIGRATOR, OWNER
from ptool_ops.repo.file import FileStorage
from ptool_ops.repo.repository import Repository
from ptool_ops.settings import EnvironmentSettings

UP = """\
-- 0006 bookings_source: where a booking came from, indexed, with a validated check.
-- ptool: no-transaction
ALTER TABLE booking.bookings ADD COLUMN source text;
CREATE INDEX CONCURRENTLY bookings_created_at_idx ON booking.bookings (created_at);
ALTER TABLE booking.bookings
    ADD CONSTRAINT bookings_source_not_blank CHECK (source IS NULL OR btrim(source) <> '')
    NOT VALID;
ALTER TABLE booking.bookings VALIDATE CONSTRAINT bookings_source_not_blank;
"""
DOWN = """\
-- ptool: no-transaction
ALTER TABLE booking.bookings DROP CONSTRAINT IF EXISTS bookings_source_not_blank;
DROP INDEX CONCURRENTLY IF EXISTS booking.bookings_created_at_idx;
ALTER TABLE booking.bookings DROP COLUMN IF EXISTS source;
"""
VERIFY = """\
SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'booking.bookings'::regclass
               AND attname = 'source' AND NOT attisdropped);
SELECT indisvalid FROM pg_index WHERE indexrelid = 'booking.bookings_created_at_idx'::regclass;
SELECT convalidated FROM pg_constraint WHERE conname = 'bookings_source_not_blank';
"""


class Artists:
    """Fresh artists of one tenant, handed out a slice per load chunk."""

    def __init__(self, env: LocalEnvironment, tenant_id: str, count: int) -> None:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        with (
            pg.connect(env.facts.role_url(OWNER)) as conn,
            conn.cursor() as cur,
            cur.copy("COPY booking.artists (id, tenant_id, name) FROM STDIN") as copy,
        ):
            for n, artist in enumerate(ids):
                copy.write_row((artist, tenant_id, f"Bench Artist {n}"))
        self._ids = ids
        self._next = 0
        self.per_chunk = 5

    def take(self) -> list[str]:
        start = self._next
        self._next += self.per_chunk
        if self._next > len(self._ids):
            raise RuntimeError("out of bench artists: raise --artists")
        return self._ids[start : self._next]


def settle_archiver(conn: Any, timeout_s: float = 300) -> None:
    """Wait until the WAL written by the seed is archived, so that the archiver's copying
    does not land in the baseline (it did: baseline p99 of 200-400 ms with p50 of 6 ms)."""
    row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    closed = str(row[0]) if row else ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
        ).fetchone()
        if row and str(row[0]) >= closed:
            return
        time.sleep(0.5)
    print(f"warning: WAL archiving has not caught up with {closed}", flush=True)


def phase(
    target: load.Target,
    artists: Artists,
    *,
    rate: float,
    chunk_s: float,
    keep_going: Any,
    label: str = "",
    chunks: list[load.LoadResult] | None = None,
) -> load.LoadResult:
    """Chunks of write load until ``keep_going()`` is false; one merged result (and each
    chunk's in ``chunks``)."""
    merged = load.LoadResult(sent=0, elapsed_s=0.0)
    while keep_going():
        chunk_target = load.Target(
            target.base_url,
            target.tenant_id,
            target.tenant_token,
            artists.take(),
            target.project_id,
        )
        result = load.run(chunk_target, rate=rate, duration_s=chunk_s, write_every=1, ready_every=0)
        if chunks is not None:
            chunks.append(result)
        if label:
            slow = sum(1 for ms in result.latencies_ms if ms > 100)
            print(
                f"  {label} chunk: p50 {result.percentile(0.5):.1f} ms,"
                f" p99 {result.percentile(0.99):.1f} ms, max {max(result.latencies_ms):.1f} ms,"
                f" {slow} over 100 ms, {len(result.failures)} errors",
                flush=True,
            )
        merged.sent += result.sent
        merged.elapsed_s += result.elapsed_s
        merged.failures += result.failures
        merged.latencies_ms += result.latencies_ms
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bookings", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--rate", type=float, default=40, help="booking writes per second")
    parser.add_argument("--baseline-seconds", type=float, default=20)
    parser.add_argument("--chunk-seconds", type=float, default=5)
    parser.add_argument("--artists", type=int, default=5000)
    parser.add_argument("--backup-point", action="store_true", help="take the backup point")
    parser.add_argument(
        "--no-invariants", action="store_true", help="skip the invariants (to isolate their cost)"
    )
    parser.add_argument(
        "--expand-contract",
        action="store_true",
        help="an expand + contract rename pair through the compatibility gate instead",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptool-bench-") as tmp:
        root = Path(tmp)
        env = LocalEnvironment(root / "local")
        up = env.up()
        try:
            began = time.monotonic()
            # seeded by the operator (booking_owner, as 'local seed' does) and settled by the
            # scratch server's superuser; the migration runs as booking_migrator, as CI runs it
            with pg.connect(env.facts.role_url(OWNER)) as conn:
                seeded = seed(conn, tenants=args.tenants, bookings=args.bookings)
            with pg.connect(env.server.superuser_url("booking", purpose="bench set-up")) as conn:
                conn.execute("VACUUM (ANALYZE)")  # settle: no autovacuum storm mid-baseline
                conn.execute("CHECKPOINT")
                settle_archiver(conn)
            print(f"seeded {seeded.to_dict()} in {time.monotonic() - began:.0f} s", flush=True)
            creds = env.facts.secrets()
            assert creds is not None and up.api_url is not None
            with BookingApi(up.api_url, SecretStr(creds.api_token)) as api:
                fixture = api.smoke_fixture()
            artists = Artists(env, fixture["tenant_id"], args.artists)
            target = load.Target(
                up.api_url,
                fixture["tenant_id"],
                fixture["tenant_token"],
                project_id=fixture["project_id"],
            )

            if args.expand_contract:
                directory = root / "migrations"
                directory.mkdir()
                for path in MIGRATIONS_DIR.iterdir():
                    (directory / path.name).write_bytes(path.read_bytes())
                return expand_contract(env, root, directory, target, artists, args)
            warm_until = time.monotonic() + args.chunk_seconds  # connections, caches
            phase(
                target,
                artists,
                rate=args.rate,
                chunk_s=args.chunk_seconds,
                keep_going=lambda: time.monotonic() < warm_until,
            )
            deadline = time.monotonic() + args.baseline_seconds
            base = phase(
                target,
                artists,
                rate=args.rate,
                chunk_s=args.chunk_seconds,
                keep_going=lambda: time.monotonic() < deadline,
                label="baseline",
            )

            directory = root / "migrations"
            directory.mkdir()
            for path in MIGRATIONS_DIR.iterdir():
                (directory / path.name).write_bytes(path.read_bytes())
            (directory / "0006_bookings_source.up.sql").write_text(UP)
            (directory / "0006_bookings_source.down.sql").write_text(DOWN)
            (directory / "0006_bookings_source.verify.sql").write_text(VERIFY)
            settings = EnvironmentSettings(
                name="local",
                kind="local",
                local_dir=root / "local",
                audit_dir=root / "audit",
            )
            runner = Runner(
                env.facts.role_url(MIGRATOR),
                directory=directory,
                options=RunOptions(actor="bench", invariants=not args.no_invariants),
                backup=EnvironmentBackupStep(Environment(settings)) if args.backup_point else None,
                log=lambda message: print(f"  migrate: {message}", flush=True),
            )
            outcome: list[RunResult | BaseException] = []
            timing: dict[str, float] = {}

            def migrate() -> None:
                timing["start"] = time.monotonic()
                try:
                    outcome.append(runner.up())
                except BaseException as err:
                    outcome.append(err)
                timing["end"] = time.monotonic()

            worker = threading.Thread(target=migrate)
            worker.start()
            during = phase(
                target,
                artists,
                rate=args.rate,
                chunk_s=args.chunk_seconds,
                keep_going=worker.is_alive,
                label="during",
            )
            worker.join()
            with pg.connect(env.facts.role_url(OWNER)) as conn:
                row = conn.execute("SELECT count(*) FROM booking.bookings").fetchone()
        finally:
            env.down()
    result = outcome[0]
    if isinstance(result, BaseException):
        print(f"migration FAILED: {result}")
        return 1
    duration = timing["end"] - timing["start"]
    print(
        f"migration {[m.version for m in result.migrations]} applied in {duration:.1f} s"
        f" on {row[0] if row else '?'} bookings"
    )
    for name, res in (("baseline", base), ("during", during)):
        s = res.summary()
        print(
            f"{name:<9} writes {s['sent']:>6}  rate {s['rate_per_s']:>6.1f}/s  "
            f"errors {s['failed']:>3}  p50 {s['p50_ms']:>7.2f} ms  p99 {s['p99_ms']:>7.2f} ms"
        )
    for failure in (base.failures + during.failures)[:5]:
        print(f"  e.g. {failure}")
    ratio = during.percentile(0.99) / max(base.percentile(0.99), 0.001)
    print(f"p99 ratio during / baseline: {ratio:.2f}")
    ok = not base.failures and not during.failures and ratio <= 2
    print(f"target (zero errors, p99 ratio <= 2): {'meets' if ok else 'MISSES'}")
    return 0 if ok else 1


ADD_SOURCE = "-- 0006 bookings_source: a column the API does not use, filled.\n" + (
    "ALTER TABLE booking.bookings ADD COLUMN source text DEFAULT 'seed';\n"
)
DROP_SOURCE = "ALTER TABLE booking.bookings DROP COLUMN source;\n"


def expand_contract(
    env: LocalEnvironment,
    root: Path,
    directory: Path,
    target: load.Target,
    artists: Artists,
    args: Any,
) -> int:
    """The expand + contract pair under load (see the module docstring)."""
    say = lambda message: print(f"  migrate: {message}", flush=True)  # noqa: E731
    (directory / "0006_bookings_source.up.sql").write_text(ADD_SOURCE)
    (directory / "0006_bookings_source.down.sql").write_text(DROP_SOURCE)
    scaffold_rename(directory, "bookings_source_origin", "booking.bookings.source=origin")
    repo = Repository(FileStorage(root / "local" / "repo"))
    owner = env.facts.role_url(OWNER)
    options = RunOptions(actor="bench", invariants=not args.no_invariants)

    def runner() -> Runner:
        return Runner(
            env.facts.role_url(MIGRATOR),
            directory=directory,
            options=options,
            gate=Gate(queryset.load(repo), log=say),
            log=say,
        )

    runner().up(to="0006")
    warm_until = time.monotonic() + args.chunk_seconds  # connections, caches
    phase(
        target,
        artists,
        rate=args.rate,
        chunk_s=args.chunk_seconds,
        keep_going=lambda: time.monotonic() < warm_until,
    )
    capture(repo, url=owner, app_version="bench-1")  # the API's statements so far
    deadline = time.monotonic() + args.baseline_seconds
    windows: list[load.LoadResult] = []
    base = phase(
        target,
        artists,
        rate=args.rate,
        chunk_s=args.chunk_seconds,
        keep_going=lambda: time.monotonic() < deadline,
        label="baseline",
        chunks=windows,
    )
    capture(repo, url=owner, app_version="bench-1")  # the baseline's statements too
    results: dict[str, load.LoadResult] = {}
    durations: dict[str, float] = {}
    gates: dict[str, Any] = {}
    for half, to in (("expand", "0007"), ("contract", "0008")):
        outcome: list[RunResult | BaseException] = []

        def migrate(to: str = to, half: str = half, outcome: list[Any] = outcome) -> None:
            started = time.monotonic()
            try:
                outcome.append(runner().up(to=to))
            except BaseException as err:
                outcome.append(err)
            durations[half] = time.monotonic() - started

        worker = threading.Thread(target=migrate)
        worker.start()
        results[half] = phase(
            target,
            artists,
            rate=args.rate,
            chunk_s=args.chunk_seconds,
            keep_going=worker.is_alive,
            label=half,
        )
        worker.join()
        done = outcome[0]
        if isinstance(done, BaseException):
            print(f"{half} FAILED: {done}")
            return 1
        gates[half] = done.migrations[0].compatibility
        if half == "expand":
            # the contract needs a capture window that began after the expand: two captures
            # with load between them
            capture(repo, url=owner, app_version="bench-1")
            until = time.monotonic() + args.chunk_seconds
            results["between"] = phase(
                target,
                artists,
                rate=args.rate,
                chunk_s=args.chunk_seconds,
                keep_going=lambda until=until: time.monotonic() < until,
            )
            capture(repo, url=owner, app_version="bench-1")
    with pg.connect(owner) as conn:
        row = conn.execute("SELECT count(*) FROM booking.bookings").fetchone()
    during = load.LoadResult(sent=0, elapsed_s=0.0)
    for key in ("expand", "between", "contract"):
        res = results[key]
        during.sent += res.sent
        during.elapsed_s += res.elapsed_s
        during.failures += res.failures
        during.latencies_ms += res.latencies_ms
    print(f"on {row[0] if row else '?'} bookings:")
    for half in ("expand", "contract"):
        gate = gates[half] or {}
        print(
            f"{half:<9} applied in {durations[half]:.1f} s; gate: {gate.get('checked')} statements"
            f" as {gate.get('role')}, {len(gate.get('broken', []))} broken,"
            f" {len(gate.get('skipped', []))} skipped"
        )
    for name, res in (
        ("baseline", base),
        ("expand", results["expand"]),
        ("contract", results["contract"]),
        ("during", during),
    ):
        s = res.summary()
        print(
            f"{name:<9} writes {s['sent']:>6}  rate {s['rate_per_s']:>6.1f}/s  "
            f"errors {s['failed']:>3}  p50 {s['p50_ms']:>7.2f} ms  p99 {s['p99_ms']:>7.2f} ms"
        )
    for failure in (base.failures + during.failures)[:5]:
        print(f"  e.g. {failure}")
    ratio = during.percentile(0.99) / max(base.percentile(0.99), 0.001)
    quietest = min(w.percentile(0.99) for w in windows)
    strict = during.percentile(0.99) / max(quietest, 0.001)
    print(f"p99 ratio during (expand + contract) / baseline: {ratio:.2f}")
    print(f"p99 ratio during / quietest baseline window ({quietest:.1f} ms): {strict:.2f}")
    ok = not base.failures and not during.failures and strict <= 2
    print(
        f"target (zero errors, p99 <= 2x the quietest baseline window): "
        f"{'meets' if ok else 'MISSES'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
