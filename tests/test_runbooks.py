"""Every ptool-ops command in runbooks/ must parse against the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from ptool_ops.cli.main import app, hoist_global_options

RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def runbook_commands() -> list[tuple[str, str]]:
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for block in _BLOCK.findall(path.read_text()):
            for line in block.splitlines():
                if line.strip().startswith("ptool-ops "):
                    found.append((path.name, line.strip()))
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


@pytest.mark.parametrize(("runbook", "line"), runbook_commands())
def test_runbook_command_parses(runbook: str, line: str) -> None:
    assert parse(line), f"{runbook}: {line} names no command"


def test_a_broken_command_is_caught() -> None:
    with pytest.raises(Exception):  # noqa: B017 - click's UsageError family
        parse("ptool-ops local up --no-such-flag")
    with pytest.raises(Exception):  # noqa: B017
        parse("ptool-ops locall up")
