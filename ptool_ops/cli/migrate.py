"""``ptool-ops migrate``: safe schema migrations.

One function per command; each parses, calls the library in ``ptool_ops.migrate`` and
renders. Keep module-level imports light (``--help`` must stay fast): pglast and the
library are imported inside the commands.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ptool_ops.cli import context

if TYPE_CHECKING:
    from rich.console import Console

    from ptool_ops.cli.context import AppContext
    from ptool_ops.migrate.lint import Finding, LintReport
    from ptool_ops.migrate.planning import Plan
    from ptool_ops.migrate.runner import Runner, RunResult

app = typer.Typer(
    help="Safe schema migrations: status, plan, lint, test, up, down, verify, new, repair, capture."
)


class LintFormat(enum.StrEnum):
    text = "text"
    github = "github"


def default_migrations_dir() -> Path:
    """The booking service's migrations shipped in the package (one definition of it)."""
    from ptool_ops.booking import MIGRATIONS_DIR

    return MIGRATIONS_DIR


@app.command()
def lint(
    ctx: typer.Context,
    paths: list[Path] | None = typer.Argument(
        None,
        help="Migration files or directories (searched recursively for *.sql, down and"
        " verify scripts skipped). Default: the migrations_dir setting, else the booking"
        " migrations.",
        show_default=False,
    ),
    start_after: str | None = typer.Option(
        None,
        "--start-after",
        metavar="VERSION",
        help="Lint only the migrations after VERSION (e.g. 0042); earlier files are read for"
        " the tables they create. Default without PATHs: the lint_start_after setting.",
        show_default=False,
    ),
    fmt: LintFormat = typer.Option(
        LintFormat.text,
        "--format",
        help="text for people, github for GitHub Actions annotations"
        " (JSON: use the global --output json).",
    ),
    assume_no_transaction: bool = typer.Option(
        False,
        "--assume-no-transaction",
        help="Lint every file as if marked '-- ptool: no-transaction'.",
    ),
    tenant_tables: list[str] = typer.Option(
        [],
        "--tenant-table",
        help="A table known to hold tenant rows (repeatable), besides those with tenant_id"
        " created by the files.",
    ),
    pg_version: int = typer.Option(18, "--pg-version", min=10, help="Target server major."),
) -> None:
    """Find lock-unsafe and release-breaking DDL; exit 1 on any error not allowed in its file."""
    from ptool_ops.errors import ProblemsFound
    from ptool_ops.migrate.lint import lint_paths

    app_ctx = context.get(ctx)
    if not paths:  # the project's migrations: its settings say where and from which version
        settings = app_ctx.settings
        paths = [settings.migrations_dir or default_migrations_dir()]
        start_after = start_after or settings.lint_start_after
    report = lint_paths(
        paths,
        transactional=False if assume_no_transaction else None,
        known_tenant_tables=tenant_tables,
        pg_version=pg_version,
        start_after=start_after,
    )
    if fmt is LintFormat.github and not app_ctx.output.json:
        for line in github_annotations(report):
            app_ctx.output.out.print(line, markup=False, highlight=False, emoji=False)
    else:
        app_ctx.output.result(report.to_dict(), lambda out: render_lint(out, report))
    if not report.ok:
        raise typer.Exit(ProblemsFound.exit_code)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(report: LintReport) -> list[str]:
    """One ``::error``/``::warning``/``::notice`` workflow command per finding."""
    lines = []
    for f in report.findings:
        level = "notice" if f.allowed else f.severity.value
        message = f"{f.message}. Fix: {f.fix}"
        if f.allowed:
            message = f"{f.message} (allowed: {f.allow_reason})"
        props = ",".join(
            f"{key}={_escape_property(str(value))}"
            for key, value in (
                ("file", f.file),
                ("line", f.line),
                ("col", f.column),
                ("title", f.rule),
            )
        )
        lines.append(f"::{level} {props}::{_escape_data(message)}")
    return lines


