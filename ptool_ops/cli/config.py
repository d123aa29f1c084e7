"""``ptool-ops config``: validate and show an environment's settings (secrets as set/unset)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Environment settings: check them, show them, list the keys.")


@app.command()
def check(ctx: typer.Context) -> None:
    """Load and validate the environment's settings (names the failing key and its source),
    and check the backup repository: its directory, or bucket, credentials and endpoint."""
    from ptool_ops.repo.check import RepositoryCheck, check_repository

    app_ctx = context.get(ctx)
    settings = app_ctx.settings
    env = app_ctx.env
    repo: RepositoryCheck | None = None
    if settings.repo_url or env.is_local:
        repo = check_repository(env.repository(), made_on_first_use=not settings.repo_url)
    data = {
        "environment": settings.name,
        "valid": repo is None or repo.ok,
        "settings_valid": True,
        "repository": repo,
    }

    def render(out: Console) -> None:
        from rich.markup import escape

        out.print(f"[green]✓[/green] settings of {settings.name!r} are valid")
        if repo is None:
            out.print("  no backup repository configured (repo_url)")
        elif repo.ok:
            note = f" ({escape(repo.note)})" if repo.note else ""
            out.print(f"[green]✓[/green] repository {escape(repo.url)}{note}")
        else:
            out.print(f"[red]✗[/red] repository {escape(repo.url)}")

    app_ctx.output.result(data, render)
    failure = repo.error() if repo is not None else None
    if failure is not None:
        app_ctx.fail(failure)


@app.command()
def show(ctx: typer.Context) -> None:
    """Show the environment's effective settings; secret values are never shown."""
    app_ctx = context.get(ctx)
    shown = app_ctx.settings.describe()

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("key", "value", box=None)
        for key, value in shown.items():
            table.add_row(key, str(value))
        out.print(table)

    app_ctx.output.result(shown, render)


@app.command()
def keys(ctx: typer.Context) -> None:
    """List every setting an environment accepts, with its PTOOL_* variable."""
    from ptool_ops.settings import setting_keys

    app_ctx = context.get(ctx)
    infos = setting_keys()

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table("key", "variable", "secret", "description", box=None)
        for info in infos:
            table.add_row(info.key, info.variable, "yes" if info.secret else "", info.description)
        out.print(table)

    app_ctx.output.result([i.model_dump() for i in infos], render)


@app.command("from-stack")
def from_stack(
    ctx: typer.Context,
    outputs_file: str = typer.Argument(
        "-",
        metavar="OUTPUTS",
        help="File with 'pulumi stack output --json' ('-', the default, reads stdin).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Environment to write (default: the stack's 'environment' output)."
    ),
    config_file: str | None = typer.Option(
        None,
        "--config",
        help="ptool-ops.toml to write (default: PTOOL_CONFIG, else ./ptool-ops.toml).",
    ),
) -> None:
    """Write a stack's outputs into its environments.<name> table of ptool-ops.toml.

    Secrets are never written: the database is reached through the secret reference the
    stack exports. Keys of the table that the stack does not set are kept.
    """
    import sys
    from pathlib import Path

    from ptool_ops.errors import ConfigError
    from ptool_ops.platform.stack import import_outputs, parse_outputs
    from ptool_ops.settings import CONFIG_FILE, config_path

    app_ctx = context.get(ctx)
    if outputs_file == "-":
        text, source = sys.stdin.read(), "standard input"
    else:
        try:
            text, source = Path(outputs_file).read_text(encoding="utf-8"), outputs_file
        except OSError as err:
            raise ConfigError(f"cannot read {outputs_file}: {err.strerror}.") from None
    path = Path(config_file) if config_file else (config_path() or Path.cwd() / CONFIG_FILE)
    result = import_outputs(
        parse_outputs(text, source=source), path, name=name, dry_run=app_ctx.dry_run
    )

    def render(out: Console) -> None:
        from rich.markup import escape

        table = escape(f"[environments.{result.environment}]")
        if not result.changed and not result.created_table:
            out.print(
                f"[green]✓[/green] {table} of {escape(str(result.path))} is already up to date"
            )
            return
        verb = "would update" if app_ctx.dry_run else "updated"
        if result.created_table:
            verb = "would add" if app_ctx.dry_run else "added"
        out.print(f"[green]✓[/green] {verb} {table} in {escape(str(result.path))}")
        for key in result.changed:
            out.print(escape(f"  {key} = {result.settings[key]!r}"))

    app_ctx.output.result(result.to_dict(), render)
