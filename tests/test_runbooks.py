"""Every ptool-ops command in runbooks/ must parse against the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from ptool_ops.cli.main import app, hoist_global_options
from tests.conftest import Cli

RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def runbook_commands() -> list[tuple[str, str]]:
    """(``runbook.md:LINE``, command) for every ptool-ops command in a sh block."""
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        text = path.read_text()
        for block in _BLOCK.finditer(text):
            first = text.count("\n", 0, block.start(1)) + 1
            for offset, line in enumerate(block[1].splitlines()):
                if line.strip().startswith("ptool-ops "):
                    found.append((f"{path.name}:{first + offset}", line.strip()))
    return found


def parse(command_line: str) -> list[str]:
    """Parse like the CLI would, without running: returns the command path."""
    args = hoist_global_options(shlex.split(command_line)[1:])
    command = typer.main.get_command(app)
    ctx = command.make_context("ptool-ops", list(args))
    path = []
    while hasattr(command, "resolve_command"):
        rest = [*ctx._protected_args, *ctx.args]  # the subcommand and its arguments
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None, f"unknown command {name!r}"
        path.append(sub.name)
        ctx = sub.make_context(name or "", list(rest), parent=ctx)
        command = sub
    return path


def test_runbooks_have_commands() -> None:
    assert len(runbook_commands()) >= 5


@pytest.mark.parametrize(
    ("runbook", "line"), runbook_commands(), ids=[where for where, _ in runbook_commands()]
)
def test_runbook_command_parses(runbook: str, line: str) -> None:
    try:
        path = parse(line)
    except Exception as err:  # click's usage errors: say where the runbook is wrong
        pytest.fail(f"{runbook}: {line!r} no longer parses: {err}", pytrace=False)
    assert path, f"{runbook}: {line} names no command"


def test_runbook_show_fills_in_the_environment(cli: Cli) -> None:
    listed = cli("runbook list -o json")
    assert listed.exit_code == 0, listed.output
    names = {b["name"] for b in listed.json()}
    assert {"rotate-secret", "point-in-time-restore", "status-alert"} <= names
    shown = cli("--env prod runbook show rotate-secret -o json")
    assert shown.exit_code == 0, shown.output
    text = shown.json()["text"]
    assert "ptool-ops --env prod secrets status" in text and "--env ENV" not in text
    unknown = cli("runbook show rotate")
    assert unknown.exit_code == 2 and "did you mean rotate-secret" in unknown.output


def test_a_broken_command_is_caught() -> None:
    with pytest.raises(Exception):  # noqa: B017 - click's UsageError family
        parse("ptool-ops local up --no-such-flag")
    with pytest.raises(Exception):  # noqa: B017
        parse("ptool-ops locall up")
