"""``ptool-ops tour``: a guided drill on a local environment of its own (the work is in
:mod:`ptool_ops.tour`; this module parses and renders)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.tour import Mark, TourResult

_MARKS = {"ok": "[green]✓[/green] ", "bad": "[red]✗[/red] ", "info": ""}


class _Narrator:
    """The tour's story on a console: chapters, the commands as typed, what they returned."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def chapter(self, number: int, title: str, text: str) -> None:
        from rich.markup import escape

        heading = f"{number}. {title}" if number else title
        self.console.print(f"\n[bold]{escape(heading)}[/bold]")
        self.console.print(f"[dim]{escape(text)}[/dim]")

    def command(self, line: str) -> None:
        from rich.markup import escape

        self.console.print(f"[bold cyan]$ {escape(line)}[/bold cyan]")

    def say(self, text: str, mark: Mark = "info") -> None:
        from rich.markup import escape

        self.console.print(f"  {_MARKS[mark]}{escape(text)}")

    def raw(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self.console.print(f"  {line}", markup=False, highlight=False)


def tour(
    ctx: typer.Context,
    directory: Path = typer.Option(
        Path("ptool-tour"),
        "--dir",
        help="Where the tour makes its own local environment: a new or empty directory, or"
        " one a tour made before (started afresh).",
    ),
    keep: bool = typer.Option(
        False, "--keep", help="Leave the tour's environment running at the end."
    ),
    tenants: int = typer.Option(10, "--tenants", min=1, help="Tenants to seed."),
    bookings: int = typer.Option(20_000, "--bookings", min=1, help="Bookings to seed."),
) -> None:
    """A guided drill: set up a local environment, back it up, delete one tenant's
    bookings, recover exactly those rows, rotate a secret while the API serves, then
    status, audit log and the HTML report -- each step the command an operator types.
    Exit 1 unless every deleted booking is back and the checks pass."""
    from ptool_ops import tour as tour_lib
    from ptool_ops.errors import ConfigError, ProblemsFound

    app_ctx = context.get(ctx)
    if app_ctx.env_name not in (None, "local"):
        raise ConfigError(
            f"the tour runs on a local environment of its own, not on {app_ctx.env_name!r}.",
            hint="Drop --env (or unset PTOOL_ENV) to take the tour.",
        )
    out = app_ctx.output
    if app_ctx.dry_run:
        tour_lib.check_directory(directory)
        plan = {"dry_run": True, "directory": str(directory.resolve())}
        app_ctx.output.result({**plan, "chapters": list(tour_lib.CHAPTERS)}, None)
        return
    # the story is the tour's product: stdout for people; stderr beside the JSON result
    narrator = _Narrator(out.err if out.json else out.out)
    result = tour_lib.run(directory, narrator, tenants=tenants, bookings=bookings, keep=keep)
    out.result(result, lambda console: _render(console, result))
    if not result.ok:
        what = []
        if not result.all_back:
            what.append(
                f"{result.bookings_before - result.bookings_after_recovery} of"
                f" {result.bookings_before} deleted bookings of {result.tenant} are not back"
                if result.bookings_after_recovery < result.bookings_before
                else f"the bookings of {result.tenant} differ from before the accident"
            )
        what.extend(result.problems)
        app_ctx.fail(
            ProblemsFound(
                f"the tour ended with problems: {'; '.join(what)}.",
                hint=f"The tour's environment is in {result.directory}; rerun with --keep to"
                " look at it running.",
            )
        )


def _render(out: Console, result: TourResult) -> None:
    from rich.markup import escape

    out.print()
    counts = (
        f"{result.tenant}: {result.bookings_before} bookings before the accident,"
        f" {result.bookings_after_accident} after it, {result.bookings_after_recovery} after"
        " recovery"
    )
    if result.all_back:
        out.print(f"[green]✓[/green] every deleted booking is back -- {escape(counts)}")
    else:
        out.print(f"[red]✗[/red] not every deleted booking is back -- {escape(counts)}")
    for problem in result.problems:
        out.print(f"[red]✗[/red] {escape(problem)}")
    out.print(
        f"the tour took {result.elapsed_s:.0f} s; its report: {escape(result.report_file or '-')}"
    )
    where = escape(result.directory)
    if result.kept:
        out.print(
            f"its environment is running in {where}: cd there and try 'ptool-ops status',"
            " 'ptool-ops runbook list'; 'ptool-ops local down' stops it"
        )
    else:
        out.print(
            f"its data stays in {where} ('ptool-ops local up' there starts it again;"
            " delete the directory when done; the tour run again starts afresh)"
        )
