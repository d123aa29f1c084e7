"""``ptool-ops report --html FILE``: the environment's evidence on one page (the work is in
:mod:`ptool_ops.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console


def report(
    ctx: typer.Context,
    html_file: Path = typer.Option(
        ...,
        "--html",
        help="Write the page here (self-contained: no network, no script).",
        metavar="FILE",
    ),
) -> None:
    """Backups over time, the point-in-time window and its gaps, restore drills with their
    RTO against the target, secret ages, the audit chain: one HTML page. Exit 1 when a
    section names a problem (the page is written either way)."""
    from ptool_ops import report as report_lib
    from ptool_ops.errors import ConfigError
    from ptool_ops.files import atomic_write

    app_ctx = context.get(ctx)
    page, sections = report_lib.build(app_ctx.env)
    target = html_file.resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, page, mode=0o644)
    except OSError as err:
        raise ConfigError(
            f"cannot write {html_file}: {err.strerror}.", hint="Choose a writable path."
        ) from None
    data = {"file": str(target), "sections": report_lib.summary(sections)}
    problems = [p for s in sections for p in s.problems]

    def render(out: Console) -> None:
        from rich.markup import escape

        out.print(f"wrote {escape(str(target))} ({len(sections)} sections)")
        for problem in problems:
            out.print(f"  [red]•[/red] {escape(problem)}")

    app_ctx.output.result(data, render)
    if problems:
        raise typer.Exit(1)
