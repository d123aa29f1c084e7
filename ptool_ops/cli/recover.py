"""``ptool-ops recover``: one tenant's rows brought back as of a moment, everyone else's
writes since kept (the work is in :mod:`ptool_ops.recover`; this module parses, confirms
and renders)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from ptool_ops.cli import context
from ptool_ops.cli.pitr import _phases

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.recover import Recovery

app = typer.Typer(help="Surgical recovery: one tenant's rows as of a moment, from a copy.")


def _tables(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _row(row: dict[str, Any] | None, limit: int = 8) -> str:
    if not row:
        return "-"
    shown = [f"{k}={v}" for k, v in list(row.items())[:limit]]
    return ", ".join(shown) + (", …" if len(row) > limit else "")


@app.command("tenant")
def tenant_cmd(
    ctx: typer.Context,
    tenant: str = typer.Argument(..., help="The tenant: its id (uuid) or its slug."),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        help="The moment to bring the tenant's rows back to: ISO 8601 with a zone (…Z,"
        " +01:00). With --from: the copy's own point when left out.",
    ),
    tables: str | None = typer.Option(
        None,
        "--tables",
        help="Comma-separated tenant tables (default: all but the event store), e.g."
        " bookings,projects.",
    ),
    from_id: str | None = typer.Option(
        None,
        "--from",
        help="An existing copy to recover from: the id 'pitr restore' printed (on Neon a"
        " branch id). Default: make one at --as-of and remove it afterwards.",
    ),
    restore_changed: bool = typer.Option(
        False,
        "--restore-changed",
        help="Also restore rows changed since to their values at the point (default: leave"
        " them as they are now).",
    ),
    skip_conflicts: bool = typer.Option(
        False,
        "--skip-conflicts",
        help="Apply the rows without conflicts and leave those in conflict (default: a"
        " conflict stops the apply).",
    ),
    apply: bool = typer.Option(
        False, "--apply", help="Apply the plan in one transaction (default: only show it)."
    ),
    keep_clone: bool = typer.Option(
        False, "--keep-clone", help="Keep the copy made for this run (reuse it with --from)."
    ),
) -> None:
    """Plan -- and with --apply apply -- the recovery of one tenant's rows as of --as-of:
    missing rows re-inserted with their original ids, changed rows left (or restored with
    --restore-changed), rows written since kept. Exit 1 when conflicts are found and not
    applied."""
    from ptool_ops import recover
    from ptool_ops.errors import ProblemsFound
    from ptool_ops.pitr.target import Target

    app_ctx = context.get(ctx)
    env = app_ctx.env
    target = Target.from_options(to=as_of) if as_of is not None else None
    chosen = _tables(tables)
    applying = apply and not app_ctx.dry_run
    with (
        _phases(app_ctx, "recovering") as say,
        recover.opened(env, as_of=target, from_id=from_id, keep=keep_clone, progress=say) as source,
    ):
        expect = None
        if applying and env.protected and not app_ctx.yes:
            first = recover.plan_tenant(
                env, source, tenant, tables=chosen, restore_changed=restore_changed,
                progress=say,
            )  # fmt: skip
            _render(app_ctx.output.err, recover.Recovery(source, first))
            app_ctx.confirm(
                f"write {first.inserts + first.updates} row(s) of tenant"
                f" {first.tenant_slug or first.tenant_id} back into protected environment"
                f" {env.name!r}"
            )
            expect = first.digest
        if applying:
            done = recover.apply_tenant(
                env,
                source,
                tenant,
                tables=chosen,
                restore_changed=restore_changed,
                skip_conflicts=skip_conflicts,
                expect_digest=expect,
                progress=say,
            )
            result = recover.Recovery(source, done.plan, done)
        else:
            the_plan = recover.plan_tenant(
                env, source, tenant, tables=chosen, restore_changed=restore_changed,
                progress=say,
            )  # fmt: skip
            result = recover.Recovery(source, the_plan)
    app_ctx.output.result(result, lambda out: _render(out, result, applying=applying))
    if result.blocked:
        app_ctx.fail(
            ProblemsFound(
                f"{result.plan.conflicted_rows} row(s) of tenant {result.plan.tenant_id} are"
                " in conflict with live; nothing was applied.",
                hint="Look at the conflicts above; rerun with --skip-conflicts to apply the rest.",
            )
        )


def _render(out: Console, result: Recovery, *, applying: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    plan = result.plan
    src = result.source
    who = f"{plan.tenant_slug} ({plan.tenant_id})" if plan.tenant_slug else plan.tenant_id
    out.print(
        f"tenant [bold]{escape(who)}[/bold] as of {plan.as_of}, from {escape(src.describe())}"
    )
    table = Table("table", "at the point", "live", "missing", "changed", "new", "insert",
                  "update", "conflicts")  # fmt: skip
    for t in plan.tables:
        table.add_row(
            t.table, str(t.source_rows), str(t.live_rows), str(t.missing), str(t.changed),
            str(t.new), str(t.inserts), str(t.updates), str(len(t.conflicts)),
        )  # fmt: skip
    out.print(table)
    for t in plan.tables:
        for row in t.samples["missing"][:2]:
            out.print(f"  missing in {t.table}: {escape(_row(row))}")
    for t in plan.tables:
        for conflict in t.conflicts[:20]:
            out.print(f"[red]conflict[/red] {escape(conflict.detail)}")
            out.print(f"    at the point: {escape(_row(conflict.row))}")
            out.print(f"    {escape(conflict.other_is)}: {escape(_row(conflict.other))}")
        if len(t.conflicts) > 20:
            out.print(f"    … and {len(t.conflicts) - 20} more conflicts in {t.table} (-o json)")
    if plan.empty:
        out.print("[green]✓[/green] nothing to recover: the tenant's rows match the point")
    else:
        for action in plan.actions():
            out.print(f"  plan: {escape(action)}")
    done = result.applied
    if done is not None and done.applied:
        out.print(
            f"[green]✓[/green] recovered in one transaction: inserted"
            f" {sum(done.inserted.values())}, restored {sum(done.updated.values())},"
            f" {done.events} event(s) appended; invariants hold; plan {plan.digest[:12]}"
        )
    elif done is not None:
        out.print(f"nothing was applied: {escape(done.reason)}")
    elif not plan.empty and not applying:
        out.print(f"plan {plan.digest[:12]}; apply it with --apply (nothing was changed)")
    if src.made and src.removed:
        out.print(f"  the {src.kind} {src.id} was removed")
    elif src.made:
        out.print(f"  the {src.kind} {src.id} is kept: reuse it with --from {src.id}")
