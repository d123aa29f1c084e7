"""``ptool-ops report --html``: one self-contained page, rendered by headless Chromium
(Debian's chromium; .ci/run installs it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptool_ops.local.env import LocalEnvironment
from tests.conftest import Cli, local_server

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with local_server(tmp_path_factory.mktemp("report") / "local", api=False) as env:
        yield env


def dump_dom(page: Path, profile: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None and os.environ.get("PTOOL_NO_CHROMIUM"):
        pytest.skip(".ci/run could not install Debian's chromium: rendering not checked")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does)")
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_report_renders_every_section(cli: Cli, local: LocalEnvironment) -> None:
    cli.write_config(f'[environments.local]\nlocal_dir = "{local.paths.root}"\n')
    assert cli("local seed --tenants 2 --bookings 200").exit_code == 0
    assert cli("backup create").exit_code == 0
    assert cli("pitr base-backup").exit_code == 0
    assert cli("drill run --no-pitr").exit_code == 0
    page = cli.cwd / "out" / "report.html"

    made = cli(f"report --html {page} -o json")
    assert made.exit_code == 0, made.output
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
    dom = dump_dom(page, cli.cwd / "chromium")
    for section in ("summary", "backups", "pitr", "drills", "secrets", "audit"):
        assert f'<section id="{section}">' in dom, section
    assert "Nothing needs attention." in dom
    assert "hash chain intact" in dom and re.search(r"<svg[^>]*>.*<rect", dom, re.DOTALL)

    # the report holds backups and drills to the thresholds status holds them to
    cli.write_config(
        f'[environments.local]\nlocal_dir = "{local.paths.root}"\n'
        "status_backup_max_age_h = 0.00001\nstatus_drill_max_age_days = 0.0000001\n"
    )
    stale = cli(f"report --html {page} -o json")
    assert stale.exit_code == 1, stale.output
    sections = stale.json()["sections"]
    assert "threshold 1e-05 h, status_backup_max_age_h" in sections["backups"]["problems"][0]
    assert "status_drill_max_age_days" in sections["drills"]["problems"][0]
    cli.write_config(f'[environments.local]\nlocal_dir = "{local.paths.root}"\n')

    # one byte of the audit trail changed: the page says so, and the command exits 1
    event = local.paths.root / "repo" / "audit" / "local" / "0000000002.json"
    event.write_text(event.read_text().replace('"ok"', '"OK"', 1))
    broken = cli(f"report --html {page}")
    assert broken.exit_code == 1 and "audit chain broken" in broken.output
    assert "chain broken at event 2" in dump_dom(page, cli.cwd / "chromium")
