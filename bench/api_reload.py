"""The booking API stand-in under load while its credentials are reloaded twice.

Run: ``.venv/bin/python bench/api_reload.py [--rate 200] [--seconds 20] [--bookings 20000]``

It brings up a scratch local environment (embedded PostgreSQL + the stand-in) in a temporary
directory, seeds it, and sends a paced read load (with readiness probes) on loopback
twice, side by side:

* baseline — the same load with no reload;
* reloads  — a rotation to ``booking_app_b`` at 30 % of the run and back to ``booking_app_a``
  at 65 % (new password in the database, secrets file updated, SIGHUP).

It prints the achieved rate, failed requests and p50/p99 latency of both runs and the ratio of
the p99s. Target: zero failed requests, p99 with reloads at most 2x baseline.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from pathlib import Path

from ptool_ops import pg, privileges
from ptool_ops.booking import load
from ptool_ops.booking.api import BookingApi
from ptool_ops.booking.seed import seed
from ptool_ops.local import api as local_api
from ptool_ops.local.env import LocalEnvironment


def rotate(env: LocalEnvironment, role: str) -> None:
    """As the owner, who administers the app logins (what a rotation does)."""
    password = secrets.token_urlsafe(24)
    with pg.connect(env.facts.role_url(privileges.OWNER)) as conn:
        pg.set_password(conn, role, password)
    doc = json.loads(env.paths.secrets.read_text())
    doc["passwords"][role] = password
    doc["app_role"] = role
    tmp = env.paths.secrets.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.chmod(0o600)
    tmp.replace(env.paths.secrets)
    local_api.reload(env.paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--bookings", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptool-bench-") as tmp:
        env = LocalEnvironment(Path(tmp) / "local")
        up = env.up()
        try:
            with pg.connect(env.facts.role_url(privileges.OWNER)) as conn:
                seed(conn, tenants=5, bookings=args.bookings)
            creds = env.facts.secrets()
            assert creds is not None and up.api_url is not None
            from pydantic import SecretStr

            with BookingApi(up.api_url, SecretStr(creds.api_token)) as api:
                fixture = api.smoke_fixture()
            target = load.Target(up.api_url, fixture["tenant_id"], fixture["tenant_token"])
            total = int(args.rate * args.seconds)
            base = load.run(target, rate=args.rate, duration_s=args.seconds)
            with_reloads = load.run(
                target,
                rate=args.rate,
                duration_s=args.seconds,
                actions={
                    int(total * 0.30): lambda: rotate(env, "booking_app_b"),
                    int(total * 0.65): lambda: rotate(env, "booking_app_a"),
                },
            )
        finally:
            env.down()
    for name, result in (("baseline", base), ("reloads", with_reloads)):
        summary = result.summary()
        print(
            f"{name:<9} sent {summary['sent']:>6}  rate {summary['rate_per_s']:>6.1f}/s  "
            f"failed {summary['failed']:>3}  p50 {summary['p50_ms']:>7.2f} ms  "
            f"p99 {summary['p99_ms']:>7.2f} ms"
        )
    ratio = with_reloads.percentile(0.99) / max(base.percentile(0.99), 0.001)
    print(f"p99 ratio reloads / baseline: {ratio:.2f}")
    ok = not with_reloads.failures and not base.failures and ratio <= 2
    print(f"target (zero failures, p99 ratio <= 2): {'meets' if ok else 'MISSES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
