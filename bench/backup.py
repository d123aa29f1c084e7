"""Backup and restore speed and memory of ``ptool-ops backup``, beside plain PostgreSQL tools.

Run (the issue's size, >= 1 GB; about 4.5 M bookings):

    .venv/bin/python bench/backup.py --bookings 4500000

or smaller for a quick look (``--bookings 300000``). The script starts a scratch embedded
PostgreSQL in a temporary directory, seeds it with the booking seed function, then runs,
side by side and each in its own process:

* backup baseline: ``pg_dump -Fc -Z0 | zstd -3 -q > file``
* ``ptool-ops backup create`` to ``file://`` and to a moto S3 server (in this process)
* restore baseline: ``pg_restore -j N`` of a seekable ``pg_dump -Fc -Z0`` file
* ``ptool-ops backup restore ID --target-db ... -j N`` (checksum pass, streamed data,
  indexes with -j N, invariants and row counts)

and prints wall times, throughput ratios (ours / baseline; targets >= 0.9) and the peak RSS
of each ptool-ops process (target < 200 MB whatever the database size). ``--jobs 1`` and
``--jobs 2`` give the serial and parallel ratios (there is no ``-Fd`` directory format: big
tables are dumped and restored as parallel streams instead, see docs/backup-repository.md).
The machine is shared: run it twice and compare, single runs vary by +-30 %.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
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


def _sample_rss(pid: int, peak: list[float], done: threading.Event) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
    except psutil.Error:
        pass


def run(label: str, argv: list[str] | str, *, env: dict[str, str], cwd: Path) -> tuple[Run, str]:
    """Run a command (a list, or a shell pipeline): wall time, peak RSS (of the process and
    its descendants, from wait4) and stdout. Output goes to files, so no pipe can fill."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, shell=isinstance(argv, str), stdout=out, stderr=err
        )
        peak = [0.0]
        done = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peak, done), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return Run(label, seconds, peak[0], usage.ru_maxrss / 1024), stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=300_000)
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="create/restore --jobs, and the baseline's pg_restore -j",
    )
    parser.add_argument("--level", type=int, default=3, help="zstd level for both sides")
    parser.add_argument("--no-s3", action="store_true", help="skip the moto S3 run")
    parser.add_argument("--no-restore", action="store_true", help="skip the restore runs")
    parser.add_argument("--encrypt", action="store_true", help="encrypt our backups")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    from ptool_ops import pg
    from ptool_ops.booking.seed import seed
    from ptool_ops.local.env import LocalEnvironment

    work = Path(tempfile.mkdtemp(prefix="ptool-bench-"))
    os.chmod(work, 0o755)  # noqa: S103 - as root, the server runs as another OS user
    env = LocalEnvironment(work / "local", archive=False)
    try:
        env.up(api=False)  # type: ignore[call-arg]
    except TypeError:
        env.up()
    moto = None
    try:
        url = env.database_url()
        print(f"seeding {args.bookings} bookings into a scratch server in {work} ...", flush=True)
        with pg.connect(url) as conn:
            seeded = seed(conn, tenants=args.tenants, bookings=args.bookings, seed=1)
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
        runs: dict[str, Run] = {}

        base_file = work / "baseline.dump.zst"
        if zstd is None:
            raise SystemExit("the baseline needs the zstd command on PATH")
        runs["dump-base"], _ = run(
            "baseline pg_dump -Fc -Z0 | zstd",
            f"'{pg_dump.path}' -Fc -Z0 -d '{conninfo}' | '{zstd}' -{args.level} -q -o "
            f"'{base_file}'",
            env=tool_env,
            cwd=work,
        )
        print(
            f"  baseline backup: {runs['dump-base'].seconds:.1f} s, "
            f"{base_file.stat().st_size / 2**20:.0f} MiB",
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
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto.start()
            host, port = moto.get_host_and_port()
            endpoint = f"http://{host}:{port}"
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

        def create(environment: str, label: str, *extra: str) -> str:
            import json

            runs[label], out = run(
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
                    str(args.jobs),
                    *extra,
                ],
                env=child_env,
                cwd=work,
            )
            data = json.loads(out)
            print(
                f"  {label}: {runs[label].seconds:.1f} s, "
                f"{data['stored_bytes'] / 2**20:.0f} MiB stored,"
                f" peak RSS {runs[label].peak_rss_mb:.0f} MB",
                flush=True,
            )
            return str(data["id"])

        backup_id = create("bench", "ours-file")
        create("bench", "ours-file-nocount", "--no-row-counts")
        if not args.no_s3:
            create("bench-s3", "ours-s3")

        if not args.no_restore:
            plain = work / "plain.dump"
            subprocess.run(
                [str(pg_dump.path), "-Fc", "-Z0", "-d", conninfo, "-f", str(plain)],
                env=tool_env,
                check=True,
            )
            with pg.connect(url) as conn:
                conn.execute("CREATE DATABASE bench_base")
            base_conninfo, _ = pg.tool_invocation(env.database_url("bench_base"))
            runs["restore-base"], _ = run(
                f"baseline pg_restore -j {args.jobs}",
                [str(pg_restore.path), "-j", str(args.jobs), "-d", base_conninfo, str(plain)],
                env=tool_env,
                cwd=work,
            )
            print(f"  baseline restore: {runs['restore-base'].seconds:.1f} s", flush=True)
            runs["restore-ours"], restored = run(
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
                    str(args.jobs),
                    "-o",
                    "json",
                ],
                env=child_env,
                cwd=work,
            )
            import json

            steps = ", ".join(
                f"{st['name']} {st['elapsed_s']:.1f} s" for st in json.loads(restored)["steps"]
            )
            print(f"  ours restore steps: {steps}")
            print(
                f"  ours restore: {runs['restore-ours'].seconds:.1f} s, peak RSS "
                f"{runs['restore-ours'].peak_rss_mb:.0f} MB",
                flush=True,
            )

        print()
        print(
            f"database {size / 2**20:.0f} MiB, {args.bookings} bookings, zstd -{args.level}, "
            f"{os.cpu_count()} CPUs, encryption {'on' if args.encrypt else 'off'}"
        )
        base = runs["dump-base"].seconds
        for label in ("ours-file", "ours-file-nocount", "ours-s3"):
            if label in runs:
                r = runs[label]
                ratio = base / r.seconds
                print(
                    f"backup  {label:18} {r.seconds:7.1f} s  ratio {ratio:4.2f} "
                    f"({'ok' if ratio >= TARGET_RATIO else 'BELOW'} {TARGET_RATIO})  "
                    f"{size / 2**20 / r.seconds:6.1f} MiB/s  peak RSS {r.peak_rss_mb:5.0f} MB "
                    f"({'ok' if r.peak_rss_mb < TARGET_RSS_MB else 'OVER'} {TARGET_RSS_MB}; "
                    f"biggest process in its tree {r.tree_rss_mb:.0f} MB)"
                )
        if "restore-ours" in runs:
            r = runs["restore-ours"]
            ratio = runs["restore-base"].seconds / r.seconds
            print(
                f"restore ours -j {args.jobs}         {r.seconds:7.1f} s  ratio {ratio:4.2f} "
                f"({'ok' if ratio >= TARGET_RATIO else 'BELOW'} {TARGET_RATIO})  peak RSS "
                f"{r.peak_rss_mb:5.0f} MB (tree {r.tree_rss_mb:.0f} MB)  "
                f"(baseline {runs['restore-base'].seconds:.1f} s, tree "
                f"{runs['restore-base'].tree_rss_mb:.0f} MB)"
            )
        print(
            f"streams: --jobs {args.jobs} for create (big tables in their own streams) and "
            "restore (parallel table loads, pg_restore -j for indexes); no -Fd directory format"
        )
    finally:
        if moto is not None:
            moto.stop()
        env.server.stop("immediate")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
