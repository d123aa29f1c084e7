"""``ptool-ops status``: one screen of the environment; non-zero exit when something is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context
from ptool_ops.console import human_size

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.status import StatusReport


def status(
    ctx: typer.Context,
    invariants: bool | None = typer.Option(
        None,
        "--invariants/--no-invariants",
        help="--invariants: every booking invariant (they read every row: seconds on a big"
        " database); by default only those that read the catalog; --no-invariants: none.",
    ),
    prometheus: Path | None = typer.Option(
        None,
        "--prometheus",
        help="Also write the figures to FILE in Prometheus' text format (atomically).",
        metavar="FILE",
    ),
) -> None:
    """One screen: database, schema and migrations, invariants, API, newest backup, WAL
    archiver, point-in-time window, managed secrets, booking KPIs. Exit 1 naming each
    breached threshold (status_* and secret_max_age_days settings)."""
    from ptool_ops.status import collect, write_prometheus

    app_ctx = context.get(ctx)
    report = collect(app_ctx.env, invariants=invariants)
    if prometheus is not None:
        try:
            write_prometheus(report, prometheus)
        except OSError as err:
            from ptool_ops.errors import ConfigError

            raise ConfigError(
                f"cannot write {prometheus}: {err.strerror}.",
                hint="Point --prometheus at a writable file (node-exporter's textfile directory).",
            ) from None
    app_ctx.output.result(report, lambda out: _render(out, report))
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _render(out: Console, report: StatusReport) -> None:
    from rich.markup import escape
    from rich.table import Table

    mark = "[green]healthy[/green]" if report.ok else "[red]unhealthy[/red]"
    out.print(f"[bold]{report.environment}[/bold] ({report.kind}): {mark}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    db = report.database
    if db.reachable:
        table.add_row("database", f"[green]reachable[/green] {escape(db.target or '')}")
        table.add_row("server", f"PostgreSQL {db.server_version}")
        table.add_row("size", human_size(db.size_bytes))
        table.add_row("schema version", db.schema_version or "[red]none[/red]")
        table.add_row("WAL", f"wal_level={db.wal_level}, archive_mode={db.archive_mode}")
    else:
        table.add_row("database", f"[red]unreachable[/red] {escape(db.error or '')}")
    if report.invariants is not None:
        for result in report.invariants["checks"]:
            count = result["total"]
            shown = "[green]ok[/green]" if count == 0 else f"[red]{count} violation(s)[/red]"
            if result.get("truncated"):
                shown += " (truncated)"
            table.add_row(f"invariant {result['name']}", shown)
            for violation in result["violations"][:5]:
                table.add_row("", f"[red]•[/red] {escape(violation['detail'])}")
        if report.invariants.get("scope") == "catalog":
            table.add_row("invariants", "[dim]the checks that read every row: --invariants[/dim]")
    api = report.api
    if api is not None:
        if api.error:
            table.add_row("API", f"[red]unreachable[/red] {escape(api.error)}")
        else:
            ready = "[green]ready[/green]" if api.ready else f"[red]not ready[/red] {api.reason}"
            table.add_row("API", f"{api.url}: alive, {ready} (as {api.role})")
            table.add_row(
                "API version",
                f"{api.version} ({api.build}), expects schema {api.schema_version_expected}",
            )
            if api.maintenance is not None:
                table.add_row("maintenance", "[yellow]on[/yellow]" if api.maintenance else "off")
    for check in report.checks:
        mark = (
            "[dim]n/a[/dim]"
            if check.ok is None
            else ("[green]ok[/green]" if check.ok else "[red]breached[/red]")
        )
        table.add_row(check.name, f"{mark} {escape(check.detail)}")
    if report.kpis is not None:
        k = report.kpis
        counts = ", ".join(f"{n} {st}" for st, n in k.bookings_by_status.items()) or "none"
        table.add_row("bookings", counts)
        if k.cancellation_rate_30d is not None:
            table.add_row("cancelled (30 d)", f"{k.cancellation_rate_30d:.1%} of new bookings")
        if k.utilisation_30d:
            busiest = sorted(k.utilisation_30d.items(), key=lambda kv: -kv[1])[:5]
            table.add_row(
                "utilisation (30 d)",
                ", ".join(f"{escape(t)} {share:.0%}" for t, share in busiest)
                + (
                    f" (+{len(k.utilisation_30d) - 5} tenants)"
                    if len(k.utilisation_30d) > 5
                    else ""
                ),
            )
    out.print(table)
    for problem in report.problems:
        out.print(f"[red]problem:[/red] {escape(problem)}")
    if db.hint and db.error:
        out.print(f"[dim]hint: {escape(db.hint)}[/dim]")
