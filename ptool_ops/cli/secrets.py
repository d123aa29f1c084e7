"""``ptool-ops secrets``: managed credentials -- list, status, rotate, rollback,
revoke-previous (the work is in :mod:`ptool_ops.secrets`; this module parses, confirms and
renders). No command prints a secret value: the values go to the redactor as they are read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.cli.context import AppContext
    from ptool_ops.secrets.protocol import RotationReport

app = typer.Typer(help="Managed secrets: rotation with no downtime, rollback, revocation.")

NAME = typer.Argument(..., help="The managed secret (see 'ptool-ops secrets list').")


@contextmanager
def _steps(app_ctx: AppContext, label: str) -> Iterator[Callable[[str, str], None]]:
    """Each step once on stderr as it starts, its detail on a live line."""
    seen: list[str] = []
    with app_ctx.output.progress(label, total=None) as bar:

        def update(step: str, detail: str) -> None:
            if step not in seen:
                seen.append(step)
                if not app_ctx.output.json:
                    app_ctx.output.err.print(f"  {step}…", markup=False, highlight=False)
            bar.update(0, total=None, description=f"{step}: {detail}" if detail else step)

        yield update


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """The managed secrets of the environment: kind, roles, store, consumers."""
    from ptool_ops.secrets.status import describe

    app_ctx = context.get(ctx)
    rows = describe(app_ctx.env)

    def render(out: Console) -> None:
        from rich.table import Table

        if not rows:
            out.print(f"environment {app_ctx.env.name!r} manages no secrets.")
            return
        table = Table("name", "kind", "roles", "store", "consumers", box=None)
        for row in rows:
            table.add_row(
                row["name"],
                row["kind"],
                ", ".join(row["roles"]),
                row["store"],
                ", ".join(row["consumers"]) or "-",
            )
        out.print(table)

    app_ctx.output.result({"environment": app_ctx.env.name, "secrets": rows}, render)


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Only these secrets (default: every one)."),
) -> None:
    """Per secret: age, version and login in use, whether the previous one still logs in,
    half-finished rotations, the last change. Exit 1 when any needs attention."""
    from ptool_ops.secrets.status import status

    app_ctx = context.get(ctx)
    found = status(app_ctx.env, names or None)
    data = {
        "environment": app_ctx.env.name,
        "ok": all(s.ok for s in found),
        "secrets": [s.to_dict() for s in found],
    }

    def render(out: Console) -> None:
        from rich.markup import escape

        for s in found:
            mark = "[green]ok[/green]" if s.ok else "[red]needs attention[/red]"
            age = f"{s.age_days:.1f} days old" if s.age_days is not None else "age unknown"
            out.print(f"[bold]{s.name}[/bold] ({s.kind}): {mark}")
            if s.current_version:
                out.print(
                    f"  current: {s.current_role}, version {s.current_version}, {age}"
                    f" (rotate after {s.max_age_days:g})"
                )
            else:
                out.print("  current: none yet")
            if s.previous_role:
                valid = "still logs in" if s.previous_valid else "no longer logs in"
                out.print(f"  previous: {s.previous_role}, {valid}")
            if s.last_change:
                last = s.last_change
                out.print(
                    f"  last change: {last['action']} {last.get('result') or last['outcome']}"
                    f" at {last['at']}"
                )
            for problem in s.problems:
                out.print(f"  [red]✗[/red] {escape(problem)}")

    app_ctx.output.result(data, render)
    if not data["ok"]:
        raise typer.Exit(1)


def _render_report(report: RotationReport) -> Callable[[Console], None]:
    def render(out: Console) -> None:
        from rich.markup import escape

        if report.recovered:
            out.print(f"[yellow]![/yellow] {escape(report.recovered)}")
        for note in report.notes:
            out.print(f"  note: {escape(note)}")
        for step in report.steps:
            mark = {"done": "[green]✓[/green]", "skipped": "[dim]-[/dim]"}.get(
                step.outcome, "[red]✗[/red]"
            )
            out.print(f"  {mark} {step.name}: {escape(step.detail)} ({step.elapsed_s:.1f} s)")
        out.print(
            f"[green]✓[/green] {report.secret}: {report.outcome}, now {report.role_after}"
            f" (was {report.role_before})"
        )

    return render


def _confirm(app_ctx: AppContext, what: str) -> None:
    if app_ctx.env.protected:
        app_ctx.confirm(f"{what} in protected environment {app_ctx.env.name!r}")


@app.command("rotate")
def rotate_cmd(ctx: typer.Context, name: str = NAME) -> None:
    """Give the login not in use a new password, point every consumer at it, verify, then
    make it current. Any failure before the end rolls back on its own; a run killed
    half-way is finished or cleared by running this again."""
    from ptool_ops.secrets import rotation

    app_ctx = context.get(ctx)
    if app_ctx.dry_run:
        from ptool_ops.secrets.protocol import spec_of

        spec = spec_of(app_ctx.env, name)
        app_ctx.output.result(
            {"dry_run": True, "secret": name, "kind": spec.kind, "roles": spec.roles}, None
        )
        return
    _confirm(app_ctx, f"Rotate {name}")
    with _steps(app_ctx, f"rotating {name}") as progress:
        report = rotation.rotate(app_ctx.env, name, progress=progress)
    app_ctx.output.result(report, _render_report(report))


@app.command("rollback")
def rollback_cmd(ctx: typer.Context, name: str = NAME) -> None:
    """Make the previous credential current again (it must still log in): consumers
    first, verified, then the labels."""
    from ptool_ops.secrets import rotation

    app_ctx = context.get(ctx)
    _confirm(app_ctx, f"Roll {name} back to its previous credential")
    with _steps(app_ctx, f"rolling {name} back") as progress:
        report = rotation.rollback(app_ctx.env, name, progress=progress)
    app_ctx.output.result(report, _render_report(report))


@app.command("revoke-previous")
def revoke_cmd(
    ctx: typer.Context,
    name: str = NAME,
    force: bool = typer.Option(
        False, "--force", help="Revoke within the grace period or while sessions still use it."
    ),
) -> None:
    """Disable the previous credential after the grace period (secret_revoke_grace_s);
    refused while sessions still use it, unless --force."""
    from ptool_ops.secrets import rotation

    app_ctx = context.get(ctx)
    _confirm(app_ctx, f"Disable the previous credential of {name}")
    with _steps(app_ctx, f"revoking the previous credential of {name}") as progress:
        report = rotation.revoke_previous(app_ctx.env, name, force=force, progress=progress)

    def render(out: Console) -> None:
        if report.outcome == "revoked":
            held = (
                f"; {len(report.sessions)} session(s) keep running until they end"
                if (report.sessions)
                else ""
            )
            out.print(
                f"[green]✓[/green] {name}: {report.role} (version {report.version}) can no"
                f" longer log in{held}"
            )
        else:
            out.print(f"{name}: nothing to revoke (no previous credential that logs in)")

    app_ctx.output.result(report, render)
