"""Every bench in bench/ still runs: a small, fast size of each, end to end, printing its
ratio line. The timings of these runs mean nothing and are never checked (speed targets are
the benches' own business, at their real sizes); only that the bench completes -- its exit
is 0 (target met) or 1 (missed), never a crash -- and says its ratio."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

#: bench -> (small arguments, the ratio line it must print)
SMALL: dict[str, tuple[list[str], str]] = {
    "help_time.py": (["--runs", "2"], r"^ratio ptool-ops / bare Typer: \d+\.\d\d$"),
    "api_reload.py": (
        ["--rate", "40", "--seconds", "2", "--bookings", "300"],
        r"^p99 ratio reloads / baseline: \d+\.\d\d$",
    ),
    "migrate_under_load.py": (
        [
            "--bookings",
            "2000",
            "--tenants",
            "3",
            "--rate",
            "20",
            "--baseline-seconds",
            "2",
            "--chunk-seconds",
            "1",
            "--artists",
            "300",
        ],
        r"^p99 ratio during / baseline: \d+\.\d\d$",
    ),
    "backup.py": (
        ["--bookings", "2000", "--tenants", "3", "--no-s3"],
        r"ours-file -j2 .* ratio \d+\.\d\d",
    ),
    "rotate_under_load.py": (
        [
            "--rate",
            "100",
            "--chunk-seconds",
            "1",
            "--baseline-seconds",
            "1",
            "--rotations",
            "1",
            "--linger-seconds",
            "4",
            "--bookings",
            "100",
        ],
        r"^p99 ratio rotations / baseline: \d+\.\d\d$",
    ),
    "pitr.py": (
        ["--bookings", "2000", "--tenants", "3", "--wal-mb", "40", "--segments", "2"],
        r"^ratio pitr restore / baseline: \d+\.\d\d",
    ),
    "recover.py": (
        [
            "--bookings",
            "3000",
            "--tenants",
            "3",
            "--deleted",
            "200",
            "--updated",
            "20",
            "--writes",
            "30",
        ],
        r"^ratio recover / full restore \+ replace: \d+\.\d\d",
    ),
}


def test_every_bench_has_a_small_size() -> None:
    assert sorted(p.name for p in BENCH.glob("*.py")) == sorted(SMALL)


@pytest.mark.parametrize("bench", sorted(SMALL))
def test_the_bench_completes_and_prints_its_ratio(bench: str) -> None:
    args, ratio = SMALL[bench]
    if bench == "backup.py" and shutil.which("zstd") is None:
        pytest.skip("bench/backup.py's baseline is 'pg_dump | zstd': no zstd on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
    result = subprocess.run(
        [sys.executable, str(BENCH / bench), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=BENCH.parent,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert re.search(ratio, result.stdout, re.MULTILINE), result.stdout