def _finding_line(f: Finding) -> str:
    from rich.markup import escape

    colour = "dim" if f.allowed else "red" if f.severity.value == "error" else "yellow"
    label = "allowed" if f.allowed else f.severity.value
    head = (
        f"{escape(f.file)}:{f.line}:{f.column}: [{colour}]{label}[/{colour}] [bold]{f.rule}[/bold]"
    )
    body = f"  {escape(f.message)}"
    tail = (
        f"  [dim]reason: {escape(f.allow_reason or '')}[/dim]"
        if f.allowed
        else f"  [dim]fix: {escape(f.fix)}[/dim]"
    )
    return "\n".join((head, body, tail))


def render_lint(out: Console, report: LintReport) -> None:
    from rich.markup import escape

    for finding in report.findings:
        out.print(_finding_line(finding))
    errors, warnings, allowed = len(report.errors), len(report.warnings), len(report.allowed)
    mark = "[green]✓[/green]" if report.ok else "[red]✗[/red]"
    skipped = (
        f" ({len(report.skipped)} file(s) up to {escape(report.start_after)} not linted)"
        if report.start_after
        else ""
    )
    out.print(
        f"{mark} {len(report.files)} file(s): {errors} error(s), {warnings} warning(s),"
        f" {allowed} allowed{skipped}"
    )


# --- the runner ----------------------------------------------------------------------------

DIR_OPTION = typer.Option(
    None,
    "--dir",
    help="Directory of NNNN_name.up/down/verify.sql (default: the migrations_dir setting,"
    " else the booking migrations).",
    show_default=False,
)


def _directory(app_ctx: AppContext, directory: Path | None) -> Path:
    from ptool_ops.errors import ConfigError

    chosen = directory or app_ctx.settings.migrations_dir or default_migrations_dir()
    if not chosen.is_dir():
        raise ConfigError(
            f"the migrations directory {chosen} does not exist.",
            hint="Pass --dir or set migrations_dir to the directory holding the migrations.",
        )
    return chosen


def _runner(
    app_ctx: AppContext,
    directory: Path | None,
    *,
    take_backup: bool = True,
    check_api: bool = True,
    gate: bool = False,
) -> Runner:
    from rich.markup import escape

    from ptool_ops.migrate.service import runner_for

    return runner_for(
        app_ctx.env,
        directory=_directory(app_ctx, directory),
        take_backup=take_backup,
        check_api=check_api,
        log=lambda message: app_ctx.output.info(f"[dim]{escape(message)}[/dim]"),
        gate=gate,
    )


_STATE_COLOUR = {
    "applied": "green",
    "pending": "yellow",
    "drifted": "red",
    "missing": "red",
    "interrupted": "red",
}


@app.command()
def status(ctx: typer.Context, directory: Path | None = DIR_OPTION) -> None:
    """Applied, pending, drifted (a script changed), missing (files gone) and interrupted
    (a run killed half-way) migrations; exit 1 on any but applied and pending."""
    from ptool_ops.errors import ProblemsFound

    app_ctx = context.get(ctx)
    report = _runner(app_ctx, directory).status()

    def render(out: Console) -> None:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for column in ("version", "name", "state", "applied at", "by", "ms", "note"):
            table.add_column(column)
        for m in report.migrations:
            colour = _STATE_COLOUR[m.state.value]
            detail = f" ({', '.join(m.drift)})" if m.drift else ""
            row = m.row
            table.add_row(
                m.version,
                m.name,
                f"[{colour}]{m.state.value}{detail}[/{colour}]",
                row.applied_at.strftime("%Y-%m-%d %H:%M") if row else "",
                row.applied_by if row else "",
                str(row.duration_ms) if row and row.duration_ms is not None else "",
                (row.note or "") if row else "",
            )
        out.print(table)
        out.print(
            f"current version {report.current or '(none)'}; {len(report.pending)} pending,"
            f" {len(report.problems)} drifted, missing or interrupted"
        )

    app_ctx.output.result(report.to_dict(), render)
    if report.problems:
        first = report.problems[0]
        app_ctx.fail(
            ProblemsFound(
                f"migration {first.label} is {first.state.value}: the history does not match"
                " the files.",
                hint=f"Restore the files or run 'ptool-ops migrate repair {first.version}"
                " --accept|--forget --reason ...'.",
            )
        )


