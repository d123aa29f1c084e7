"""``ptool-ops api``: the booking API's smoke check, readiness and maintenance mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.booking.api import SmokeReport

app = typer.Typer(help="The booking API: smoke check, readiness, maintenance mode.")
maintenance_app = typer.Typer(help="Maintenance (read-only) mode: writes answer 503.")
app.add_typer(maintenance_app, name="maintenance")


@app.command()
def smoke(
    ctx: typer.Context,
    write: bool | None = typer.Option(
        None,
        "--write/--read-only",
        help="Create and cancel a booking in the smoke tenant (default: not on protected envs).",
    ),
) -> None:
    """Health, readiness, version, a read and (not on prod) a create + cancel."""
    from ptool_ops.errors import ProblemsFound, ServiceUnavailable

    app_ctx = context.get(ctx)
    env = app_ctx.env
    do_write = (not env.protected) if write is None else write
    with env.api() as api:
        report = api.smoke(write=do_write)
    app_ctx.output.result(report, lambda out: _render_smoke(out, report))
    if not report.ok:
        failed = next(step for step in report.steps if not step.ok)
        message = (
            f"smoke check of {report.url} failed at {failed.name}: {failed.detail.rstrip('.')}."
        )
        if report.exit_code == ServiceUnavailable.exit_code:  # no answer at all: exit 5
            app_ctx.fail(ServiceUnavailable(message, hint="Check that the booking API is running."))
        app_ctx.fail(ProblemsFound(message))


def _render_smoke(out: Console, report: SmokeReport) -> None:
    from rich.markup import escape

    for step in report.steps:
        mark = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
        out.print(f"{mark} {step.name:<14} {step.duration_ms:>7.1f} ms  {escape(step.detail)}")


@app.command()
def ready(
    ctx: typer.Context,
    wait: float = typer.Option(0, "--wait", min=0, help="Seconds to wait for readiness."),
) -> None:
    """Is the API ready (a fresh database login works)? Exit 1 when it is not."""
    from ptool_ops.errors import ProblemsFound

    app_ctx = context.get(ctx)
    with app_ctx.env.api(ops_token=False) as api:  # /health/ready needs no token
        state = api.wait_ready(wait) if wait else api.ready()
    app_ctx.output.result(
        state,
        lambda out: out.print(
            f"[green]ready[/green] as {state.role} ({state.latency_ms} ms)"
            if state.ready
            else f"[red]not ready[/red]: {state.reason}"
        ),
    )
    if not state.ready:
        app_ctx.fail(ProblemsFound(f"{api.base_url} is not ready: {state.reason}."))


@maintenance_app.command("on")
def maintenance_on(
    ctx: typer.Context,
    reason: str = typer.Option(..., "--reason", help="Why writes are paused (shown to callers)."),
) -> None:
    """Pause writes (reads keep working) until 'maintenance off'."""
    from ptool_ops.audit import audited

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if app_ctx.dry_run:
        app_ctx.output.result({"dry_run": True, "maintenance": True, "reason": reason}, None)
        return
    if env.protected:
        app_ctx.confirm(f"Pause all booking writes on {env.name}")
    with (
        audited(
            env,
            "api.maintenance.on",
            {"reason": reason},
            done=lambda: f"maintenance mode was switched on in {env.name!r}",
        ),
        env.api() as api,
    ):
        state = api.set_maintenance(True, reason)
    app_ctx.output.result(
        state, lambda out: out.print("[yellow]maintenance on[/yellow]: writes paused")
    )


@maintenance_app.command("off")
def maintenance_off(ctx: typer.Context) -> None:
    """Resume writes."""
    from ptool_ops.audit import audited

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if app_ctx.dry_run:
        app_ctx.output.result({"dry_run": True, "maintenance": False}, None)
        return
    with (
        audited(
            env,
            "api.maintenance.off",
            {},
            done=lambda: f"maintenance mode was switched off in {env.name!r}",
        ),
        env.api() as api,
    ):
        state = api.set_maintenance(False)
    app_ctx.output.result(state, lambda out: out.print("[green]maintenance off[/green]"))


@maintenance_app.command("status")
def maintenance_status(ctx: typer.Context) -> None:
    """Is maintenance mode on, since when, and why."""
    app_ctx = context.get(ctx)
    with app_ctx.env.api() as api:
        state = api.maintenance_state()
    app_ctx.output.result(
        state,
        lambda out: out.print(
            f"[yellow]on[/yellow] since {state['since']}: {state['reason']}"
            if state["enabled"]
            else "[green]off[/green]"
        ),
    )
