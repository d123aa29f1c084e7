"""``ptool-ops audit``: read and check an environment's audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="The audit trail of mutating commands (in the environment's repository): show it,"
    " verify its hash chain against the database's anchor."
)

_OUTCOMES = ("started", "ok", "failed")


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    from ptool_ops.errors import UsageError

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since {value!r} is not a time.",
            hint="Give an ISO time such as 2026-12-01 or 2026-12-01T09:30:00+00:00.",
        ) from None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment


@app.command("log")
def log_(
    ctx: typer.Context,
    last: int = typer.Option(20, "--last", min=1, help="How many of the newest matching events."),
    action: str | None = typer.Option(
        None, "--action", help="Only this action, or a prefix of it ending in '.' (secrets.)."
    ),
    actor: str | None = typer.Option(None, "--actor", help="Only events of this actor."),
    outcome: str | None = typer.Option(None, "--outcome", help="started, ok or failed."),
    since: str | None = typer.Option(None, "--since", help="Only events at or after this time."),
    op: str | None = typer.Option(None, "--op", help="Only the events of one operation id."),
) -> None:
    """The newest events, newest last: seq, when, who, what, outcome."""
    from ptool_ops.errors import UsageError

    if outcome is not None and outcome not in _OUTCOMES:
        raise UsageError(f"--outcome must be one of {', '.join(_OUTCOMES)}, not {outcome!r}.")
    after = _since(since)
    app_ctx = context.get(ctx)

    def wanted(event: dict[str, Any]) -> bool:
        name = str(event.get("action", ""))
        if action is not None and not (
            name == action or (action.endswith(".") and name.startswith(action))
        ):
            return False
        if actor is not None and event.get("actor") != actor:
            return False
        if outcome is not None and event.get("outcome") != outcome:
            return False
        if op is not None and event.get("op") != op:
            return False
        if after is not None:
            try:
                if datetime.fromisoformat(str(event.get("at"))) < after:
                    return False
            except ValueError:
                return False
        return True

    found: list[dict[str, Any]] = []
    for event in app_ctx.env.audit_trail.events(newest_first=True):
        if wanted(event):
            found.append(event)
            if len(found) == last:
                break
    found.reverse()

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("seq", "at", "actor", "action", "outcome", "command", box=None)
        for item in found:
            state = str(item.get("outcome", item.get("unreadable", "?")))
            colour = {"ok": "green", "started": "cyan"}.get(state, "red")
            table.add_row(
                str(item.get("seq")),
                str(item.get("at", "")),
                str(item.get("actor", "")),
                str(item.get("action", "?")),
                f"[{colour}]{state}[/]",
                str(item.get("command") or ""),
            )
        out.print(table if found else "no audit events match")

    app_ctx.output.result(found, render)


@app.command()
def verify(ctx: typer.Context) -> None:
    """Check the hash chain and compare it with the database's anchor; exit 1 naming the
    first altered or missing event, a missing tail, or a rewritten chain."""
    from ptool_ops import audit
    from ptool_ops.errors import ProblemsFound

    app_ctx = context.get(ctx)
    result = audit.verify(app_ctx.env.audit_trail)

    def render(out: Console) -> None:
        if not result.ok:
            return
        out.print(f"[green]✓[/green] {result.events} events in {result.location}, chain intact")
        if result.anchored is not None:
            out.print(
                f"[green]✓[/green] matches the database's anchor (event {result.anchored},"
                f" {result.anchored_at})"
            )
        elif result.unanchored:
            out.print(f"[yellow]![/yellow] not compared with an anchor: {result.unanchored}")

    app_ctx.output.result(result, render)
    if not result.ok:
        app_ctx.fail(
            ProblemsFound(
                f"the audit trail at {result.location} is not intact: {result.reason}.",
                hint="Keep the repository and the database as they are for investigation;"
                " runbooks/audit-trail.md says what to do.",
            )
        )
    if result.anchor_error is not None:
        err = result.anchor_error
        err.message = (
            f"the {result.events} stored events are intact, but the anchor could not be read:"
            f" {err.message}"
        )
        app_ctx.fail(err)


@app.command()
def note(
    ctx: typer.Context,
    message: str = typer.Argument(..., help="What was done or found, in one sentence."),
    action: str = typer.Option(
        "audit.note",
        "--action",
        help="The action to record, e.g. the one whose own event could not be written.",
    ),
    outcome: str = typer.Option("ok", "--outcome", help="ok or failed."),
) -> None:
    """Record an event by hand: an operation whose own event could not be written (exit 9
    says which), or what an investigation of the trail found."""
    from ptool_ops import audit
    from ptool_ops.errors import UsageError

    if outcome not in ("ok", "failed"):
        raise UsageError(f"--outcome must be ok or failed, not {outcome!r}.")
    app_ctx = context.get(ctx)
    event = audit.note(app_ctx.env.audit_trail, action, outcome, message)
    app_ctx.output.result(
        event,
        lambda out: out.print(f"[green]✓[/green] recorded as event {event['seq']} ({action})"),
    )
