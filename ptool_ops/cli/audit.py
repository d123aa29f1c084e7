"""``ptool-ops audit``: read and check the hash-chained audit trail of an environment."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="The audit trail of mutating commands: show it, verify its hash chain.")


@app.command()
def show(
    ctx: typer.Context,
    last: int = typer.Option(20, "--last", min=1, help="How many of the newest records."),
) -> None:
    """The newest records: when, who, what, outcome."""
    from ptool_ops import audit

    app_ctx = context.get(ctx)
    records = audit.read(app_ctx.env.audit_sink.path)[-last:]

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("at", "actor", "action", "outcome", box=None)
        for item in records:
            colour = "green" if item["outcome"] == "ok" else "red"
            table.add_row(
                item["at"], item["actor"], item["action"], f"[{colour}]{item['outcome']}[/]"
            )
        out.print(table if records else "no audit records yet")

    app_ctx.output.result(records, render)


@app.command()
def verify(ctx: typer.Context) -> None:
    """Check the hash chain; exit 1 and name the first bad line when it is broken."""
    from ptool_ops import audit

    app_ctx = context.get(ctx)
    result = audit.require_intact(app_ctx.env.audit_sink.path)
    app_ctx.output.result(
        result,
        lambda out: out.print(f"[green]✓[/green] {result.records} records, chain intact"),
    )
