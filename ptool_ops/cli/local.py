"""``ptool-ops local``: the embedded environment (up, down, status, reset, url, seed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops import privileges
from ptool_ops.cli import context
from ptool_ops.local import SUPERUSER

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.cli.context import AppContext
    from ptool_ops.local.env import LocalEnvironment

app = typer.Typer(help="The embedded local environment: PostgreSQL with the booking schema.")


def _local(app_ctx: AppContext) -> LocalEnvironment:
    from ptool_ops.errors import ConfigError
    from ptool_ops.local.env import LocalEnvironment

    settings = app_ctx.settings
    if not settings.is_local:
        raise ConfigError(
            f"'local' commands act on the embedded local environment, not on {settings.name!r}.",
            hint="Drop --env (or PTOOL_ENV) to use the local environment.",
        )
    env = app_ctx.env
    return LocalEnvironment(settings.local_dir, repo_url=env.repo_url, backup_key=env.backup_key())


@app.command()
def up(
    ctx: typer.Context,
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="TCP port (default: local_port, else a free one)."
    ),
) -> None:
    """Start the local PostgreSQL (initialising it the first time) and apply the schema."""
    app_ctx = context.get(ctx)
    env = _local(app_ctx)
    if app_ctx.dry_run:
        state = env.state()
        plan = {
            "data_dir": str(env.paths.pgdata),
            "initialise": not state.initialised,
            "start": not state.running,
            "apply_pending_migrations": True,
        }
        app_ctx.output.result({"dry_run": True, "plan": plan}, None)
        return
    result = env.up(port=port or app_ctx.settings.local_port)
    creds = env.facts.secrets()
    app_ctx.redactor.add(*(creds.values() if creds else []))

    def render(out: Console) -> None:
        verb = "started" if result.started else "already running"
        out.print(
            f"[green]✓[/green] local PostgreSQL {verb} on 127.0.0.1:{result.port} "
            f"(data: {result.data_dir})"
        )
        applied = ", ".join(result.applied_migrations) or "none pending"
        out.print(
            f"  database {result.database}, schema version {result.schema_version} "
            f"(applied: {applied})"
        )
        out.print(
            f"  connect: PGPASSFILE={env.paths.pgpass} psql '{result.urls[privileges.OWNER]}'"
        )
        if result.api_url:
            verb = "started" if result.api_started else "already running"
            out.print(f"[green]✓[/green] local booking API {verb} at {result.api_url}")

    app_ctx.output.result(result, render)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the local PostgreSQL; its data stays for the next 'up'."""
    app_ctx = context.get(ctx)
    env = _local(app_ctx)
    if app_ctx.dry_run:
        app_ctx.output.result({"dry_run": True, "stop": env.state().running}, None)
        return
    stopped = env.down()
    app_ctx.output.result(
        {"stopped": stopped, "data_dir": str(env.paths.pgdata)},
        lambda out: out.print(
            "[green]✓[/green] local booking API and PostgreSQL stopped"
            if stopped
            else "the local environment was not running"
        ),
    )


@app.command("status")
def local_status(ctx: typer.Context) -> None:
    """Is the local server initialised and running, where, and on which port."""
    app_ctx = context.get(ctx)
    status = _local(app_ctx).facts.status()

    def render(out: Console) -> None:
        server = status.server
        if server["running"]:
            out.print(f"[green]running[/green] pid {server['pid']} on 127.0.0.1:{server['port']}")
        elif server["initialised"]:
            out.print("[yellow]stopped[/yellow] (start it with 'ptool-ops local up')")
        else:
            out.print("[yellow]not initialised[/yellow] (create it with 'ptool-ops local up')")
        out.print(f"  data: {status.data_dir}")
        api = status.api
        out.print(
            f"  booking API: {api['url']} (pid {api['pid']})" if api else "  booking API: stopped"
        )
        out.print(f"  WAL archive: {status.wal_archive} ({status.archived_wal_files} files)")

    app_ctx.output.result(status, render)


@app.command()
def reset(ctx: typer.Context) -> None:
    """Delete the local environment's data, WAL archive and passwords (asks first)."""
    app_ctx = context.get(ctx)
    env = _local(app_ctx)
    if app_ctx.dry_run:
        app_ctx.output.result({"dry_run": True, "delete": str(env.paths.root)}, None)
        return
    app_ctx.confirm(f"Delete every byte of the local environment in {env.paths.root}")
    env.reset()
    app_ctx.output.result(
        {"reset": True, "deleted": str(env.paths.root)},
        lambda out: out.print(
            f"[green]✓[/green] deleted {env.paths.root}; 'ptool-ops local up' starts afresh"
        ),
    )


@app.command()
def url(
    ctx: typer.Context,
    role: str = typer.Argument(
        privileges.OWNER,
        help=f"Role to connect as: {privileges.OWNER} (the operator), {privileges.MIGRATOR},"
        f" {privileges.BACKUP}, {privileges.READONLY}, {'/'.join(privileges.APP_LOGINS)};"
        f" {SUPERUSER} is the server's superuser, for server set-up only.",
    ),
) -> None:
    """Print a connection URL for a role (passwords live in the pgpass file, not the URL)."""
    from ptool_ops.errors import ConfigError

    app_ctx = context.get(ctx)
    facts = _local(app_ctx).facts
    facts.require_running()
    urls = facts.urls()
    if role not in urls:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(urls)}.")
    data = {"role": role, "url": urls[role], "pgpassfile": str(facts.paths.pgpass)}

    def render(out: Console) -> None:
        out.print(urls[role])
        if role != SUPERUSER:
            out.print(f"[dim]password: PGPASSFILE={facts.paths.pgpass}[/dim]")
        else:
            out.print("[dim]the superuser: server set-up only (local up/down/reset)[/dim]")

    app_ctx.output.result(data, render)


@app.command()
def seed(
    ctx: typer.Context,
    tenants: int = typer.Option(10, "--tenants", min=1, help="Tenants to add."),
    bookings: int = typer.Option(10_000, "--bookings", min=0, help="Bookings to add."),
    rng_seed: int = typer.Option(42, "--seed", help="Random seed (same seed, same data)."),
) -> None:
    """Add realistic, invariant-respecting data fast (COPY)."""
    from ptool_ops.booking.seed import seed as run_seed

    app_ctx = context.get(ctx)
    _local(app_ctx).facts.require_running()
    if app_ctx.dry_run:
        app_ctx.output.result({"dry_run": True, "tenants": tenants, "bookings": bookings}, None)
        return
    with (
        app_ctx.output.progress("seeding", total=bookings) as bar,
        app_ctx.env.database("local.seed").connect() as conn,
    ):
        privileges.require(conn, "local.seed")

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(done, total=total, description=stage)

        result = run_seed(
            conn, tenants=tenants, bookings=bookings, seed=rng_seed, progress=progress
        )

    def render(out: Console) -> None:
        out.print(
            f"[green]✓[/green] seeded {result.tenants} tenants, {result.artists} artists, "
            f"{result.projects} projects, {result.bookings} bookings, {result.events} events "
            f"in {result.elapsed_s:.1f} s"
        )

    app_ctx.output.result(result, render)