def _render_plan(out: Console, plan: Plan) -> None:
    from rich.markup import escape

    if not plan.pending:
        out.print(f"[green]✓[/green] nothing pending (current version {plan.status.current})")
    for m in plan.pending:
        mode = "one transaction" if m.transactional else "no-transaction: statement by statement"
        out.print(f"[bold]{m.version}_{m.name}[/bold]  ({mode})")
        for s in m.statements:
            out.print(f"  line {s.line}: {escape(s.text)}")
            for lk in s.locks:
                colour = "red" if lk["blocks_writes"] and not lk["new_table"] else "dim"
                extra = ", ".join(k for k in ("rewrites", "scans", "new_table") if lk[k])
                out.print(
                    f"    [{colour}]{lk['mode']}[/{colour}] on {escape(lk['table'])}"
                    + (f" ({extra})" if extra else "")
                )
            if s.opaque:
                out.print("    [yellow]opaque: locks not visible in the parse tree[/yellow]")
        for f in m.findings:
            label = "allowed" if f["allowed"] else f["severity"]
            out.print(f"  lint {label} {f['rule']} line {f['line']}: {escape(f['message'])}")
    if plan.backup is not None:
        out.print(f"backup point: [bold]{plan.backup.kind.value}[/bold] ({plan.backup.reason})")
    out.print(
        f"every statement: lock_timeout {plan.options.lock_timeout_ms} ms (55P03 retried"
        f" {plan.options.lock_retries} times), statement_timeout"
        f" {plan.options.statement_timeout_ms} ms"
    )
    for reason in plan.blocked:
        out.print(f"[red]up would refuse:[/red] {escape(reason)}")


def _show_plan(app_ctx: AppContext, runner: Runner, *, to: str | None = None) -> None:
    from ptool_ops.errors import Refused

    plan = runner.plan(to=to)
    app_ctx.output.result({"dry_run": True, **plan.to_dict()}, lambda out: _render_plan(out, plan))
    if plan.blocked:
        app_ctx.fail(Refused(f"migrate up would refuse: {plan.blocked[0]}."))


@app.command()
def plan(ctx: typer.Context, directory: Path | None = DIR_OPTION) -> None:
    """Pending migrations, their lint findings, the locks each statement takes and the
    backup point up would take; exit 7 when up would refuse."""
    app_ctx = context.get(ctx)
    _show_plan(app_ctx, _runner(app_ctx, directory))


def _done(result: RunResult, env_name: str) -> str:
    """What a run did, for the error when its audit record cannot be written (a clause)."""
    verb = "applied" if result.direction == "up" else "reverted"
    versions = ", ".join(m.version for m in result.migrations) or "nothing"
    return f"migrate {result.direction} (run {result.run_id}) {verb} {versions} on {env_name!r}"


def _render_run(out: Console, result: RunResult) -> None:
    from rich.markup import escape

    for note in result.notes:
        out.print(f"[green]✓[/green] {note}")
    for m in result.migrations:
        retry = f", {m.attempts} attempts" if m.attempts > 1 else ""
        out.print(f"[green]✓[/green] {m.outcome} {m.version}_{m.name} in {m.duration_ms} ms{retry}")
        if m.compatibility is not None:
            _render_gate(out, m.compatibility)
    if result.backup_point is not None:
        out.print(
            f"backup point {escape(result.backup_point.label)}; way back:"
            f" {escape(result.backup_point.restore_command)}"
        )


def _render_gate(out: Console, report: dict[str, Any]) -> None:
    from rich.markup import escape

    phase = f" ({report['phase']})" if report.get("phase") else ""
    out.print(
        f"  compatibility{phase}: {report['checked']} captured statement(s) prepared as"
        f" {report['role']}, {len(report['broken'])} broken, {len(report['skipped'])} skipped"
    )
    if report.get("refused"):
        out.print(f"    [red]refused[/red] {escape(report['refused'])}")
    for probe in report["broken"]:
        out.print(
            f"    [red]broken[/red] {escape(probe['statement'][:160])}: {escape(probe['error'])}"
            f" (SQLSTATE {probe['sqlstate']}, last seen {probe['last_seen']})"
        )
    for probe in report["skipped"]:
        out.print(
            f"    [dim]skipped {escape(probe['statement'][:80])}: {escape(probe['error'])}[/dim]"
        )


NO_BACKUP = typer.Option(
    False,
    "--no-backup-point",
    help="Take no backup point first (not on protected environments).",
)


