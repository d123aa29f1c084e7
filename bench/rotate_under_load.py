"""``ptool-ops secrets rotate app-db`` under a booking load: not one request may fail.

Run: ``.venv/bin/python bench/rotate_under_load.py [--rate 200] [--rotations 3]
[--linger-seconds 20] [--json]``

It brings up a scratch local environment (embedded PostgreSQL with password logins over
TCP + the booking API stand-in) in a temporary directory and sends a paced load on
loopback -- reads, a booking write every ``--write-every``-th request, a readiness probe
every 50th -- in chunks of ``--chunk-seconds`` (each with fresh artists, so no two writes
compete for a slot), first alone (baseline), then while ``ptool-ops`` runs as its own
process, as an operator runs it:

* **plain** -- the stand-in closes its old pool on a reload: ``secrets rotate app-db``
  ``--rotations`` times back to back, then ``secrets revoke-previous app-db`` (it succeeds
  once the old pool's last sessions have ended);
* **lingering pool** -- the stand-in restarted with ``--old-pool-linger-s`` (its old pool
  stays open, logged in as the previous role, for ``--linger-seconds``: a deployment whose
  old instances drain slowly): one rotation, then ``revoke-previous`` must refuse (exit 7)
  while those sessions remain; once they have ended (or with ``--force-revoke``: at once,
  with ``--force``) it succeeds.

It prints, per scenario, the requests sent, failed and their p99, each command's duration
and outcome, and the p99 ratio rotations / baseline (indicative: the machine's load moves
it); ``--json``: one JSON document instead. Target: zero failed requests, every rotation
done, revoke-previous refused while the lingering sessions remain and done afterwards.
Exit 0 when the target is met, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ptool_ops import pg
from ptool_ops.booking import load
from ptool_ops.booking.api import BookingApi
from ptool_ops.booking.seed import seed
from ptool_ops.errors import Refused
from ptool_ops.local import api as local_api
from ptool_ops.local.env import LocalEnvironment
from ptool_ops.privileges import OWNER

MANAGED = "app-db"  # the managed secret rotated
REFUSED = Refused.exit_code


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Command:
    """One ``ptool-ops`` run: what it was asked, how long it took, what it said."""

    args: list[str]
    exit_code: int
    seconds: float
    outcome: str
    detail: str = ""

    def line(self) -> str:
        detail = f" -- {self.detail}" if self.detail else ""
        return (
            f"{' '.join(self.args):<36} exit {self.exit_code}  {self.seconds:5.1f} s"
            f"  {self.outcome}{detail}"
        )


@dataclass
class Phase:
    """The load of one stretch of a scenario, its chunks merged."""

    name: str
    result: load.LoadResult = field(default_factory=lambda: load.LoadResult(0, 0.0))

    def add(self, chunk: load.LoadResult) -> None:
        self.result.sent += chunk.sent
        self.result.elapsed_s += chunk.elapsed_s
        self.result.failures += chunk.failures
        self.result.latencies_ms += chunk.latencies_ms
        self.result.roles_seen += chunk.roles_seen

    def to_dict(self) -> dict[str, Any]:
        roles = self.result.roles_seen
        switches = [r for i, r in enumerate(roles) if i == 0 or roles[i - 1] != r]
        return {
            **self.result.summary(),
            "roles_seen": switches,
            "first_failures": self.result.failures[:5],
        }


@dataclass
class Scenario:
    name: str
    baseline: Phase
    during: Phase
    commands: list[Command] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.baseline.result.failures) + len(self.during.result.failures)

    @property
    def total(self) -> int:
        return self.baseline.result.sent + self.during.result.sent

    @property
    def p99(self) -> float:
        both = self.baseline.result.latencies_ms + self.during.result.latencies_ms
        return load.LoadResult(0, 0.0, latencies_ms=both).percentile(0.99)

    @property
    def ratio(self) -> float:
        base = max(self.baseline.result.percentile(0.99), 0.001)
        return self.during.result.percentile(0.99) / base

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "total_requests": self.total,
            "failed_requests": self.failed,
            "p99_ms": round(self.p99, 2),
            "baseline": self.baseline.to_dict(),
            "during": self.during.to_dict(),
            "p99_ratio": round(self.ratio, 2),
            "commands": [asdict(c) for c in self.commands],
            "notes": self.notes,
            "problems": self.problems,
        }


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.env = LocalEnvironment(root / "local", archive=False)
        self.work = root / "work"
        self.api_url = ""
        self.target: load.Target | None = None

    # --- set-up -------------------------------------------------------------------------

    def up(self) -> None:
        began = time.monotonic()
        up = self.env.up()
        assert up.api_url is not None
        self.api_url = up.api_url
        if self.args.bookings:
            with pg.connect(self.env.facts.role_url(OWNER)) as conn:
                seed(conn, tenants=3, bookings=self.args.bookings)
        creds = self.env.facts.secrets()
        assert creds is not None
        with BookingApi(self.api_url, SecretStr(creds.api_token)) as api:
            fixture = api.smoke_fixture()
        self.target = load.Target(
            self.api_url,
            fixture["tenant_id"],
            fixture["tenant_token"],
            project_id=fixture["project_id"],
        )
        self.work.mkdir()
        # as tests/secrets does: the local environment, no grace period, a prompt readiness
        (self.work / "ptool-ops.toml").write_text(
            f'[environments.local]\nlocal_dir = "{self.env.paths.root}"\n'
            "secret_revoke_grace_s = 0\napi_ready_timeout_s = 10\n"
        )
        say(f"local environment up in {time.monotonic() - began:.1f} s, API at {self.api_url}")

    def restart_api(self, linger_s: float) -> None:
        """The stand-in again, now keeping its old pool open ``linger_s`` after a reload."""
        local_api.stop(self.env.paths)
        port = self.env.facts.require_running().port
        assert port is not None
        process, started = local_api.start(self.env.paths, port, old_pool_linger_s=linger_s)
        assert started, "the stand-in did not stop, so it runs without the linger"
        self.api_url = process.url
        assert self.target is not None
        self.target.base_url = process.url

    # --- load ---------------------------------------------------------------------------

    def _artists(self, count: int) -> list[str]:
        """Fresh artists in the load's tenant (as the operator, as 'local seed' does)."""
        assert self.target is not None
        ids = [str(uuid.uuid4()) for _ in range(count)]
        with pg.connect(self.env.facts.role_url(OWNER)) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO booking.artists (id, tenant_id, name) VALUES (%s, %s, %s)",
                [(a, self.target.tenant_id, f"Bench Artist {a[:8]}") for a in ids],
            )
        return ids

    def load_while(self, phase: Phase, keep_going: Callable[[], bool]) -> Phase:
        """Chunks of load until ``keep_going()`` is false (checked before each chunk)."""
        assert self.target is not None
        while keep_going():
            chunk = load.Target(
                self.target.base_url,
                self.target.tenant_id,
                self.target.tenant_token,
                self._artists(2),
                self.target.project_id,
            )
            phase.add(
                load.run(
                    chunk,
                    rate=self.args.rate,
                    duration_s=self.args.chunk_seconds,
                    write_every=self.args.write_every,
                )
            )
        return phase

    def baseline(self, name: str) -> Phase:
        until = time.monotonic() + self.args.baseline_seconds
        return self.load_while(Phase(f"{name} baseline"), lambda: time.monotonic() < until)

    def during(self, name: str, work: Callable[[], None]) -> Phase:
        """Load for as long as ``work`` runs in a thread (and to the end of that chunk)."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as err:  # reported by the caller, after the load stops
                failure.append(err)

        worker = threading.Thread(target=run, name=name)
        worker.start()
        phase = self.load_while(Phase(f"{name} during"), worker.is_alive)
        worker.join()
        if failure:
            raise failure[0]
        return phase

    # --- ptool-ops ----------------------------------------------------------------------

    def ptool(self, *args: str) -> Command:
        """``ptool-ops ARGS -o json`` as its own process, in the work directory."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "ptool_ops", *args, "--output", "json"],
            cwd=self.work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        seconds = round(time.monotonic() - began, 2)
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            doc = {"message": (done.stderr.strip().splitlines() or ["no output"])[-1]}
        if not isinstance(doc, dict):
            doc = {"message": str(doc)}
        if done.returncode == 0:
            outcome = str(doc.get("outcome", "done"))
            if "role_after" in doc:
                detail = f"{doc['role_before']} -> {doc['role_after']}"
            elif doc.get("role"):
                detail = f"{doc['role']} can no longer log in"
                if doc.get("sessions"):
                    detail += f" ({len(doc['sessions'])} session(s) left running)"
            else:
                detail = ""
        else:
            outcome = str(doc.get("error", "failed"))
            detail = str(doc.get("message", ""))
        command = Command(list(args), done.returncode, seconds, outcome, detail)
        say(f"  {command.line()}")
        return command

    def sessions(self, role: str) -> int:
        with pg.connect(self.env.facts.role_url(OWNER)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = %s", (role,)
            ).fetchone()
        return int(row[0]) if row else 0

    def revoke_when_drained(self, attempts: int = 20) -> Command:
        """``revoke-previous`` until it is not refused (the old pool's last sessions end
        as their requests finish), at most ``attempts`` times."""
        command = self.ptool("secrets", "revoke-previous", MANAGED)
        while command.exit_code == REFUSED and attempts > 1:
            attempts -= 1
            time.sleep(0.3)
            command = self.ptool("secrets", "revoke-previous", MANAGED)
        return command

    # --- the scenarios ------------------------------------------------------------------

    def plain(self) -> Scenario:
        say("plain: the stand-in closes its old pool on a reload")
        base = self.baseline("plain")
        commands: list[Command] = []

        def rotations() -> None:
            for _ in range(self.args.rotations):
                commands.append(self.ptool("secrets", "rotate", MANAGED))

        scenario = Scenario("plain", base, self.during("plain", rotations), commands)
        for command in commands:
            if command.exit_code != 0 or command.outcome != "rotated":
                scenario.problems.append(f"a rotation ended {command.outcome}: {command.detail}")
        revoke = self.revoke_when_drained()
        scenario.commands.append(revoke)
        if revoke.exit_code != 0:
            scenario.problems.append(f"revoke-previous did not succeed: {revoke.detail}")
        return scenario

    def lingering(self) -> Scenario:
        linger = self.args.linger_seconds
        say(f"lingering pool: the stand-in keeps its old pool open {linger:g} s after a reload")
        self.restart_api(linger)
        base = self.baseline("lingering")
        commands: list[Command] = []

        def rotate_then_revoke() -> None:
            commands.append(self.ptool("secrets", "rotate", MANAGED))
            commands.append(self.ptool("secrets", "revoke-previous", MANAGED))

        scenario = Scenario(
            "lingering pool", base, self.during("lingering", rotate_then_revoke), commands
        )
        rotated, refused = commands
        previous = rotated.detail.split(" -> ")[0] if rotated.exit_code == 0 else ""
        if rotated.exit_code != 0 or rotated.outcome != "rotated":
            scenario.problems.append(f"the rotation ended {rotated.outcome}: {rotated.detail}")
        if refused.exit_code != REFUSED:
            scenario.problems.append(
                f"revoke-previous was not refused while the old pool lingered (exit"
                f" {refused.exit_code}: {refused.outcome})"
            )
        if self.args.force_revoke:
            held = self.sessions(previous) if previous else 0
            scenario.notes.append(f"{held} session(s) of {previous} remained: revoked with --force")
            say(f"  {scenario.notes[-1]}")
            final = self.ptool("secrets", "revoke-previous", MANAGED, "--force")
        else:
            began = time.monotonic()
            deadline = began + linger + 30
            while previous and self.sessions(previous) and time.monotonic() < deadline:
                time.sleep(0.5)
            scenario.notes.append(
                f"the lingering sessions of {previous} ended {time.monotonic() - began:.1f} s"
                " after revoke-previous was refused"
            )
            say(f"  {scenario.notes[-1]}")
            final = self.revoke_when_drained()
        scenario.commands.append(final)
        if final.exit_code != 0:
            scenario.problems.append(f"revoke-previous did not succeed at last: {final.detail}")
        return scenario


