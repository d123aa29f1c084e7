"""``ptool-ops drill``: restore drills and their evidence (the work is in
:mod:`ptool_ops.drill`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Restore drills: prove the newest backups restore, measure RTO and RPO.")


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    pitr: bool = typer.Option(
        True, "--pitr/--no-pitr", help="Also restore the newest archived point beside live."
    ),
) -> None:
    """Restore the newest backup into a scratch database (and the newest archived point
    into a scratch copy), check them, drop them; record RTO and RPO in the repository.
    Exit 1 when a part failed (the failure is recorded too)."""
    from ptool_ops import drill

    app_ctx = context.get(ctx)
    env = app_ctx.env

    def say(line: str) -> None:
        if not app_ctx.output.json:
            app_ctx.output.err.print(f"  {line}…", markup=False, highlight=False)

    result = drill.run(env, pitr=pitr, progress=say)

    def render(out: Console) -> None:
        from rich.markup import escape

        for part in result.parts:
            mark = "[green]✓[/green]" if part.ok else "[red]✗[/red]"
            rto = f"RTO {part.rto_s:.1f} s" if part.rto_s is not None else "no RTO"
            out.print(f"{mark} {part.kind} from {escape(part.source or '?')}: {rto}")
            for problem in part.problems:
                out.print(f"    [red]•[/red] {escape(problem)}")
        for skipped in result.skipped:
            out.print(f"[dim]- skipped {escape(skipped)}[/dim]")
        if result.rpo_s is not None:
            out.print(f"RPO now: {result.rpo_s:.0f} s (age of the newest archived WAL)")
        verdict = "[green]passed[/green]" if result.ok else "[red]failed[/red]"
        out.print(f"drill {result.id} {verdict}; recorded in the repository (drills/)")

    app_ctx.output.result(result, render)
    if not result.ok:
        raise typer.Exit(1)


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Every recorded drill, oldest first."""
    from ptool_ops import drill

    app_ctx = context.get(ctx)
    found = drill.history(app_ctx.env.repository())

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("drill", "started", "ok", "RTO", "RPO", box=None)
        for doc in found:
            rto = drill.rto_text(doc)
            rpo = f"{doc['rpo_s']:.0f} s" if doc.get("rpo_s") is not None else "-"
            table.add_row(doc["id"], doc["started_at"], "yes" if doc["ok"] else "NO", rto, rpo)
        out.print(table)

    app_ctx.output.result(found, render)
