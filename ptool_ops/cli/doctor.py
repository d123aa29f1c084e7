"""``ptool-ops doctor``: which commands each configured database role can serve."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.doctor import DoctorReport


def doctor(ctx: typer.Context) -> None:
    """Log in as every configured role; show which commands each can and cannot serve, and
    the grant that fixes each gap. Exit 1 when a command's own login lacks a privilege."""
    from ptool_ops.doctor import diagnose
    from ptool_ops.errors import ProblemsFound

    app_ctx = context.get(ctx)
    report = diagnose(app_ctx.env)
    app_ctx.output.result(report, lambda out: _render(out, report))
    if not report.ok:
        app_ctx.fail(
            ProblemsFound(
                f"{len(report.problems)} command(s) cannot run with the logins configured:"
                f" {report.problems[0]}.",
                hint="Grant what the table shows, or configure the role the privilege model"
                " names (docs/privileges.md).",
            )
        )


def _render(out: Console, report: DoctorReport) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ptool_ops.privileges import DUTIES

    by_role = {login.role: login for login in report.logins}
    table = Table("command", "runs as", "", box=None, pad_edge=False)
    for name, duty in DUTIES.items():
        role = report.routes.get(name)
        login = by_role.get(role) if role else None
        check = next((d for d in login.duties if d.duty.name == name), None) if login else None
        if login is None or check is None:
            mark = "[red]✗[/red] no login" if login is None else f"[red]✗[/red] {login.error}"
        elif check.ok:
            mark = "[green]✓[/green]"
        else:
            first = check.missing[0]
            mark = escape(f"✗ lacks {first.need.what}; fix: {first.fix(_db(login.target))}")
            mark = f"[red]{mark}[/red]"
        table.add_row(escape(", ".join(duty.commands)), escape(role or "-"), mark)
    out.print(table)
    for login in report.logins:
        where = f"{escape(login.source)}: {escape(login.target)}"
        if login.error:
            out.print(f"[bold]{login.role}[/bold] ({where}): [red]cannot log in[/red]")
            continue
        can = [c for d in login.duties if d.ok for c in d.duty.commands]
        out.print(
            f"[bold]{login.role}[/bold] ({where}) could serve: {escape(', '.join(can)) or '-'}"
        )
    for problem in report.problems:
        out.print(f"[red]problem:[/red] {escape(problem)}")
    if report.ok:
        out.print(
            f"[green]✓[/green] every command of {report.environment!r} has the login it needs"
        )


def _db(target: str) -> str:
    return target.rsplit("/", 1)[-1]
