"""``ptool-ops backup``: create, list, show, verify, restore, prune (the work is in
:mod:`ptool_ops.backup`; this module parses, confirms and renders)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context
from ptool_ops.console import human_size

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.cli.context import AppContext

app = typer.Typer(help="Logical backups in the environment's repository (S3 or disk).")

BACKUP_ID = typer.Argument(..., help="Backup id (or an unambiguous prefix, or 'latest').")


@contextmanager
def _byte_progress(app_ctx: AppContext, label: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar showing bytes and rate; silent for JSON and pipes."""
    started = time.monotonic()
    with app_ctx.output.progress(label, total=None) as bar:

        def update(stage: str, done: int, total: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = human_size(done / elapsed)
            bar.update(
                done,
                total=max(total, done) or None,
                description=f"{stage} {human_size(done)} ({rate}/s)",
            )

        yield update


@app.command()
def create(
    ctx: typer.Context,
    row_counts: bool = typer.Option(
        True,
        "--row-counts/--no-row-counts",
        help="Count every table's rows in the dump's snapshot (for verify --restore).",
    ),
    jobs: int = typer.Option(
        2, "--jobs", "-j", min=1, help="Data streams at a time (big tables get their own)."
    ),
) -> None:
    """Dump the environment's database into its repository (streamed, checksummed)."""
    from ptool_ops import backup

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if app_ctx.dry_run:
        app_ctx.output.result(
            {"dry_run": True, "environment": env.name, "repository": env.repo_url}, None
        )
        return
    with _byte_progress(app_ctx, "dumping") as progress:
        result = backup.create(env, progress=progress, exact_counts=row_counts, jobs=jobs)

    def render(out: Console) -> None:
        lock = " (encrypted)" if result.encrypted else ""
        out.print(
            f"[green]✓[/green] backup [bold]{result.id}[/bold] of {result.database}: "
            f"{human_size(result.raw_bytes)} dumped, {human_size(result.stored_bytes)} stored"
            f"{lock} "
            f"in {result.elapsed_s:.1f} s ({result.rate_mb_s} MiB/s)"
        )
        out.print(f"  repository: {result.repository}")

    app_ctx.output.result(result, render)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Backups in the repository, oldest first: complete ones, and those whose manifest
    this ptool-ops cannot read (shown as such). Failed or running ones are never listed."""
    from ptool_ops import backup

    app_ctx = context.get(ctx)
    rows = backup.list_backups(app_ctx.env)

    def render(out: Console) -> None:
        from rich.markup import escape
        from rich.table import Table

        if not rows:
            out.print("no complete backups in the repository")
            return
        table = Table("id", "started", "database", "schema", "stored", "enc", "verified", box=None)
        for row in rows:
            started = row.started_at.strftime("%Y-%m-%d %H:%M:%S") if row.started_at else "?"
            if row.status != "complete":
                table.add_row(row.id, started, f"[red]{row.status}[/red]", "", "", "", "")
                continue
            table.add_row(
                row.id,
                started,
                row.database or "-",
                row.schema_version or "-",
                human_size(row.stored_bytes or 0),
                "yes" if row.encrypted else "no",
                row.verified_at or "-",
            )
        out.print(table)
        for row in rows:
            if row.problem:
                out.print(f"[red]{row.status}:[/red] {escape(row.problem)}")

    app_ctx.output.result(rows, render)


@app.command()
def show(ctx: typer.Context, backup_id: str = BACKUP_ID) -> None:
    """Everything the backup's manifest records."""
    from ptool_ops import backup

    app_ctx = context.get(ctx)
    manifest = backup.show(app_ctx.env, backup_id)
    data = manifest.model_dump(mode="json")

    def render(out: Console) -> None:
        from rich.table import Table

        out.print(f"[bold]{manifest.id}[/bold] ({manifest.kind}, format {manifest.format_version})")
        out.print(
            f"  database {manifest.database} on PostgreSQL {manifest.server_version}, schema "
            f"{manifest.schema_version or '-'}, start LSN {manifest.start_lsn or '-'}"
        )
        out.print(f"  {manifest.started_at} → {manifest.finished_at} by {manifest.pg_dump_version}")
        objects = Table("object", "stored", "raw", "sha256", "encryption", box=None)
        for o in manifest.objects:
            enc = f"{o.encryption.algorithm} key {o.encryption.key_id}" if o.encryption else "-"
            objects.add_row(
                o.key, human_size(o.size), human_size(o.raw_size), o.sha256[:16] + "…", enc
            )
        out.print(objects)
        tables = Table("table", "rows", "estimate", box=None)
        for t in manifest.tables:
            tables.add_row(
                f"{t.schema_name}.{t.name}",
                str(t.rows if t.rows is not None else "-"),
                str(t.row_estimate),
            )
        out.print(tables)

    app_ctx.output.result(data, render)


@app.command()
def verify(
    ctx: typer.Context,
    backup_id: str = BACKUP_ID,
    restore: bool = typer.Option(
        False, "--restore", help="Also restore into a scratch database, check it, drop it."
    ),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="pg_restore jobs for --restore."),
) -> None:
    """Re-read every object (checksum, decrypt, decompress); exit 1 if anything is wrong."""
    from ptool_ops import backup

    app_ctx = context.get(ctx)
    with _byte_progress(app_ctx, "verifying") as progress:
        result = backup.verify(
            app_ctx.env, backup_id, restore=restore, jobs=jobs, progress=progress
        )

    def render(out: Console) -> None:
        for check in result.objects:
            mark = "[green]✓[/green]" if check.ok else "[red]✗[/red]"
            out.print(f"{mark} {check.error or check.key} ({human_size(check.size)})")
        if result.restore is not None:
            inv = result.restore["invariants"]
            note = "" if inv.get("available") else " (invariant checks not available)"
            out.print(f"  restored into {result.restore['scratch_database']} and dropped{note}")
        if result.ok:
            out.print(f"[green]✓[/green] backup {result.id} verified in {result.elapsed_s:.1f} s")
        else:
            for problem in result.problems:
                out.print(f"[red]problem:[/red] {problem}")

    app_ctx.output.result(result, render)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def restore(
    ctx: typer.Context,
    backup_id: str = BACKUP_ID,
    target_db: str | None = typer.Option(
        None, "--target-db", help="New database to restore into (default: <db>_restore_<id>)."
    ),
    in_place: bool = typer.Option(
        False,
        "--in-place",
        help="Replace the environment's database (the current one is kept, renamed).",
    ),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="pg_restore jobs for indexes."),
    lock_wait: float | None = typer.Option(
        None,
        "--lock-wait",
        min=0,
        help="In place: seconds the swap waits for a running migration "
        "(default: migrate_lock_wait_s).",
    ),
    from_env: str | None = typer.Option(
        None,
        "--from-env",
        help="Disaster recovery: take the backup from this environment's repository (and"
        " key) and restore it into --env's server.",
        metavar="ENV",
    ),
) -> None:
    """Restore a backup into a new database (default) or in place; checksums first,
    invariants after. --dry-run prints the plan. With --from-env, another environment's
    backup (e.g. prod's) is restored into this one's server (e.g. dr)."""
    from ptool_ops import backup
    from ptool_ops.errors import UsageError

    app_ctx = context.get(ctx)
    if in_place and target_db:
        raise UsageError(
            "--in-place and --target-db exclude each other.",
            hint="Use --in-place to replace the environment's database, or --target-db NAME.",
        )
    env = app_ctx.env
    if in_place and not app_ctx.dry_run and env.protected:
        app_ctx.confirm(
            f"Replace the database of protected environment {env.name!r} with backup {backup_id}"
        )
    source = app_ctx.other_env(from_env) if from_env else None
    with _byte_progress(app_ctx, "restoring") as progress:
        result = backup.restore(
            env,
            backup_id,
            target_db=target_db,
            in_place=in_place,
            jobs=jobs,
            dry_run=app_ctx.dry_run,
            progress=progress,
            lock_wait_s=lock_wait,
            source=source,
        )

    def render(out: Console) -> None:
        from rich.markup import escape

        if result.dry_run:
            out.print(f"plan for restoring backup [bold]{result.id}[/bold] (nothing done):")
        for number, step in enumerate(result.steps, start=1):
            mark = {"done": "[green]✓[/green]", "failed": "[red]✗[/red]"}.get(step.status, " ")
            detail = f" — {step.detail}" if step.detail else ""
            out.print(f"{mark} {number}. {step.description}{detail}")
        if result.dry_run:
            return
        if result.ok:
            out.print(
                f"[green]✓[/green] backup {result.id} restored into {result.target_database} "
                f"in {result.elapsed_s:.1f} s"
            )
        else:
            out.print(f"[red]the restored database {result.target_database} fails validation[/red]")
        if result.previous_database:
            out.print(f"  the previous database is kept as {result.previous_database}")
        for note in result.notes:
            out.print(f"  note: {escape(note)}")

    app_ctx.output.result(result, render)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def prune(
    ctx: typer.Context,
    keep_last: int | None = typer.Option(None, "--keep-last", min=0, help="Keep the newest N."),
    keep_daily: int | None = typer.Option(None, "--keep-daily", min=0, help="Days to keep."),
    keep_weekly: int | None = typer.Option(None, "--keep-weekly", min=0, help="Weeks to keep."),
    keep_monthly: int | None = typer.Option(None, "--keep-monthly", min=0, help="Months."),
    orphan_minutes: float = typer.Option(
        60,
        "--orphans-older-than",
        min=0,
        help="Remove failed/unfinished uploads older than this many minutes "
        "(a running backup's lease protects it whatever its age).",
    ),
    forget_unreadable: list[str] = typer.Option(
        [],
        "--forget-unreadable",
        metavar="ID",
        help="Delete this backup although its manifest cannot be read (damaged, or written "
        "by a newer ptool-ops); repeatable. Without it such a backup stops the prune.",
    ),
    lock_wait: float = typer.Option(
        30, "--lock-wait", min=0, help="Seconds to wait for another prune to finish."
    ),
) -> None:
    """Delete backups the retention policy does not keep, and leftovers of failed runs.
    --dry-run lists what would go."""
    from datetime import timedelta

    from ptool_ops.backup.prune import policy_for
    from ptool_ops.backup.prune import prune as run_prune

    app_ctx = context.get(ctx)
    env = app_ctx.env
    base = policy_for(env.settings)
    policy = type(base)(
        keep_last=base.keep_last if keep_last is None else keep_last,
        keep_daily=base.keep_daily if keep_daily is None else keep_daily,
        keep_weekly=base.keep_weekly if keep_weekly is None else keep_weekly,
        keep_monthly=base.keep_monthly if keep_monthly is None else keep_monthly,
    )
    if not app_ctx.dry_run and env.protected:
        what = f"Delete backups of protected environment {env.name!r} by policy"
        if forget_unreadable:
            what += ", and the unreadable backup(s) " + ", ".join(forget_unreadable)
        app_ctx.confirm(what)
    result = run_prune(
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
        for backup_id in result.forgotten:
            out.print(f"[red]{verb}[/red] unreadable backup {backup_id}")
        for d in result.deleted:
            out.print(f"[red]{verb}[/red] {d.id}")
        for d in result.kept:
            out.print(f"kept {d.id} ({', '.join(d.reasons)})")
        for backup_id, holder in result.running.items():
            out.print(f"left {backup_id} alone: being written ({escape(holder)})")
        for orphan in result.orphans:
            out.print(f"[red]{verb}[/red] incomplete backup {orphan}")
        for partial in result.partial_uploads:
            out.print(
                f"[red]{'would abort' if result.dry_run else 'aborted'}[/red] upload {partial}"
            )
        out.print(
            f"{len(result.kept)} kept, {len(result.deleted) + len(result.forgotten)} {verb}, "
            f"{len(result.orphans) + len(result.partial_uploads)} leftovers "
            f"{'to clean' if result.dry_run else 'cleaned'}"
            + (f", {len(result.running)} running" if result.running else "")
        )

    app_ctx.output.result(result, render)
