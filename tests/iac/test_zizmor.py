"""zizmor's offline audit of the workflows and the composite action finds nothing.

The workflows hold production credentials; docs/iac.md ("CI workflows and zizmor") says what
the audit checks and why each inline ``# zizmor: ignore[...]`` is kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / ".github"
# zizmor reads a token from any of these; the audit must not go online
TOKEN_VARIABLES = ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN")


def zizmor() -> str:
    """The zizmor of this virtualenv (the dev extra), else the one on PATH."""
    here = Path(sys.executable).parent / "zizmor"
    found = str(here) if here.is_file() else shutil.which("zizmor")
    if found is None:
        message = "zizmor is not installed: pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def describe(finding: dict[str, Any]) -> str:
    determinations = finding.get("determinations", {})
    lines = [
        f"{finding['ident']} ({determinations.get('severity')}, "
        f"confidence {determinations.get('confidence')}): {finding.get('desc')}"
    ]
    for location in finding.get("locations", []):
        path = location["symbolic"]["key"].get("Local", {}).get("verbatim_path", "?")
        start = location["concrete"]["location"]["start_point"]
        lines.append(
            f"    {os.path.relpath(path, ROOT)}"
            f":{start['row'] + 1}:{start['column'] + 1}: {location['symbolic']['annotation']}"
            f"  [{location['concrete']['feature'].splitlines()[0]}]"
        )
    return "\n".join(lines)


def test_zizmor_offline_audit_finds_nothing() -> None:
    env = {key: value for key, value in os.environ.items() if key not in TOKEN_VARIABLES}
    env["NO_COLOR"] = "1"
    result = subprocess.run(
        # --no-config: only the inline ignore comments (each with its reason) count
        [zizmor(), "--offline", "--no-config", "--format", "json", "--no-progress", str(GITHUB)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        findings: list[dict[str, Any]] = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"zizmor exited {result.returncode} without JSON:\n{result.stderr}")
    shown = [f for f in findings if not f.get("ignored")]
    assert not shown, f"{len(shown)} zizmor finding(s):\n" + "\n".join(map(describe, shown))
    assert result.returncode == 0, result.stderr


def test_every_kept_finding_says_why() -> None:
    """An inline ignore names its rule and gives a reason on the same line."""
    ignores = []
    for path in sorted(GITHUB.rglob("*.yml")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "zizmor:" in line:
                match = re.search(r"# zizmor: ignore\[([a-z-]+(?:,[a-z-]+)*)\]\s*(\S.*)?$", line)
                assert match, f"{path.relative_to(ROOT)}:{number}: malformed: {line.strip()}"
                assert match.group(2), f"{path.relative_to(ROOT)}:{number}: no reason given"
                ignores.append(match.group(1))
    assert ignores == ["github-env"]  # docs/iac.md lists each one; update both together
