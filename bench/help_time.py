"""How long ``ptool-ops --help`` takes, beside a bare Typer app of the same shape.

Run: ``.venv/bin/python bench/help_time.py [--runs 15]``

ptool-ops renders plain Click help (``rich_markup_mode=None``): rich help rendering alone
costs about 0.2 s here, more than the target leaves.

The baseline is a Typer app with the same command groups and no imports of its own; the
ratio shows what ptool-ops adds at start-up. Target: ptool-ops --help under 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.3

BASELINE = """
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)
for group in ("local", "config", "api", "migrate", "backup"):
    sub = typer.Typer()
    for name in ("up", "down", "status", "reset", "url"):
        sub.command(name)(lambda: None)
    app.add_typer(sub, name=group)


@app.callback()
def root(env: str = typer.Option(None, "--env"), output: str = "text") -> None:
    pass


@app.command()
def status() -> None:
    pass


app()
"""


def measure(argv: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    exe = Path(sys.executable).parent / "ptool-ops"
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "bare_typer.py"
        baseline.write_text(BASELINE)
        measure([str(exe), "--help"], 2)  # warm the page cache and .pyc files
        measure([sys.executable, str(baseline), "--help"], 2)
        ours = statistics.median(measure([str(exe), "--help"], args.runs))
        base = statistics.median(measure([sys.executable, str(baseline), "--help"], args.runs))
    print(f"ptool-ops --help   median {ours:.3f} s over {args.runs} runs")
    print(f"bare Typer --help  median {base:.3f} s over {args.runs} runs")
    print(f"ratio ptool-ops / bare Typer: {ours / base:.2f}")
    verdict = "meets" if ours < TARGET_S else "MISSES"
    print(f"target < {TARGET_S:.1f} s: {verdict}")
    return 0 if ours < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