@app.command()
def up(
    ctx: typer.Context,
    directory: Path | None = DIR_OPTION,
    to: str | None = typer.Option(None, "--to", help="Stop after this version."),
    no_backup_point: bool = NO_BACKUP,
) -> None:
    """Lint, take a backup point, apply pending migrations with verify + invariants, check
    the API; roll back on any failure. --dry-run shows the plan (of --to too)."""
    from ptool_ops.audit import audited

    app_ctx = context.get(ctx)
    env = app_ctx.env
    runner = _runner(app_ctx, directory, take_backup=not no_backup_point, gate=not app_ctx.dry_run)
    if app_ctx.dry_run:
        _show_plan(app_ctx, runner, to=to)
        return
    expect: list[str] | None = None
    if env.protected:
        expect = runner.would_apply(to=to)
        if not expect:
            app_ctx.output.result(
                {"direction": "up", "migrations": [], "notes": ["nothing to apply"]},
                lambda out: out.print("[green]✓[/green] nothing to apply"),
            )
            return
        app_ctx.confirm(f"Apply {', '.join(expect)} to {env.name!r}")
    with audited(
        env,
        "migrate.up",
        {"directory": str(runner.directory), "to": to},
        done=lambda: _done(result, env.name),
    ) as entry:
        # what was confirmed is what runs: the library refuses if the list changed meanwhile
        result = runner.up(to=to, expect=expect)
        entry.details.update(
            {
                "run_id": result.run_id,
                "applied": [m.version for m in result.migrations],
                "backup_point": result.backup_point.label if result.backup_point else None,
            }
        )
    app_ctx.output.result(result.to_dict(), lambda out: _render_run(out, result))


@app.command()
def down(
    ctx: typer.Context,
    directory: Path | None = DIR_OPTION,
    steps: int = typer.Option(1, "--steps", min=1, help="How many migrations to revert."),
    to: str | None = typer.Option(
        None,
        "--to",
        help="Revert every migration after this version (overrides --steps; 0: all).",
    ),
    every: bool = typer.Option(False, "--all", help="Revert every applied migration."),
    no_backup_point: bool = NO_BACKUP,
) -> None:
    """Revert the last applied migration(s) with their down scripts (after a backup point)."""
    from ptool_ops.audit import audited
    from ptool_ops.errors import UsageError

    app_ctx = context.get(ctx)
    env = app_ctx.env
    if every and to is not None:
        raise UsageError("--all and --to exclude each other.", hint="Use one of them.")
    to = "0" if every else to
    runner = _runner(app_ctx, directory, take_backup=not no_backup_point)
    targets = runner.would_revert(steps=steps, to=to)
    if app_ctx.dry_run or not targets:
        labels = targets
        app_ctx.output.result(
            {"dry_run": app_ctx.dry_run, "direction": "down", "would_revert": labels},
            lambda out: out.print(
                f"would revert: {', '.join(labels)}" if labels else "nothing to revert"
            ),
        )
        return
    app_ctx.confirm(
        f"Revert {', '.join(targets)} on {env.name!r} (their down scripts may drop data)"
    )
    with audited(
        env,
        "migrate.down",
        {"directory": str(runner.directory), "steps": steps, "to": to},
        done=lambda: _done(result, env.name),
    ) as entry:
        result = runner.down(steps=steps, to=to, expect=targets)
        entry.details.update(
            {
                "run_id": result.run_id,
                "reverted": [m.version for m in result.migrations],
                "backup_point": result.backup_point.label if result.backup_point else None,
            }
        )
    app_ctx.output.result(result.to_dict(), lambda out: _render_run(out, result))


@app.command()
def verify(ctx: typer.Context, directory: Path | None = DIR_OPTION) -> None:
    """Run the verify script of every applied migration and the booking invariants
    (read only); exit 1 if any fails."""
    from ptool_ops.errors import ProblemsFound

    app_ctx = context.get(ctx)
    report = _runner(app_ctx, directory).verify()

    def render(out: Console) -> None:
        from rich.markup import escape

        for r in report.results:
            mark = "[green]✓[/green]" if r["ok"] else "[red]✗[/red]"
            out.print(f"{mark} {r['version']}_{r['name']}: {escape(r['detail'])}")
        if report.invariants is not None:
            mark = "[green]✓[/green]" if report.invariants["ok"] else "[red]✗[/red]"
            out.print(
                f"{mark} booking invariants: {report.invariants['violation_count']} violation(s)"
            )

    app_ctx.output.result(report.to_dict(), render)
    if not report.ok:
        app_ctx.fail(ProblemsFound("verification failed: the schema is not what was applied."))


