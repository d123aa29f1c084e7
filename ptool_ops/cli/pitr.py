"""``ptool-ops pitr``: base backups, the restorable window, restores to a point in time,
restore points (the work is in :mod:`ptool_ops.pitr`; this module parses, confirms and
renders)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.cli.context import AppContext
    from ptool_ops.pitr.target import Target

app = typer.Typer(help="Point-in-time restore: WAL archive, base backups, restores beside live.")

RESTORE_ID = typer.Argument(
    ..., help="The restored copy's id (printed by 'pitr restore'; on Neon the branch id)."
)


@contextmanager
def _phases(app_ctx: AppContext, label: str) -> Iterator[Callable[[str, str], None]]:
    """Each phase once on stderr, its detail on a live line; silent for JSON and pipes."""
    seen: list[str] = []
    with app_ctx.output.progress(label, total=None) as bar:

        def update(phase: str, detail: str) -> None:
            if phase not in seen:
                seen.append(phase)
                if not app_ctx.output.json:
                    app_ctx.output.err.print(f"  {phase}…", markup=False, highlight=False)
            bar.update(0, total=None, description=f"{phase}: {detail}")

        yield update


@app.command("archive-command")
def archive_command(ctx: typer.Context) -> None:
    """The archive_command and restore_command to put in a self-managed server's
    postgresql.conf (the local environment has them already)."""
    from pathlib import Path

    from ptool_ops.pitr import commands

    app_ctx = context.get(ctx)
    env = app_ctx.env
    # an encrypted repository: the server reads the key from a file of its own (0600),
    # never from its command line
    key_file = Path("/etc/ptool-ops/backup.key") if env.backup_key() is not None else None
    data = {
        "archive_mode": "on",
        "archive_command": commands.archive_command(env.repo_url, key_file=key_file),
        "restore_command": commands.restore_command(env.repo_url, key_file=key_file),
        "summarize_wal": "on",
        "archive_timeout": "60",
    }

    def render(out: Console) -> None:
        for key, value in data.items():
            out.print(f"{key} = {commands.conf_value(value)}", markup=False, highlight=False)
        if key_file is not None:
            out.print(
                f"# write the backup key to {key_file}, mode 0600, owned by the server's OS "
                "user (the repository is encrypted)",
                markup=False,
                highlight=False,
            )

    app_ctx.output.result(data, render)


@app.command("base-backup")
def base_backup(
    ctx: typer.Context,
    incremental: bool = typer.Option(
        False,
        "--incremental",
        help="Only blocks changed since the newest base backup (PostgreSQL 17+, "
        "summarize_wal = on).",
    ),
) -> None:
    """Stream pg_basebackup into the repository, verify the stored copy, record it."""
    from ptool_ops.cli.backup import _byte_progress
    from ptool_ops.console import human_size
    from ptool_ops.pitr import base

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if app_ctx.dry_run:
        app_ctx.output.result(
            {"dry_run": True, "incremental": incremental, "repository": env.repo_url}, None
        )
        return
    with _byte_progress(app_ctx, "base backup") as progress:
        result = base.base_backup(env, incremental=incremental, progress=progress)

    def render(out: Console) -> None:
        parent = f" on top of {result.parent}" if result.parent else ""
        out.print(
            f"[green]✓[/green] {result.backup_type} base backup [bold]{result.id}[/bold]"
            f"{parent}: {human_size(result.raw_bytes)} read,"
            f" {human_size(result.stored_bytes)} stored, "
            f"LSN {result.start_lsn}..{result.end_lsn} on timeline {result.timeline} "
            f"({result.elapsed_s:.1f} s, verified in {result.verified_s:.1f} s)"
        )

    app_ctx.output.result(result, render)


@app.command("window")
def window_cmd(ctx: typer.Context) -> None:
    """What can be restored: per timeline, earliest point .. newest archived WAL, and every
    gap. Exit 1 on a gap in the current timeline or when there is no base backup."""
    from ptool_ops.errors import ProblemsFound
    from ptool_ops.pitr import window

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if env.kind == "neon":
        from ptool_ops.pitr import neon

        neon_window = neon.neon_window(env)
        app_ctx.output.result(neon_window, lambda out: out.print(neon_window.describe()))
        return
    result = window.window(env.repository())

    def render(out: Console) -> None:
        if result.identity:
            ident = result.identity
            out.print(
                f"archive of system {ident['system_identifier']} (PostgreSQL "
                f"{ident['major'] or '?'}), {result.base_backups} base backup(s)"
            )
        for line in result.timelines:
            mark = "[red]✗[/red]" if line.gaps else "[green]✓[/green]"
            start = (
                f"from {line.earliest_time} (LSN {line.earliest_lsn}, {line.earliest_backup})"
                if line.earliest_lsn
                else "no base backup"
            )
            out.print(
                f"{mark} timeline {line.timeline}: {start} to {line.newest_lsn or '-'} "
                f"({line.segments} segments, newest {line.newest_segment or '-'} archived "
                f"{line.newest_archived_at or 'never'})"
            )
            for gap in line.gaps:
                out.print(f"    gap: {gap.describe()}")
        if result.newest_wal_age_s is not None:
            out.print(f"newest WAL archived {result.newest_wal_age_s:.0f} s ago (the RPO now)")

    app_ctx.output.result(result, render)
    if not result.ok:
        app_ctx.fail(ProblemsFound("; ".join(result.problems()) + "."))


@app.command("restore")
def restore_cmd(
    ctx: typer.Context,
    to: str | None = typer.Option(None, "--to", help="ISO 8601 time with a zone (…Z, +01:00)."),
    lsn: str | None = typer.Option(None, "--lsn", help="An LSN, like 0/3000028."),
    xid: str | None = typer.Option(None, "--xid", help="A transaction id (after it commits)."),
    restore_point: str | None = typer.Option(
        None, "--restore-point", help="A name made with 'ptool-ops pitr mark'."
    ),
    promote: bool = typer.Option(
        False, "--promote", help="End recovery at the target (default: pause there, read-only)."
    ),
    timeout: float = typer.Option(
        3600.0, "--timeout", min=1, help="Seconds to wait for the target to be reached."
    ),
    compare_live: bool = typer.Option(
        True, "--compare/--no-compare", help="Compare the copy with live (counts per tenant)."
    ),
    apply: bool = typer.Option(
        False, "--apply", help="Neon: restore the branch itself (the present is kept)."
    ),
) -> None:
    """Restore to a point in time into a new data directory beside live (live untouched);
    on Neon, a branch at that point. The copy is checked and left running."""
    from ptool_ops import pg
    from ptool_ops.errors import ProblemsFound
    from ptool_ops.pitr import restore
    from ptool_ops.pitr.target import Target

    app_ctx = context.get(ctx)
    env = app_ctx.env
    target = Target.from_options(to=to, lsn=lsn, xid=xid, restore_point=restore_point)
    if env.kind == "neon":
        _neon_restore(app_ctx, target, apply=apply)
        return
    if apply:
        from ptool_ops.errors import UsageError

        raise UsageError(
            "--apply restores a Neon branch; a self-managed server is replaced with 'pitr "
            "promote ID --replace'.",
        )
    if app_ctx.dry_run:
        the_plan = restore.plan(env.repository(), target)
        app_ctx.output.result({"dry_run": True, "plan": the_plan.to_dict()}, None)
        return
    with _phases(app_ctx, "restoring") as progress:
        result = restore.restore(
            env,
            target,
            promote=promote,
            timeout_s=timeout,
            compare_live=compare_live,
            progress=progress,
        )
    app_ctx.redactor.add(result.url.get_secret_value())

    def render(out: Console) -> None:
        plan = result.plan
        mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
        out.print(
            f"{mark} restored copy [bold]{result.id}[/bold] at {plan.target.describe()} "
            f"({result.state}, replayed to {result.reached_lsn}) from base backup "
            f"{' + '.join(plan.chain)} and WAL {plan.wal_from}..{plan.wal_to}"
        )
        out.print(f"  data: {result.data_dir}  port: {result.port}")
        inv = result.invariants
        verdict = "hold" if inv.get("ok") else f"{inv.get('violation_count')} violation(s)"
        out.print(f"  invariants: {verdict}")
        comp = result.comparison
        if comp is not None:
            for table in comp["tables"]:
                if table["delta"]:
                    out.print(
                        f"  {table['table']}: {table['copy_rows']} rows in the copy, "
                        f"{table['live_rows']} live ({table['delta']:+d})"
                    )
            out.print(
                f"  tenants whose rows differ: {comp['tenants_differing']}; event streams "
                f"that differ: {comp['streams_differing']}; newest event: copy "
                f"{comp['newest_event_copy']}, live {comp['newest_event_live']}"
            )
        out.print(
            f"  connect: psql '{pg.describe(result.url)}' (the operator's password, as live's)"
        )
        out.print(
            f"  then: 'ptool-ops pitr promote {result.id}' to end recovery, 'ptool-ops pitr "
            f"drop {result.id}' to remove it"
        )

    app_ctx.output.result(result, render)
    if not result.ok:
        app_ctx.fail(ProblemsFound("the restored copy violates booking invariants."))


def _neon_restore(app_ctx: AppContext, target: Target, *, apply: bool) -> None:
    """Neon: a branch at the target to inspect, or (``--apply``) the branch restored to it."""
    from ptool_ops.pitr import neon

    env = app_ctx.env
    if apply:
        plan = neon.plan_apply(env, target)
        if app_ctx.dry_run:
            app_ctx.output.result({"dry_run": True, "plan": plan.to_dict()}, None)
            return
        app_ctx.confirm(
            f"restore Neon branch {plan.branch_name} of {env.name!r} to {target.describe()}: "
            f"every database of the branch is overwritten; the present is kept as "
            f"{plan.preserve_under_name}"
        )
        with _phases(app_ctx, "neon restore") as progress:
            applied = neon.apply(env, target, progress=progress, plan=plan)
        app_ctx.output.result(applied, lambda out: out.print(applied.describe()))
        return
    if app_ctx.dry_run:
        window = neon.neon_window(env)
        app_ctx.output.result(
            {"dry_run": True, "target": target.to_dict(), "window": window.to_dict()}, None
        )
        return
    with _phases(app_ctx, "neon branch") as progress:
        inspection = neon.inspect(env, target, progress=progress)
    app_ctx.output.result(inspection, lambda out: out.print(inspection.describe()))


@app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    restore_id: str = RESTORE_ID,
    replace: bool = typer.Option(
        False,
        "--replace",
        help="Then replace live with the copy (local environment): live is stopped and its "
        "data directory kept; the copy starts on live's port, archiving into the live "
        "archive as a new timeline.",
    ),
) -> None:
    """End recovery of a restored copy: it becomes writable on a new timeline, archiving
    into its own prefix; live is not touched. With --replace the copy becomes live."""
    from ptool_ops.pitr import restore

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if replace:
        _replace(app_ctx, restore_id)
        return
    app_ctx.confirm(f"end recovery of the restored copy {restore_id} (it cannot pause again)")
    data = restore.promote(env, restore_id)
    app_ctx.output.result(
        data,
        lambda out: out.print(
            f"[green]✓[/green] copy {restore_id} promoted: timeline {data.get('timeline')}, "
            f"archiving into pitr/{data['archive']}"
        ),
    )


def _replace(app_ctx: AppContext, restore_id: str) -> None:
    """``promote ID --replace``: the plan, one confirmation, the replacement."""
    from ptool_ops.pitr import replace

    env = app_ctx.env
    plan = replace.plan_replace(env, restore_id)
    if app_ctx.dry_run:
        app_ctx.output.result({"dry_run": True, "plan": plan.to_dict()}, None)
        return
    app_ctx.confirm(plan.describe())
    with _phases(app_ctx, "replacing live") as progress:
        result = replace.replace(env, plan, progress=progress)

    def render(out: Console) -> None:
        out.print(
            f"[green]✓[/green] copy [bold]{result.restore_id}[/bold] is live: "
            f"{result.data_dir} on port {result.port}, timeline {result.timeline}, archiving "
            "into pitr/wal"
        )
        out.print(f"  the old data directory is kept: {result.old_data_dir}")
        out.print(f"  timeline {result.timeline}'s WAL copied: {len(result.wal_copied)} file(s)")
        for step in result.next_steps:
            out.print(f"  next: {step}")

    app_ctx.output.result(result, render)


@app.command("drop")
def drop_cmd(ctx: typer.Context, restore_id: str = RESTORE_ID) -> None:
    """Stop a restored copy and delete its data directory."""
    from ptool_ops.pitr import restore

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if env.kind == "neon":
        from ptool_ops.pitr import neon

        app_ctx.confirm(f"delete the Neon branch {restore_id} made by 'pitr restore'")
        deleted = neon.delete_clone(env, restore_id)
        app_ctx.output.result(
            deleted,
            lambda out: out.print(
                f"[green]✓[/green] branch {restore_id} deleted"
                if deleted.deleted
                else f"branch {restore_id} was already gone"
            ),
        )
        return
    app_ctx.confirm(f"stop and delete the restored copy {restore_id}")
    data = restore.drop(env, restore_id)

    def render(out: Console) -> None:
        if data["removed"]:
            out.print(f"[green]✓[/green] removed {data['removed']}")
        else:
            out.print(f"[green]✓[/green] no copy {restore_id} on this machine")
        if data["archive_retired"]:
            out.print(f"  its archive pitr/restores/{restore_id}/ goes at the next 'pitr prune'")
        else:
            out.print(f"  its archive pitr/restores/{restore_id}/ could not be marked; it stays")

    app_ctx.output.result(data, render)


@app.command("mark")
def mark_cmd(
    ctx: typer.Context, name: str = typer.Argument(..., help="Restore point name.")
) -> None:
    """Make a named restore point and archive its WAL segment ('pitr restore
    --restore-point NAME' returns to it)."""
    from ptool_ops.pitr import restore

    app_ctx = context.get(ctx)
    point = restore.mark(app_ctx.env, name)
    app_ctx.output.result(
        point,
        lambda out: out.print(
            f"[green]✓[/green] restore point {name!r} at LSN {point['lsn_text']} "
            f"({point['time']}, timeline {point['timeline']})"
        ),
    )


@app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    keep_full: int | None = typer.Option(
        None,
        "--keep-full",
        min=1,
        help="Keep the newest N full base backups and the incrementals on them (default: "
        "the pitr_keep_full setting).",
    ),
    orphan_minutes: float = typer.Option(
        360,
        "--orphans-older-than",
        min=0,
        help="Remove base backups without a manifest (interrupted uploads) older than this "
        "many minutes (a running base backup's lease protects it whatever its age).",
    ),
    forget_unreadable: list[str] = typer.Option(
        [],
        "--forget-unreadable",
        metavar="ID",
        help="Delete this base backup although its manifest cannot be read; repeatable. "
        "Without it such a backup stops the prune.",
    ),
    lock_wait: float = typer.Option(
        30, "--lock-wait", min=0, help="Seconds to wait for another pitr prune to finish."
    ),
) -> None:
    """Delete base backups the retention policy does not keep, the WAL no kept backup
    needs, and leftovers of interrupted runs. --dry-run lists what would go."""
    from datetime import timedelta

    from ptool_ops.console import human_size
    from ptool_ops.errors import UsageError
    from ptool_ops.pitr import prune
    from ptool_ops.pitr.retention import Policy

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if env.kind == "neon":
        raise UsageError(
            "Neon keeps a project's history for history_retention_seconds itself; there is "
            "nothing under pitr/ to prune."
        )
    policy = Policy(keep_full=keep_full or env.settings.pitr_keep_full)
    if not app_ctx.dry_run and env.protected:
        app_ctx.confirm(
            f"Delete base backups and WAL of protected environment {env.name!r} by policy "
            f"(keep {policy.keep_full} full)"
        )
    result = prune.prune(
        env,
        policy=policy,
        dry_run=app_ctx.dry_run,
        orphan_age=timedelta(minutes=orphan_minutes),
        forget_unreadable=forget_unreadable,
        lock_wait_s=lock_wait,
    )

    def render(out: Console) -> None:
        from rich.markup import escape

        verb = "would delete" if result.dry_run else "deleted"
        if result.took_over_lock:
            out.print(f"took over an abandoned prune lock ({escape(result.took_over_lock)})")
        for key, holder in result.running.items():
            out.print(f"[yellow]in use[/yellow] {key}: {escape(holder)} (prune deletes nothing)")
        for d in result.kept:
            out.print(f"kept {escape(d.describe())}: {escape('; '.join(d.reasons))}")
        for d in result.deleted:
            why = f": {escape('; '.join(d.reasons))}" if d.reasons else ""
            out.print(
                f"[red]{verb}[/red] {escape(d.describe())}, {human_size(d.stored_bytes)}{why}"
            )
        for backup_id in result.forgotten:
            out.print(f"[red]{verb}[/red] unreadable base backup {backup_id}")
        for leftover in result.incomplete:
            out.print(
                f"[red]{verb}[/red] incomplete base backup {leftover.id} (no manifest: an "
                f"interrupted upload, garbage), {human_size(leftover.bytes)}"
            )
        for backup_id in result.young:
            out.print(f"left incomplete base backup {backup_id}: younger than the orphan age")
        for backup_id in result.foreign:
            out.print(f"left {backup_id}: a base backup of another cluster than the archive's")
        out.print(escape(result.wal.describe(verb)))
        for r in result.restores_deleted:
            out.print(
                f"[red]{verb}[/red] pitr/restores/{r.id}/ ({r.reason}), {human_size(r.bytes)}"
            )
        for r in result.restores_left:
            out.print(f"left pitr/restores/{r.id}/: {escape(r.reason)}")
        for name in result.points_deleted:
            out.print(f"[red]{verb}[/red] restore point {name!r}: before every kept backup")
        for partial in result.partial_uploads:
            out.print(
                f"[red]{'would abort' if result.dry_run else 'aborted'}[/red] upload {partial}"
            )
        out.print(
            f"{len(result.kept)} kept, {len(result.deleted) + len(result.forgotten)} "
            f"{verb}; {human_size(result.bytes_freed)} "
            f"{'would be freed' if result.dry_run else 'freed'}"
        )

    app_ctx.output.result(result, render)
