"""Backup and restore speed and memory of ``ptool-ops backup``, beside plain PostgreSQL tools.

Run (the issue's size, >= 1 GB: 1.1 M bookings and 2 M events make 1005 MiB = 1.05 GB):

    .venv/bin/python bench/backup.py --bookings 1100000 --tenants 60 --jobs 1 2 --repeat 3

or smaller for a quick look (``--bookings 300000``). The script starts a scratch embedded
PostgreSQL in a temporary directory, seeds it with the booking seed function (then
``VACUUM (FREEZE, ANALYZE)``, so no run pays for hint bits or races autovacuum), then runs,
side by side and each in its own process:

* backup baseline: ``pg_dump -Fc -Z0 | zstd -3 -q > file``
* ``ptool-ops backup create`` to ``file://`` and to moto's S3 server (its own process on
  the same 2 cores; its CPU during each run is printed beside ours)
* restore baseline: ``pg_restore -j N`` of a seekable ``pg_dump -Fc -Z0`` file
* ``ptool-ops backup restore ID --target-db ... -j N`` (checksum pass, streamed data,
  indexes with -j N, invariants and row counts)

and prints wall times, throughput ratios (ours / baseline; targets >= 0.9), the CPU of each
run's process tree and the peak RSS of each ptool-ops process (target < 200 MB whatever the
database size). ``--jobs 1 2`` runs (and prints) the serial and the parallel ratio of each
(there is no ``-Fd`` directory format: big tables are dumped and restored as parallel
streams instead, see docs/backup-repository.md; restores use the backup made with the
highest ``--jobs``).
The machine is shared and single runs vary by +-30 %: ``--repeat 3`` runs every backup and
restore three times, baseline and ours interleaved (each restored copy is dropped right after
its run, so autovacuum on it cannot slow down the next), and prints medians with min-max.
``ptool-ops backup restore`` overlaps its steps (per-table index builds while other tables
load, validation as soon as its tables are in): its printed step times overlap.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 0.9
TARGET_RSS_MB = 200


@dataclass
class Run:
    label: str
    seconds: float
    peak_rss_mb: float  # the process itself, sampled every 20 ms (psutil)
    tree_rss_mb: float  # the biggest of the process and its children (wait4)
    cpu_s: float  # user + system CPU of the process and its children (pg_dump, zstd; wait4)
    side_cpu_s: float  # CPU of the moto S3 server process meanwhile (0 without one)


def _sample_rss(pid: int, peak: list[float], done: threading.Event) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
    except psutil.Error:
        pass


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run(
    label: str,
    argv: list[str] | str,
    *,
    env: dict[str, str],
    cwd: Path,
    side: int | None = None,
) -> tuple[Run, str]:
    """Run a command (a list, or a shell pipeline): wall time, peak RSS (of the process and
    its descendants, from wait4), CPU (its own tree's and the ``side`` process's) and stdout.
    Output goes to files, so no pipe can fill."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        side_before = _cpu(side)
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, shell=isinstance(argv, str), stdout=out, stderr=err
        )
        peak = [0.0]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peak, done), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        side_cpu = _cpu(side) - side_before
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(label, seconds, peak[0], usage.ru_maxrss / 1024, cpu, side_cpu), stdout