@app.command()
def new(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="lower_case_words: what the migration does."),
    directory: Path | None = DIR_OPTION,
    no_transaction: bool = typer.Option(
        False, "--no-transaction", help="Mark it '-- ptool: no-transaction' (CONCURRENTLY...)."
    ),
    phase: Phase | None = typer.Option(
        None,
        "--phase",
        help="Mark it '-- ptool: phase expand|contract'; with --rename: only that half.",
    ),
    rename: str | None = typer.Option(
        None,
        "--rename",
        metavar="SCHEMA.TABLE.COLUMN=NEW",
        help="Scaffold a column rename as two migrations: the expand half (new column,"
        " backfill, sync trigger) and the contract half (the drop).",
    ),
    column_type: str = typer.Option(
        "text", "--type", help="With --rename: the column's type, as SQL (e.g. 'varchar(80)')."
    ),
    key: str = typer.Option(
        "id", "--key", help="With --rename: the unique, indexed column the backfill pages by."
    ),
) -> None:
    """Scaffold NNNN_NAME.up.sql, .down.sql and .verify.sql with the next version (two
    migrations, expand then contract, with --rename)."""
    from ptool_ops.migrate.scaffold import scaffold, scaffold_rename

    app_ctx = context.get(ctx)
    target = _directory(app_ctx, directory)
    if rename is not None:
        paths = scaffold_rename(
            target,
            name,
            rename,
            column_type=column_type,
            only=phase.value if phase else None,
            key=key,
        )
    else:
        paths = scaffold(
            target, name, no_transaction=no_transaction, phase=phase.value if phase else None
        )

    def render(out: Console) -> None:
        for path in paths:
            out.print(f"[green]created[/green] {path}")

    app_ctx.output.result({"created": [str(p) for p in paths]}, render)


class Phase(enum.StrEnum):
    expand = "expand"
    contract = "contract"


class RepairAction(enum.StrEnum):
    accept = "accept"
    forget = "forget"


@app.command()
def repair(
    ctx: typer.Context,
    version: str = typer.Argument(
        ..., help="The drifted, missing or interrupted migration's version."
    ),
    accept: bool = typer.Option(
        False, "--accept", help="The files as they are now are what was applied: re-hash."
    ),
    forget: bool = typer.Option(
        False, "--forget", help="Mark the migration not applied (its files are gone)."
    ),
    reason: str = typer.Option(..., "--reason", help="Why: recorded in history and audit."),
    directory: Path | None = DIR_OPTION,
) -> None:
    """Record an operator's decision on drift: --accept the files or --forget the row."""
    from ptool_ops.audit import audited
    from ptool_ops.errors import ConfigError

    app_ctx = context.get(ctx)
    if accept == forget:
        raise ConfigError("repair needs exactly one of --accept and --forget.")
    action = RepairAction.accept if accept else RepairAction.forget
    runner = _runner(app_ctx, directory)
    env = app_ctx.env
    if app_ctx.dry_run:
        app_ctx.output.result(
            {"dry_run": True, "version": version, "action": action.value},
            lambda out: out.print(f"would {action.value} migration {version}"),
        )
        return
    if env.protected:
        app_ctx.confirm(f"Record '{action.value}' for migration {version} on {env.name!r}")
    with audited(
        env,
        "migrate.repair",
        {"version": version, "action": action.value, "reason": reason},
        done=lambda: (
            f"the repair --{action.value} of migration {version} was recorded in the"
            f" history of {env.name!r}"
        ),
    ):
        result = runner.repair(version, action=action.value, reason=reason)
    app_ctx.output.result(
        result.to_dict(),
        lambda out: out.print(
            f"[green]✓[/green] {version}: {action.value} recorded; now {result.state.value}"
        ),
    )


