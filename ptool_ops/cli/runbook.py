"""``ptool-ops runbook``: what on-call runs, in the terminal, filled in for an environment."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Runbooks: what to run when (runbooks/ of the repository).")


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Every runbook and when it applies."""
    from ptool_ops import runbooks

    app_ctx = context.get(ctx)
    books = runbooks.all_runbooks()
    data = [{"name": b.name, "title": b.title, "when": b.when} for b in books]

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("runbook", "when", box=None)
        for book in books:
            table.add_row(book.name, book.when or book.title)
        out.print(table)

    app_ctx.output.result(data, render)


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The runbook (see 'ptool-ops runbook list')."),
) -> None:
    """One runbook, rendered; with --env its commands name that environment."""
    from ptool_ops import runbooks

    app_ctx = context.get(ctx)
    book = runbooks.find(name)
    chosen = app_ctx.env_name
    text = runbooks.render(book, chosen)

    def render(out: Console) -> None:
        from rich.markdown import Markdown

        if out.is_terminal:
            out.print(Markdown(text))
        else:
            out.print(text, markup=False, highlight=False, end="")

    app_ctx.output.result(
        {"name": book.name, "title": book.title, "environment": chosen, "text": text}, render
    )
