"""``ptool-ops config``: validate and show an environment's settings (secrets as set/unset)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Environment settings: check them, show them, list the keys.")


@app.command()
def check(ctx: typer.Context) -> None:
    """Load and validate the environment's settings; names the failing key and its source."""
    app_ctx = context.get(ctx)
    settings = app_ctx.settings
    data = {"environment": settings.name, "valid": True}
    app_ctx.output.result(
        data, lambda out: out.print(f"[green]✓[/green] settings of {settings.name!r} are valid")
    )


@app.command()
def show(ctx: typer.Context) -> None:
    """Show the environment's effective settings; secret values are never shown."""
    app_ctx = context.get(ctx)
    shown = app_ctx.settings.describe()

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("key", "value", box=None)
        for key, value in shown.items():
            table.add_row(key, str(value))
        out.print(table)

    app_ctx.output.result(shown, render)


@app.command()
def keys(ctx: typer.Context) -> None:
    """List every setting an environment accepts, with its PTOOL_* variable."""
    from ptool_ops.settings import setting_keys

    app_ctx = context.get(ctx)
    infos = setting_keys()

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("key", "variable", "secret", "description", box=None)
        for info in infos:
            table.add_row(info.key, info.variable, "yes" if info.secret else "", info.description)
        out.print(table)

    app_ctx.output.result([i.model_dump() for i in infos], render)
