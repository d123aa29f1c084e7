"""Point-in-time restore speed of ``ptool-ops pitr``, beside a hand-made baseline.

Run (the issue's size: a 1 GB database plus >= 1 GB of WAL to replay):

    .venv/bin/python bench/pitr.py --bookings 1100000 --tenants 60 --wal-mb 1100

or smaller for a quick look (``--bookings 200000 --wal-mb 256``). One scratch embedded
PostgreSQL archives every segment twice: with ``ptool-ops wal push`` into the repository
and with ``cp`` into a plain directory (the baseline's archive). Then, side by side:

* **base backup**: ``ptool-ops pitr base-backup`` (streamed, compressed, read back and
  checked by pg_verifybackup) vs ``pg_basebackup -D - -Ft -X fetch > base.tar``;
* **WAL**: ``--wal-mb`` of WAL written on a plain table after the base backup (a mass
  UPDATE of the bookings table is far too slow for this), and a target time after it;
* **restore**: ``ptool-ops pitr restore --to T --no-compare`` (fetch, unpack, replay with
  ``wal fetch``, pause at the target, booking invariants) vs the baseline: ``tar xf``,
  ``restore_command = 'cp ARCHIVE/%f %p'``, ``pg_ctl start``, wait for the pause;
  target ratio ours / baseline <= 1.2, on the medians of ``--rounds`` restores of each side
  taken in turns (ours, baseline, baseline, ours, ...), each after a ``sync``, after
  ``--warmup`` untimed baseline restores: the first gigabyte written after the WAL costs
  2-3 s more than later ones, and one side's write-back would otherwise be billed to the next;
* **RTO lesson**: ``ptool-ops backup restore`` (logical) of the same database, for the
  runbooks: which is faster depends on how much WAL there is to replay;
* **incremental**: after ~5 % of the bookings changed, ``--incremental`` vs a second full
  base backup, size and time;
* **wal push**: per segment, ``ptool-ops wal push`` vs ``cp`` on real segments (target
  <= 0.3 s per segment).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_RESTORE_RATIO = 1.2
TARGET_PUSH_S = 0.3


def timed(
    label: str, argv: list[str] | str, *, env: dict[str, str], cwd: Path
) -> tuple[float, str]:
    started = time.monotonic()
    out = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        shell=isinstance(argv, str),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"{label} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return seconds, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--wal-mb", type=int, default=256, help="WAL to write after the backup")
    parser.add_argument("--segments", type=int, default=8, help="segments timed for wal push")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="restores of each side, in turns (ours first in odd rounds, the baseline in even)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed baseline restores before the rounds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from ptool_ops import pg
    from ptool_ops.booking.seed import seed
    from ptool_ops.local.cluster import LocalServer, _free_port
    from ptool_ops.local.env import LocalEnvironment
    from ptool_ops.privileges import OWNER

    work = Path(tempfile.mkdtemp(prefix="ptool-bench-pitr-"))
    os.chmod(work, 0o755)  # noqa: S103 - as root, the server runs as another OS user
    plain = work / "plain-archive"
    env = LocalEnvironment(work / "local")
    assert env.server.archive_command is not None
    env.server.archive_command += f" && cp %p {plain}/%f"
    env.server.share_with_server(plain)
    env.up(api=False)
    bindir = env.server.bindir
    try:
        url = env.facts.role_url(OWNER)
        print(f"seeding {args.bookings} bookings into a scratch server in {work} ...", flush=True)
        with pg.connect(url) as conn:
            seeded = seed(conn, tenants=args.tenants, bookings=args.bookings, seed=1)
        with pg.connect(env.server.superuser_url("booking", purpose="bench set-up")) as conn:
            conn.execute("VACUUM (FREEZE, ANALYZE)")
            conn.execute("CHECKPOINT")
            size = pg.server_facts(conn).size_bytes
        print(f"  {seeded.bookings} bookings; database {size / 2**20:.0f} MiB", flush=True)

        child_env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
        ptool = str(Path(sys.executable).with_name("ptool-ops"))
        (work / "ptool-ops.toml").write_text(
            "[environments.bench]\n"
            f'database_url = "{url}"\n'
            f'repo_url = "file://{env.paths.repo}"\n'
            f'local_dir = "{work / "side"}"\n'
        )
        conninfo, tool_env = pg.tool_invocation(url)

        # --- base backups ---------------------------------------------------------------
        ours_base, out = timed(
            "pitr base-backup",
            [ptool, "--env", "bench", "pitr", "base-backup", "-o", "json"],
            env=child_env,
            cwd=work,
        )
        full = json.loads(out)
        base_tar = work / "baseline-base.tar"
        basebackup = bindir / "pg_basebackup"
        plain_base, _ = timed(
            "pg_basebackup",
            f"'{basebackup}' -d '{conninfo}' -D - -Ft -X fetch -c fast > '{base_tar}'",
            env=tool_env,
            cwd=work,
        )
        print(
            f"base backup: ours {ours_base:.1f} s ({full['stored_bytes'] / 2**20:.0f} MiB stored,"
            f" verify {full['verified_s']:.1f} s) · pg_basebackup tar {plain_base:.1f} s "
            f"({base_tar.stat().st_size / 2**20:.0f} MiB)",
            flush=True,
        )

        # --- WAL to replay --------------------------------------------------------------
        print(f"writing {args.wal_mb} MiB of WAL ...", flush=True)
        with pg.connect(url) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS public.bench_wal (id bigint, pad text)")
            start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert start is not None
            while True:
                conn.execute(
                    "INSERT INTO public.bench_wal SELECT g, repeat(md5(g::text), 30)"
                    " FROM generate_series(1, 20000) g"
                )
                row = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start[0],)
                ).fetchone()
                if row is not None and row[0] >= args.wal_mb * 2**20:
                    break
            conn.execute(
                "DELETE FROM booking.bookings WHERE tenant_id = "
                "(SELECT tenant_id FROM booking.bookings LIMIT 1)"
            )
            time.sleep(0.2)
            target_row = conn.execute("SELECT now()").fetchone()
            assert target_row is not None
            target = target_row[0].isoformat()
            time.sleep(0.2)
            conn.execute("INSERT INTO public.bench_wal VALUES (0, 'after the target')")
        # the operator switches segments in the maintenance database (docs/privileges.md)
        with pg.connect(url, dbname="postgres") as conn:
            closed = conn.execute("SELECT pg_walfile_name(pg_switch_wal() - 1)").fetchone()
            assert closed is not None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                done = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
                if done and done[0] and done[0] >= closed[0]:
                    break
                time.sleep(0.5)
        # the checkpoint the WAL above started would go on writing beside the first restore
        with pg.connect(env.server.superuser_url("booking", purpose="bench set-up")) as conn:
            conn.execute("CHECKPOINT")

        # --- restores: ours and the baseline in turns (ABBA...), each after a sync --------
        def ours() -> tuple[float, dict[str, Any]]:
            seconds, out = timed(
                "pitr restore",
                [
                    ptool,
                    "--env",
                    "bench",
                    "pitr",
                    "restore",
                    "--to",
                    target,
                    "--no-compare",
                    "-o",
                    "json",
                ],
                env=child_env,
                cwd=work,
            )
            restored = json.loads(out)
            timed(
                "pitr drop",
                [ptool, "--env", "bench", "-y", "pitr", "drop", restored["id"]],
                env=child_env,
                cwd=work,
            )
            return seconds, restored

        def baseline(n: int) -> tuple[float, float]:
            """tar xf + a cp restore_command, to the pause at the target: (total, tar)."""
            copy = LocalServer(work / f"baseline-restore-{n if n >= 0 else f'warmup{-n}'}")
            copy.paths.root.mkdir()
            started = time.monotonic()
            copy.paths.pgdata.mkdir(parents=True)
            subprocess.run(["tar", "xf", str(base_tar), "-C", str(copy.paths.pgdata)], check=True)
            unpacked = time.monotonic() - started
            copy.extra_settings = {
                "restore_command": f"cp {plain}/%f %p",
                "recovery_target_time": target.replace("T", " "),
                "recovery_target_action": "pause",
            }
            copy.adopt()
            (copy.paths.pgdata / "recovery.signal").touch()
            copy.give_to_server(copy.paths.pgdata / "recovery.signal")
            port = _free_port()
            copy.start("", port, wait=False)
            params = conninfo_to_dict(url)
            params["port"] = str(port)
            copy_url = make_conninfo("", **params)
            while True:
                try:
                    with pg.connect(copy_url, connect_timeout=3) as conn:
                        row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
                        if row is not None and row[0] == "paused":
                            break
                except Exception:  # still starting
                    if not copy.state().running and time.monotonic() - started > 30:
                        raise SystemExit("the baseline restore stopped; see its log") from None
                time.sleep(0.2)
            seconds = time.monotonic() - started
            copy.stop("immediate")
            shutil.rmtree(copy.paths.root)
            return seconds, unpacked

        # an untimed restore first: the first gigabyte written after the WAL costs 2-3 s more
        # than the next (whichever side it is), a penalty of the machine, not of a side
        for n in range(args.warmup):
            os.sync()
            baseline(-1 - n)
        ours_runs: list[tuple[float, dict[str, Any]]] = []
        base_runs: list[tuple[float, float]] = []
        for n in range(args.rounds):
            for side in ("ours", "baseline") if n % 2 == 0 else ("baseline", "ours"):
                os.sync()  # neither side pays for the other's dirty pages
                time.sleep(1)
                if side == "ours":
                    ours_runs.append(ours())
                else:
                    base_runs.append(baseline(n))
        for n, ((mine, restored), (theirs, tar_s)) in enumerate(
            zip(ours_runs, base_runs, strict=True)
        ):
            clocks = restored["elapsed_s"]
            print(
                f"restore to a time, round {n + 1}: ours {mine:.1f} s (fetch {clocks['fetch']:.1f}"
                f" s, replay {clocks['replay']:.1f} s, checks {clocks['check']:.1f} s, start-up"
                f" and audit {mine - clocks['total']:.1f} s) · baseline {theirs:.1f} s (tar xf"
                f" {tar_s:.1f} s, start + replay {theirs - tar_s:.1f} s) · ratio"
                f" {mine / theirs:.2f}",
                flush=True,
            )
        ours_restore = statistics.median(t for t, _ in ours_runs)
        plain_restore = statistics.median(t for t, _ in base_runs)
        ratio = ours_restore / plain_restore
        mark = "met" if ratio <= TARGET_RESTORE_RATIO else "MISSED"
        print(
            f"ratio pitr restore / baseline: {ratio:.2f} (medians of {args.rounds} rounds, "
            f"{ours_restore:.1f} s / {plain_restore:.1f} s; target <= {TARGET_RESTORE_RATIO},"
            f" {mark})"
        )
        restored = ours_runs[-1][1]
        checks = (restored.get("invariants") or {}).get("checks") or []
        print(
            "  checks, side by side: "
            + ", ".join(f"{c['name']} {c['duration_ms'] / 1000:.1f} s" for c in checks),
            flush=True,
        )

        # --- the RTO lesson: a logical restore of the same database ------------------------
        _, out = timed(
            "backup create",
            [ptool, "--env", "bench", "backup", "create", "-o", "json"],
            env=child_env,
            cwd=work,
        )
        backup_id = json.loads(out)["id"]
        logical, _ = timed(
            "backup restore",
            [
                ptool,
                "--env",
                "bench",
                "-y",
                "backup",
                "restore",
                backup_id,
                "--target-db",
                "bench_logical",
            ],
            env=child_env,
            cwd=work,
        )
        print(
            f"RTO: pitr restore {ours_restore:.1f} s (with {args.wal_mb} MiB of WAL) · backup "
            f"restore {logical:.1f} s · ratio pitr / logical: {ours_restore / logical:.2f}",
            flush=True,
        )

        # --- incremental vs full ----------------------------------------------------------
        with pg.connect(url) as conn:
            conn.execute("DROP TABLE public.bench_wal")
            conn.execute(
                "UPDATE booking.bookings SET note = 'changed'"
                " WHERE id IN (SELECT id FROM booking.bookings TABLESAMPLE SYSTEM (5))"
            )
        inc_s, out = timed(
            "pitr base-backup --incremental",
            [ptool, "--env", "bench", "pitr", "base-backup", "--incremental", "-o", "json"],
            env=child_env,
            cwd=work,
        )
        inc = json.loads(out)
        full2_s, out = timed(
            "pitr base-backup",
            [ptool, "--env", "bench", "pitr", "base-backup", "-o", "json"],
            env=child_env,
            cwd=work,
        )
        full2 = json.loads(out)
        print(
            f"incremental after ~5 % changed: {inc['stored_bytes'] / 2**20:.1f} MiB in "
            f"{inc_s:.1f} s · full {full2['stored_bytes'] / 2**20:.1f} MiB in {full2_s:.1f} s"
            f" · size ratio incremental / full: {inc['stored_bytes'] / full2['stored_bytes']:.2f}",
            flush=True,
        )

        # --- wal push per segment ---------------------------------------------------------
        segments = sorted(p for p in plain.iterdir() if len(p.name) == 24)[-args.segments :]
        scratch = work / "push-repo"
        ours_push: list[float] = []
        cp_push: list[float] = []
        for segment in segments:
            seconds, _ = timed(
                "wal push",
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "ptool_ops",
                    "wal",
                    "push",
                    str(segment),
                    "--repo",
                    f"file://{scratch}",
                ],
                env=child_env,
                cwd=work,
            )
            ours_push.append(seconds)
            seconds, _ = timed(
                "cp", ["cp", str(segment), str(work / "cp-copy")], env=child_env, cwd=work
            )
            cp_push.append(seconds)
        push = statistics.median(ours_push)
        mark = "met" if push <= TARGET_PUSH_S else "MISSED"
        print(
            f"wal push per segment: median {push:.3f} s (max {max(ours_push):.3f} s) · cp "
            f"{statistics.median(cp_push):.3f} s · target <= {TARGET_PUSH_S} s ({mark})"
        )
    finally:
        for copy_dir in (work / "side" / "..").resolve().glob("restores/*"):
            LocalServer(copy_dir).stop("immediate")
        env.down()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