def render(scenarios: list[Scenario], args: argparse.Namespace) -> None:
    print(
        f"load: {args.rate:g} requests/s on loopback (a write every {args.write_every}th, a"
        f" readiness probe every 50th), chunks of {args.chunk_seconds:g} s"
    )
    for s in scenarios:
        print(f"[{s.name}]")
        for phase in (s.baseline, s.during):
            d = phase.to_dict()
            print(
                f"  {phase.name:<22} sent {d['sent']:>6}  rate {d['rate_per_s']:>6.1f}/s"
                f"  failed {d['failed']:>3}  p50 {d['p50_ms']:>7.2f} ms  p99 {d['p99_ms']:>7.2f} ms"
                f"  roles {' > '.join(d['roles_seen']) or '-'}"
            )
            for failure in d["first_failures"]:
                print(f"    e.g. {failure}")
        print(f"  total requests {s.total}, failed requests {s.failed}, p99 {s.p99:.2f} ms")
        for command in s.commands:
            print(f"  {command.line()}")
        for note in s.notes:
            print(f"  note: {note}")
        for problem in s.problems:
            print(f"  PROBLEM: {problem}")
    plain = scenarios[0]
    print(f"p99 ratio rotations / baseline: {plain.ratio:.2f}")
    if len(scenarios) > 1:
        print(f"p99 ratio rotation with a lingering pool / baseline: {scenarios[1].ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--write-every", type=int, default=4, help="a write every n-th request")
    parser.add_argument("--chunk-seconds", type=float, default=3)
    parser.add_argument("--baseline-seconds", type=float, default=6)
    parser.add_argument("--rotations", type=int, default=3, help="back to back, plain stand-in")
    parser.add_argument(
        "--linger-seconds", type=float, default=20, help="old pool kept open after a reload"
    )
    parser.add_argument("--no-linger", action="store_true", help="skip the lingering scenario")
    parser.add_argument(
        "--force-revoke", action="store_true", help="lingering: revoke with --force at once"
    )
    parser.add_argument("--bookings", type=int, default=2000, help="seeded in other tenants")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    if args.rate < 100:
        say(f"note: {args.rate:g} requests/s is below the issue's 100 (fine for a smoke run)")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ptool-bench-rotate-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            bench.up()
            scenarios = [bench.plain()]
            if not args.no_linger:
                scenarios.append(bench.lingering())
        finally:
            bench.env.down()
    failed = sum(s.failed for s in scenarios)
    problems = [p for s in scenarios for p in s.problems]
    ok = failed == 0 and not problems
    if args.json:
        doc = {
            "rate_per_s": args.rate,
            "scenarios": [s.to_dict() for s in scenarios],
            "failed_requests": failed,
            "target_met": ok,
            "seconds": round(time.monotonic() - began, 1),
        }
        print(json.dumps(doc, indent=2))
    else:
        render(scenarios, args)
        print(
            f"target (zero failed requests, rotations done, revoke refused while sessions"
            f" remain): {'meets' if ok else 'MISSES'} ({time.monotonic() - began:.0f} s in all)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