class TestSource(enum.StrEnum):
    auto = "auto"
    template = "template"
    dump = "dump"


@app.command("test")
def test_(
    ctx: typer.Context,
    directory: Path | None = DIR_OPTION,
    source: TestSource = typer.Option(
        TestSource.auto,
        "--source",
        help="How to copy the database: template (CREATE DATABASE ... TEMPLATE, needs no other"
        " sessions), dump (schema-only pg_dump), auto (template, else dump).",
    ),
) -> None:
    """On a scratch copy: up, verify + invariants, down, catalog equal to before, up again,
    for each pending migration; exit 1 if any is not reversible."""
    from rich.markup import escape

    from ptool_ops.errors import ProblemsFound
    from ptool_ops.migrate.service import gate_for, options_for
    from ptool_ops.migrate.testing import run_migration_tests

    app_ctx = context.get(ctx)
    env = app_ctx.env

    def say(message: str) -> None:
        app_ctx.output.info(f"[dim]{escape(message)}[/dim]")

    report = run_migration_tests(
        env.database("migrate.test").url,
        directory=_directory(app_ctx, directory),
        options=options_for(env),
        source=source.value,
        pg_bin_dir=env.pg_bin_dir,
        log=say,
        gate=gate_for(env, say),
    )

    def render(out: Console) -> None:
        if not report.migrations:
            out.print("[green]✓[/green] nothing pending to test")
        for m in report.migrations:
            mark = "[green]✓[/green]" if m.ok else "[red]✗[/red]"
            out.print(
                f"{mark} {m.version}_{m.name}: up {m.up_ms} ms, down {m.down_ms} ms,"
                f" up again {m.reapply_ms} ms" + (f" -- {escape(m.error)}" if m.error else "")
            )
            if m.compatibility is not None:
                _render_gate(out, m.compatibility)
            for aspect, change in m.diff.items():
                for side in ("removed", "added"):
                    for row in change[side]:
                        out.print(f"    {aspect} {side}: {escape(str(row))}")
        out.print(f"scratch database {report.scratch_database} ({report.source}), dropped")

    app_ctx.output.result(report.to_dict(), render)
    if not report.ok:
        failed = next(m for m in report.migrations if not m.ok)
        app_ctx.fail(ProblemsFound(f"migration {failed.version}_{failed.name}: {failed.error}."))


@app.command()
def capture(
    ctx: typer.Context,
    from_file: Path | None = typer.Option(
        None,
        "--from",
        help='Add statements recorded elsewhere (an API test run): JSON {"statements":'
        ' [{"query": ..., "calls": n, "last_seen": iso, "app_version": ...}]} or'
        " one statement per line.",
    ),
    app_version: str | None = typer.Option(
        None,
        "--app-version",
        help="The app version these statements belong to (default: what the API's /version"
        " reports); a new value marks a deploy.",
    ),
    no_statistics: bool = typer.Option(
        False, "--no-statistics", help="Only --from FILE: do not read pg_stat_statements."
    ),
) -> None:
    """Merge the API's statements from pg_stat_statements (and --from FILE) into the query
    set the compatibility gate of migrate up/test prepares."""
    from rich.markup import escape

    from ptool_ops.errors import UsageError
    from ptool_ops.migrate.capture import capture_env

    app_ctx = context.get(ctx)
    if no_statistics and from_file is None:
        raise UsageError("--no-statistics needs --from FILE.", hint="Pass the file to add.")
    result = capture_env(
        app_ctx.env,
        from_file=from_file,
        app_version=app_version,
        statistics=not no_statistics,
        log=lambda message: app_ctx.output.info(f"[dim]{escape(message)}[/dim]"),
    )

    def render(out: Console) -> None:
        for c in result.captures:
            out.print(
                f"[green]✓[/green] {escape(c['kind'])} {escape(c['source'])}:"
                f" {c['statements']} statement(s) seen, {c['new']} new"
                + (f" (app {escape(c['app_version'])})" if c.get("app_version") else "")
            )
        for note in result.notes:
            out.print(f"[dim]{escape(note)}[/dim]")
        out.print(f"query set: {result.statements} statement(s) in {escape(result.repository)}")

    app_ctx.output.result(result.to_dict(), render)
