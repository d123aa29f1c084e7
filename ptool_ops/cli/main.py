"""The ``ptool-ops`` command: global options, command groups, and the one place errors exit.

Global options are accepted before or after the command, as operators type them:
``ptool-ops --env prod backup list`` and ``ptool-ops backup list --env prod`` alike.

Keep imports here light: ``ptool-ops --help`` must stay fast, so commands import the
library (psycopg, pydantic, boto3, ...) inside their bodies.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import typer
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from ptool_ops import tracing
from ptool_ops.cli import api as api_cli
from ptool_ops.cli import audit as audit_cli
from ptool_ops.cli import backup as backup_cli
from ptool_ops.cli import config as config_cli
from ptool_ops.cli import doctor as doctor_cli
from ptool_ops.cli import drill as drill_cli
from ptool_ops.cli import local as local_cli
from ptool_ops.cli import migrate as migrate_cli
from ptool_ops.cli import pitr as pitr_cli
from ptool_ops.cli import recover as recover_cli
from ptool_ops.cli import report as report_cli
from ptool_ops.cli import runbook as runbook_cli
from ptool_ops.cli import secrets as secrets_cli
from ptool_ops.cli import status as status_cli
from ptool_ops.cli import tour as tour_cli
from ptool_ops.cli.args import hoist_global_options
from ptool_ops.cli.context import AppContext
from ptool_ops.console import Output, OutputFormat, Redactor, configure_logging
from ptool_ops.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, PtoolError


class RootGroup(TyperGroup):
    """Hoists global options and turns our errors into a sentence and an exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Typer's Click Context
        return super().parse_args(ctx, hoist_global_options(args))

    def invoke(self, ctx: Any) -> Any:
        with tracing.command(ctx):  # a span per command, when OpenTelemetry is configured
            return self._invoke(ctx)

    def _invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PtoolError as err:
            _report(ctx, err)
            raise Exit(err.exit_code) from None
        except (Exit, Abort, TyperException):
            raise
        except KeyboardInterrupt:
            _output(ctx).error(
                "interrupted; nothing more was started.", None, {"error": "interrupted"}
            )
            raise Exit(EXIT_INTERRUPTED) from None
        except Exception as err:
            translated = _translate(err, ctx.find_root().obj)
            if translated is not None:
                _report(ctx, translated)
                raise Exit(translated.exit_code) from None
            out = _output(ctx)
            out.err.print(out.redactor(traceback.format_exc()), markup=False, highlight=False)
            out.error(
                f"internal error: {type(err).__name__}. This is a bug in ptool-ops.",
                "Please report it with the traceback above.",
                {"error": "internal", "exit_code": EXIT_INTERNAL, "type": type(err).__name__},
            )
            raise Exit(EXIT_INTERNAL) from None


def _translate(err: Exception, app: object = None) -> PtoolError | None:
    """Failures of the outside world that reach us unwrapped (a dropped connection, a
    statement refused for a privilege no preflight check knew of, ...)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(err, psycopg.errors.InsufficientPrivilege):
        from ptool_ops.errors import PermissionDenied
        from ptool_ops.pg import _first_line

        # a query error does not say which login it came from: name the command's logins
        env = getattr(app, "_env", None)
        users = list(getattr(env, "login_users", None) or [])
        who = (
            f"role {users[0]}"
            if len(users) == 1
            else f"one of the roles {', '.join(users)}"
            if users
            else "the database login"
        )
        return PermissionDenied(
            f"{who} was refused: {_first_line(err.diag.message_primary or str(err))}"
            " (SQLSTATE 42501).",
            hint="Use the role the privilege model names for this command, or grant what is"
            " missing; 'ptool-ops doctor' shows what every configured role can do.",
        )
    if psycopg is not None and isinstance(err, psycopg.OperationalError):
        from ptool_ops.errors import DatabaseUnavailable
        from ptool_ops.pg import _first_line

        return DatabaseUnavailable(
            f"the database connection failed: {_first_line(str(err))}.",
            hint="Check the database and run the command again.",
        )
    return None


def _output(ctx: typer.Context) -> Output:
    obj = ctx.find_root().obj
    if isinstance(obj, AppContext):
        return obj.output
    return Output(OutputFormat.text, Redactor())


def _report(ctx: typer.Context, err: PtoolError) -> None:
    out = _output(ctx)
    obj = ctx.find_root().obj
    if isinstance(obj, AppContext) and obj.debug:
        out.err.print(out.redactor(traceback.format_exc()), markup=False, highlight=False)
    out.error(err.message, err.hint, err.to_dict())


app = typer.Typer(
    cls=RootGroup,
    name="ptool-ops",
    help="Operate Production Tool environments: local database, status, backups, migrations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click help: rich help rendering alone costs ~0.2 s
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(local_cli.app, name="local")
app.add_typer(api_cli.app, name="api")
app.add_typer(config_cli.app, name="config")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(backup_cli.app, name="backup")
app.add_typer(drill_cli.app, name="drill")
app.add_typer(migrate_cli.app, name="migrate")
app.add_typer(pitr_cli.app, name="pitr")
app.add_typer(runbook_cli.app, name="runbook")
app.add_typer(recover_cli.app, name="recover")
app.add_typer(secrets_cli.app, name="secrets")
app.command("status")(status_cli.status)
app.command("report")(report_cli.report)
app.command("doctor")(doctor_cli.doctor)
app.command("tour")(tour_cli.tour)


@app.command(
    "wal",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
def wal(ctx: typer.Context) -> None:
    """The WAL archive: archive_command (push %p) and restore_command (fetch %f %p).

    The console script runs these without loading this command tree (ptool_ops.cli);
    'ptool-ops wal --help' shows their options."""
    from ptool_ops.cli.wal import standalone

    env_name = ctx.find_root().obj.env_name if isinstance(ctx.find_root().obj, AppContext) else None
    raise typer.Exit(standalone(["--env", env_name] if env_name else [], list(ctx.args)))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ptool-ops {version('ptool-ops')}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    env: str | None = typer.Option(
        None, "--env", "-e", envvar="PTOOL_ENV", help="Environment to act on (default: local)."
    ),
    output: OutputFormat = typer.Option(
        OutputFormat.text, "--output", "-o", help="text for people, json for machines."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Answer yes to confirmations (CI)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; change nothing."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More detail (-vv: debug)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for every error."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    redactor = Redactor()
    out = Output(output, redactor, verbose=verbose)
    configure_logging(redactor, verbose)
    ctx.obj = AppContext(
        env_name=env,
        output=out,
        redactor=redactor,
        yes=yes,
        dry_run=dry_run,
        verbose=verbose,
        debug=debug,
    )


def main() -> None:
    """The console script. When the command is done the process ends: freezing the heap
    spares the interpreter's last garbage collection from walking every object boto,
    pydantic and psycopg loaded (about 0.15 s at exit after an S3 command)."""
    try:
        app()
    finally:
        import gc

        gc.freeze()