def _start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server in its own process, as a real store would be: its CPU (it keeps
    every part in memory, concatenates them and hashes the whole object on completion)
    competes for the same 2 cores and is reported beside each run, but its threads do not
    share this process's interpreter lock with the RSS sampler and the timing."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (work / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):  # noqa: S310
                return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"moto's S3 server did not start; see {work / 'moto.log'}"
                ) from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=300_000)
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=[2],
        help="create/restore --jobs, and the baseline's pg_restore -j; several values run each",
    )
    parser.add_argument("--level", type=int, default=3, help="zstd level for both sides")
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 run")
    parser.add_argument("--no-restore", action="store_true", help="skip the restore runs")
    parser.add_argument("--encrypt", action="store_true", help="encrypt our backups")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each backup and restore (baseline and ours, interleaved) this many times; "
        "ratios are of the medians, with the spread (min-max) of each side",
    )
    args = parser.parse_args()

    from ptool_ops import pg
    from ptool_ops.booking.seed import seed
    from ptool_ops.local.env import LocalEnvironment
    from ptool_ops.privileges import OWNER

    work = Path(tempfile.mkdtemp(prefix="ptool-bench-"))
    os.chmod(work, 0o755)  # noqa: S103 - as root, the server runs as another OS user
    env = LocalEnvironment(work / "local", archive=False)
    env.up(api=False)
    moto = None
    try:
        # both sides run as the operator (booking_owner), as a deployed environment would,
        # who seeds the data too (as 'local seed' does); settling it (VACUUM of tables the
        # migrator owns, CHECKPOINT) is server set-up, by the scratch server's superuser
        url = env.facts.role_url(OWNER)
        print(f"seeding {args.bookings} bookings into a scratch server in {work} ...", flush=True)
        with pg.connect(url) as conn:
            seeded = seed(conn, tenants=args.tenants, bookings=args.bookings, seed=1)
        with pg.connect(env.server.superuser_url("booking", purpose="bench set-up")) as conn:
            # settle the new rows first, as a production database's are: otherwise the
            # first runs (the baseline's first) set hint bits and race autovacuum's
            # insert-triggered vacuum of the whole seed
            conn.execute("VACUUM (FREEZE, ANALYZE)")
            conn.execute("CHECKPOINT")
            size = pg.server_facts(conn).size_bytes
        print(
            f"  {seeded.bookings} bookings, {seeded.events} events in {seeded.elapsed_s:.0f} s;"
            f" database size {size / 2**20:.0f} MiB",
            flush=True,
        )

        pg_dump = pg.find_tool("pg_dump", server_major=18)
        pg_restore = pg.find_tool("pg_restore", server_major=18)
        zstd = shutil.which("zstd")
        conninfo, tool_env = pg.tool_invocation(url)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
        child_env.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - moto's fake credentials
            AWS_REGION="us-east-1",
        )
        if args.encrypt:
            child_env["PTOOL_BACKUP_KEY"] = base64.b64encode(os.urandom(32)).decode()
        tool_env = {**tool_env}
        runs: dict[str, list[Run]] = {}

        def record(label: str, result: Run) -> Run:
            runs.setdefault(label, []).append(result)
            return result

        base_file = work / "baseline.dump.zst"
        if zstd is None:
            raise SystemExit("the baseline needs the zstd command on PATH")

        def dump_base() -> None:
            base_file.unlink(missing_ok=True)
            done = record(
                "dump-base",
                run(
                    "baseline pg_dump -Fc -Z0 | zstd",
                    f"'{pg_dump.path}' -Fc -Z0 -d '{conninfo}' | '{zstd}' -{args.level} -q -o "
                    f"'{base_file}'",
                    env=tool_env,
                    cwd=work,
                )[0],
            )
            print(
                f"  baseline backup: {done.seconds:.1f} s, "
                f"{base_file.stat().st_size / 2**20:.0f} MiB, CPU {done.cpu_s:.1f} s",
                flush=True,
            )

        ptool = str(Path(sys.executable).with_name("ptool-ops"))
        config = [
            "[environments.bench]",
            f'database_url = "{url}"',
            f'repo_url = "file://{work / "repo"}"',
            f"backup_compression_level = {args.level}",
        ]
        if not args.no_s3:
            moto, endpoint = _start_moto(work)
            import boto3

            boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",  # noqa: S106 - moto's fake credentials
            ).create_bucket(Bucket="bench")
            config += [
                "[environments.bench-s3]",
                f'database_url = "{url}"',
                'repo_url = "s3://bench/ptool"',
                f'aws_endpoint_url = "{endpoint}"',
                f"backup_compression_level = {args.level}",
            ]
        (work / "ptool-ops.toml").write_text("\n".join(config) + "\n")

        def create(environment: str, label: str, jobs: int, *extra: str) -> str:
            import json

            done, out = run(
                label,
                [
                    ptool,
                    "--env",
                    environment,
                    "backup",
                    "create",
                    "-o",
                    "json",
                    "-j",
                    str(jobs),
                    *extra,
                ],
                env=child_env,
                cwd=work,
                side=moto.pid if moto is not None else None,
            )
            record(label, done)
            data = json.loads(out)
            print(
                f"  {label}: {done.seconds:.1f} s, "
                f"{data['stored_bytes'] / 2**20:.0f} MiB stored,"
                f" peak RSS {done.peak_rss_mb:.0f} MB, CPU {done.cpu_s:.1f} s"
                + (
                    f" (+ moto {done.side_cpu_s:.1f} s)"
                    if moto is not None and environment.endswith("s3")
                    else ""
                ),
                flush=True,
            )
            return str(data["id"])

        top = max(args.jobs)
        backup_id = ""
        for _ in range(args.repeat):
            dump_base()
            for jobs in args.jobs:
                made = create("bench", f"ours-file -j{jobs}", jobs)
                backup_id = made if jobs == top else backup_id
                if not args.no_s3:
                    create("bench-s3", f"ours-s3 -j{jobs}", jobs)
            create("bench", f"ours-file -j{top} no counts", top, "--no-row-counts")

        if not args.no_restore:
            plain = work / "plain.dump"
            subprocess.run(
                [str(pg_dump.path), "-Fc", "-Z0", "-d", conninfo, "-f", str(plain)],
                env=tool_env,
                check=True,
            )
            base_conninfo, _ = pg.tool_invocation(env.facts.role_url(OWNER, "bench_base"))

            def drop(name: str) -> None:
                # right after each run: autovacuum on a just-restored copy (insert-triggered
                # vacuum and analyze of ~1 GB) would otherwise slow down the next run
                with pg.connect(url) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

            for _, jobs in ((r, j) for r in range(args.repeat) for j in args.jobs):
                # interleaved: the machine's load hits both sides
                drop("bench_base")
                drop("bench_ours")
                with pg.connect(url) as conn:
                    conn.execute("CREATE DATABASE bench_base")
                done = record(
                    f"restore-base -j{jobs}",
                    run(
                        f"baseline pg_restore -j {jobs}",
                        [
                            str(pg_restore.path),
                            "-j",
                            str(jobs),
                            "-d",
                            base_conninfo,
                            str(plain),
                        ],
                        env=tool_env,
                        cwd=work,
                    )[0],
                )
                print(f"  baseline restore -j {jobs}: {done.seconds:.1f} s", flush=True)
                drop("bench_base")
                done, restored = run(
                    "ours restore",
                    [
                        ptool,
                        "--env",
                        "bench",
                        "backup",
                        "restore",
                        backup_id,
                        "--target-db",
                        "bench_ours",
                        "-j",
                        str(jobs),
                        "-o",
                        "json",
                    ],
                    env=child_env,
                    cwd=work,
                )
                record(f"restore-ours -j{jobs}", done)
                drop("bench_ours")
                import json

                steps = ", ".join(
                    f"{st['name']} {st['elapsed_s']:.1f} s" for st in json.loads(restored)["steps"]
                )
                print(f"  ours restore steps (overlapping): {steps}")
                print(
                    f"  ours restore -j {jobs}: {done.seconds:.1f} s, peak RSS "
                    f"{done.peak_rss_mb:.0f} MB",
                    flush=True,
                )

        print()
        print(
            f"database {size / 2**20:.0f} MiB, {args.bookings} bookings, zstd -{args.level}, "
            f"{os.cpu_count()} CPUs, encryption {'on' if args.encrypt else 'off'}"
        )

        def median(label: str) -> float:
            return statistics.median(r.seconds for r in runs[label])

        def spread(label: str) -> str:
            times = [r.seconds for r in runs[label]]
            if len(times) == 1:
                return f"{times[0]:.1f} s"
            return (
                f"median {median(label):.1f} s ({min(times):.1f}-{max(times):.1f}, n={len(times)})"
            )

        def peak(label: str) -> float:
            return max(r.peak_rss_mb for r in runs[label])

        def tree(label: str) -> float:
            return max(r.tree_rss_mb for r in runs[label])

        base = median("dump-base")
        print(f"backup  baseline pg_dump | zstd   {spread('dump-base')}")
        for label in (k for k in runs if k.startswith("ours-")):
            ratio = base / median(label)
            print(
                f"backup  {label:24} {spread(label)}  ratio {ratio:4.2f} "
                f"({'ok' if ratio >= TARGET_RATIO else 'BELOW'} {TARGET_RATIO})  "
                f"{size / 2**20 / median(label):6.1f} MiB/s  peak RSS {peak(label):5.0f} MB "
                f"({'ok' if peak(label) < TARGET_RSS_MB else 'OVER'} {TARGET_RSS_MB}; "
                f"biggest process in its tree {tree(label):.0f} MB)"
            )
        for jobs in args.jobs:
            ours, theirs = f"restore-ours -j{jobs}", f"restore-base -j{jobs}"
            if ours not in runs:
                continue
            ratio = median(theirs) / median(ours)
            print(f"restore baseline pg_restore -j {jobs}  {spread(theirs)}")
            print(
                f"restore ours -j {jobs}         {spread(ours)}  ratio {ratio:4.2f} "
                f"({'ok' if ratio >= TARGET_RATIO else 'BELOW'} {TARGET_RATIO})  peak RSS "
                f"{peak(ours):5.0f} MB (tree {tree(ours):.0f} MB; baseline "
                f"tree {tree(theirs):.0f} MB)"
            )
        print(
            f"streams: --jobs {' '.join(map(str, args.jobs))} for create (big tables in their "
            "own streams) and "
            "restore (parallel table loads, per-table index builds as rows arrive); no -Fd "
            "directory format"
        )
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
        env.server.stop("immediate")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
