"""The migration runner: status, plan, up, down, verify, repair.

``up`` is a fixed sequence (the step is named in errors):

1. refuse a Neon pooled host; take the run lock (:mod:`ptool_ops.migrate.run_lock`);
2. check the login's privileges for the run (:mod:`ptool_ops.privileges`);
3. read the history; refuse drift (a changed script, a missing file) until ``repair``;
4. lint the pending migrations: errors not allowed in their file block the run;
5. take the backup point (a :class:`BackupStep` the caller gives) unless there is none;
6. per migration, :class:`~ptool_ops.migrate.execution.Executor` (one transaction, or
   statement by statement with rollback by the down script), as the schema owner;
7. after each commit, the caller's API readiness check (``api_ready``): an API that is not
   ready sends the migration down the same rollback path.

The runner knows no environment: the caller (:mod:`ptool_ops.migrate.service` for the CLI,
``local up``, ``migrate test``, the tests) hands it a login URL, the backup step and the
readiness check.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from pydantic import SecretStr

from ptool_ops import pg, tracing
from ptool_ops.audit.anchor import ensure_table as ensure_anchor_table
from ptool_ops.errors import (
    ConfigError,
    ManualActionRequired,
    OperationFailed,
    PtoolError,
    Refused,
    UsageError,
)
from ptool_ops.migrate import history
from ptool_ops.migrate.execution import (
    Executor,
    MigrationResult,
    RunOptions,
    SessionLost,
    manual,
)
from ptool_ops.migrate.files import MigrationError, MigrationFiles, load_migrations, run_verify
from ptool_ops.migrate.run_lock import refuse_pooler, run_lock

if TYPE_CHECKING:
    from ptool_ops.migrate.backup_point import BackupPlan, BackupPoint
    from ptool_ops.migrate.compat import Gate
    from ptool_ops.migrate.lint import LintReport
    from ptool_ops.migrate.planning import Plan

__all__ = [
    "BackupStep",
    "MigrationResult",
    "RunOptions",
    "RunResult",
    "Runner",
    "VerifyReport",
]


class BackupStep(Protocol):
    """The way back a run takes before it changes anything."""

    def plan(self, conn: psycopg.Connection[Any]) -> BackupPlan: ...

    def take(self, conn: psycopg.Connection[Any], plan: BackupPlan, label: str) -> BackupPoint: ...


@dataclass
class RunResult:
    direction: str
    run_id: str
    migrations: list[MigrationResult] = field(default_factory=list)
    backup_point: BackupPoint | None = None
    lint: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "run_id": self.run_id,
            "migrations": [m.to_dict() for m in self.migrations],
            "backup_point": self.backup_point.to_dict() if self.backup_point else None,
            "lint": self.lint,
            "notes": self.notes,
        }


@dataclass
class VerifyReport:
    results: list[dict[str, Any]]
    invariants: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        inv_ok = self.invariants is None or bool(self.invariants.get("ok"))
        return inv_ok and all(r["ok"] for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "migrations": self.results, "invariants": self.invariants}


def _verified(s: history.MigrationStatus, ok: bool, detail: str) -> dict[str, Any]:
    return {"version": s.version, "name": s.name, "ok": ok, "detail": detail}


class Runner:
    """Runs the migrations of ``directory`` against the database at ``url``.

    ``backup`` takes the way back before a run (None: none); ``backup_if_fresh=False``
    skips it when nothing was ever applied (a fresh database has nothing to lose);
    ``api_ready`` returns None when the API is ready after a migration, else why not;
    ``on_event`` is told (action, details) when a no-transaction migration starts, before
    its history row and first statement (the audit trail's "started" record); a
    :class:`PtoolError` it raises stops the run with nothing of that migration changed;
    ``gate``: the compatibility gate every up passes before commit
    (:mod:`ptool_ops.migrate.compat`; None: none).
    """

    def __init__(
        self,
        url: SecretStr | str,
        *,
        directory: Path,
        options: RunOptions | None = None,
        backup: BackupStep | None = None,
        backup_if_fresh: bool = True,
        api_ready: Callable[[], str | None] | None = None,
        log: Callable[[str], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        gate: Gate | None = None,
        anchor_table: bool = True,
    ) -> None:
        self.url = url
        #: make the audit trail's anchor table once 0001 gave the schema owner ptool_ops
        #: (``migrate test`` does not: its down of 0001 must leave the roles droppable)
        self.anchor_table = anchor_table
        self.gate = gate
        self.on_event = on_event
        self.directory = directory
        self.options = options or RunOptions()
        self.backup = backup
        self.backup_if_fresh = backup_if_fresh
        self.api_ready = api_ready
        self._log = log or (lambda message: None)

    # --- reading -------------------------------------------------------------------------

    def migrations(self) -> list[MigrationFiles]:
        try:
            return load_migrations(self.directory)
        except ValueError as err:
            raise ConfigError(str(err).rstrip(".") + ".") from None

    def _read(self, conn: psycopg.Connection[Any], duty: str) -> history.StatusReport:
        from ptool_ops import privileges

        privileges.require(conn, duty, skip=() if self.options.invariants else ("read_all_rows",))
        return history.status(self.migrations(), history.read_history(conn), str(self.directory))

    def status(self) -> history.StatusReport:
        with pg.connect(self.url) as conn:
            return self._read(conn, "migrate.read")

    def lint(self, pending: list[MigrationFiles]) -> LintReport:
        """Lint every up script in order (tenant tables carry over) and keep the findings of
        ``pending``."""
        from dataclasses import replace

        from ptool_ops.migrate.files import without_phase_findings
        from ptool_ops.migrate.lint import lint_paths

        report = without_phase_findings(lint_paths([m.up for m in self.migrations()]))
        ups = {str(m.up) for m in pending}
        wanted = ups | {str(m.down) for m in pending}  # an empty down is the down's finding
        return replace(
            report,
            files=[f for f in report.files if f in ups],
            findings=[f for f in report.findings if f.file in wanted],
        )

    def plan(self, *, to: str | None = None) -> Plan:
        """What ``up(to=...)`` would do now, and every reason it would refuse (read only)."""
        from ptool_ops.migrate.planning import build_plan, script_problems

        to = self.resolve(to)
        refuse_pooler(self.url)
        with pg.connect(self.url) as conn:
            report = self._read(conn, "migrate.read")
            pending = self._to_apply(report, to)
            backup = self.backup.plan(conn) if pending and self.backup is not None else None
        return build_plan(
            report,
            pending,
            self.lint(pending),
            script_problems(self._up_scripts(pending)),
            backup,
            self.options,
        )

    # --- running -------------------------------------------------------------------------

    @contextmanager
    def _session(self, what: str) -> Iterator[tuple[Executor, str]]:
        """The run lock, then the work connection: timeouts set, the login's privileges
        checked, the history table in place, running as the schema owner."""
        from ptool_ops import privileges

        refuse_pooler(self.url)
        run_id = uuid.uuid4().hex[:12]
        app_name = f"ptool-ops migrate {what} ({self.options.actor})"[:63]
        with run_lock(
            self.url, wait_s=self.options.run_lock_wait_s, application_name=app_name
        ) as work:
            work.execute(
                "SELECT set_config('lock_timeout', %s, false),"
                " set_config('statement_timeout', %s, false)",
                (f"{self.options.lock_timeout_ms}ms", f"{self.options.statement_timeout_ms}ms"),
            )
            gate = self.gate if what == "up" else None
            executor = Executor(work, self.options, self._log, self.on_event, gate)
            skip: tuple[str, ...] = () if self.options.invariants else ("read_all_rows",)
            if gate is None or not gate.needs_app_role:
                skip = (*skip, "probe_as_app")
            privileges.require(work, "migrate.run", skip=skip)
            # the history is made by the login on a fresh database (0001, run as the
            # login, gives it to the schema owner); everything else runs as the owner
            history.ensure_history(work)
            executor.become_owner()
            yield executor, run_id

    def _refuse_drift(self, report: history.StatusReport) -> None:
        interrupted = report.of(history.MigrationState.interrupted)
        if interrupted:
            first = interrupted[0]
            row = first.row
            assert row is not None
            what = "up" if row.outcome == history.RUNNING else "down"
            raise Refused(
                f"migration {first.label} was interrupted while its {what} script ran"
                f" statement by statement (run {row.run_id}, started"
                f" {row.applied_at.isoformat(timespec='seconds')}): some of its statements may"
                " have run and others not.",
                hint=f"Look at the schema, finish or undo {first.label} by hand, then record what"
                f" it is now: 'ptool-ops migrate repair {first.version} --accept --reason \"...\"'"
                f" (it is applied) or '... --forget ...' (it is not); then run again.",
            )
        if report.problems:
            first = report.problems[0]
            what = (
                f"its {', '.join(first.drift)} script changed since it was applied"
                if first.drift
                else "its files are missing"
            )
            raise Refused(
                f"migration {first.label} is {first.state.value}: {what}"
                + (f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else "")
                + "; the history no longer matches the files.",
                hint=f"Restore the files, or record a decision with 'ptool-ops migrate repair"
                f' {first.version} --accept|--forget --reason "..."\', then run again.',
            )

    def _take_point(self, executor: Executor, label: str) -> BackupPoint | None:
        if self.backup is None:
            return None
        plan = self.backup.plan(executor.conn)
        self._log(f"taking the backup point: {plan.reason}")
        point = self.backup.take(executor.conn, plan, label)
        self._log(f"backup point {point.label}; way back: {point.restore_command}")
        return point

    def resolve(self, version: str | None, *, allow_zero: bool = False) -> str | None:
        """``--to``: a known version (``3`` means ``0003``), else a usage error naming the
        known ones; ``0`` (when allowed) means before the first migration."""
        if version is None:
            return None
        known = [m.version for m in self.migrations()]
        text = version.strip()
        if allow_zero and text.isdigit() and int(text) == 0:
            return "0000"
        found = [v for v in known if text.isdigit() and int(v) == int(text)] or [
            v for v in known if v == text
        ]
        if not found:
            listed = ", ".join(known) or "none"
            raise UsageError(
                f"no migration {version!r} in {self.directory}: the known versions are"
                f" {listed}" + (" (or 0: before the first)" if allow_zero else "") + ".",
                hint="Pass one of them to --to.",
            )
        return found[0]

    @staticmethod
    def _up_scripts(pending: list[MigrationFiles]) -> list[Path]:
        """The scripts ``up`` may execute: each pending up and its down (the way back)."""
        return [p for m in pending for p in (m.up, m.down)]

    @staticmethod
    def _precheck(scripts: list[Path]) -> None:
        """Before the first statement: every script the run may execute parses, and no
        statement that cannot run in a transaction stands in a transactional file
        (:func:`ptool_ops.migrate.planning.script_problems`)."""
        from ptool_ops.migrate.planning import script_problems

        problems = script_problems(scripts)
        if problems:
            first = problems[0]
            raise Refused(f"{first.text}; nothing of this run was executed.", hint=first.hint)

    def _refuse_unexpected(
        self, direction: str, expect: list[str] | None, actual: list[str]
    ) -> None:
        if expect is not None and list(expect) != actual:
            verb = "apply" if direction == "up" else "revert"
            raise Refused(
                f"the migrations to {verb} changed since you confirmed them: you confirmed"
                f" {', '.join(expect) or 'none'}, the database now needs"
                f" {', '.join(actual) or 'none'}; nothing was changed.",
                hint="Someone else ran migrations meanwhile: run the command again to see and"
                " confirm the new list.",
            )

    def _stopped(
        self, err: PtoolError, result: RunResult, conn: Any, at: MigrationFiles
    ) -> PtoolError:
        """An error of the run, told with what the run committed before it."""
        done = [m for m in result.migrations if m.outcome in ("applied", "reverted")]
        current = None
        if not conn.broken:
            try:
                current = history.status(
                    self.migrations(), history.read_history(conn), str(self.directory)
                ).current
            except psycopg.Error:
                current = None
        err.details.update(
            {
                "direction": result.direction,
                "run_id": result.run_id,
                "committed": [m.version for m in done],
                "stopped_at": at.version,
                "current": current,
            }
        )
        if done:
            verb = "applied" if result.direction == "up" else "reverted"
            labels = ", ".join(f"{m.version}_{m.name}" for m in done)
            err.message = (
                f"{err.message.rstrip('.')}. Before {at.label}, this run {verb} and committed"
                f" {len(done)} migration(s): {labels}"
                + (f"; the database is at {current}." if current else ".")
            )
        return err

    def _lost(self, err: BaseException, at: MigrationFiles | None) -> ManualActionRequired:
        where = f" while it ran {at.label}" if at else ""
        return ManualActionRequired(
            f"the database session of this run ended{where} ({err}): it was terminated or"
            " the connection was lost, and the run lock with it. A transactional migration was"
            " rolled back by the server; a no-transaction one may be half-applied (its history"
            f" row then says '{history.RUNNING}' or '{history.REVERTING}').",
            hint="Check with 'ptool-ops migrate status' before anything else; an interrupted"
            " migration needs 'ptool-ops migrate repair VERSION --accept|--forget --reason ...'"
            " once you know what it left.",
        )

    @staticmethod
    def _to_apply(report: history.StatusReport, to: str | None) -> list[MigrationFiles]:
        return [
            s.migration
            for s in report.pending
            if s.migration is not None and (to is None or s.version <= to)
        ]

    @staticmethod
    def _to_revert(
        report: history.StatusReport, steps: int, to: str | None
    ) -> list[history.MigrationStatus]:
        applied = [s for s in report.migrations if s.state is not history.MigrationState.pending]
        targets = [s for s in applied if s.version > to] if to is not None else applied[-steps:]
        return list(reversed(targets))

    def would_apply(self, *, to: str | None = None) -> list[str]:
        """The versions ``up(to=...)`` would apply now (read only; for confirmation)."""
        return [m.version for m in self._to_apply(self.status(), self.resolve(to))]

    def would_revert(self, *, steps: int = 1, to: str | None = None) -> list[str]:
        """The versions ``down(...)`` would revert now, newest first (read only)."""
        report = self.status()
        return [
            s.version for s in self._to_revert(report, steps, self.resolve(to, allow_zero=True))
        ]

    def up(self, *, to: str | None = None, expect: list[str] | None = None) -> RunResult:
        """Apply the pending migrations (up to and including ``to``). ``expect``: the
        versions the caller confirmed; refused when the pending list differs under the lock."""
        migrations = self.migrations()
        to = self.resolve(to)
        with self._session("up") as (executor, run_id):
            conn = executor.conn
            result = RunResult("up", run_id)
            report = history.status(migrations, history.read_history(conn), str(self.directory))
            self._refuse_drift(report)
            pending = self._to_apply(report, to)
            self._refuse_unexpected("up", expect, [m.version for m in pending])
            if not pending:
                result.notes.append("nothing to apply: the database is up to date")
                if self.anchor_table:
                    ensure_anchor_table(conn)
                return result
            lint = self.lint(pending)
            result.lint = lint.to_dict()
            if self.options.lint and not lint.ok:
                first = lint.errors[0]
                raise Refused(
                    f"lint found {len(lint.errors)} error(s) in the pending migrations, first"
                    f" {first.rule} at {first.file}:{first.line}: {first.message}.",
                    hint="Apply the suggested fix (ptool-ops migrate lint shows them all), or"
                    " allow the rule in the file with '-- ptool: allow RULE -- reason: ...'.",
                )
            self._precheck(self._up_scripts(pending))
            fresh = not any(s.row is not None for s in report.migrations)
            at: MigrationFiles | None = None
            try:
                if fresh and not self.backup_if_fresh:
                    result.notes.append(
                        "no backup point: nothing was ever applied to this database"
                    )
                else:
                    with tracing.span("backup point"):
                        result.backup_point = self._take_point(
                            executor, f"up-{pending[-1].version}"
                        )
                baseline = executor.baseline()
                for m in pending:
                    at = m
                    prior = baseline
                    try:
                        with tracing.span(f"migration {m.label}", direction="up"):
                            done, baseline = executor.apply(
                                m,
                                up=True,
                                baseline=baseline,
                                run_id=run_id,
                                point=result.backup_point,
                            )
                        result.migrations.append(done)
                        if self.api_ready is not None:
                            problem = self.api_ready()
                            if problem is not None:
                                self._after_api_failure(
                                    executor, m, problem, run_id, result.backup_point, prior
                                )
                    except PtoolError as err:
                        raise self._stopped(err, result, conn, m) from None
                if self.anchor_table:
                    executor.become_owner()  # a migration may have run as the login
                    ensure_anchor_table(conn)
            except (SessionLost, psycopg.OperationalError) as err:
                if not conn.broken and isinstance(err, psycopg.OperationalError):
                    raise
                raise self._lost(err, at) from None
            return result

    def _after_api_failure(
        self,
        executor: Executor,
        m: MigrationFiles,
        problem: str,
        run_id: str,
        point: BackupPoint | None,
        baseline: Any | None,
    ) -> None:
        assert self.api_ready is not None
        self._log(f"the API is not ready after {m.label}: {problem}; rolling back")
        try:
            executor.apply(m, up=False, baseline=baseline, run_id=run_id, point=point)
        except PtoolError as err:
            raise manual(
                f"the API was not ready after {m.label} ({problem}) and its down failed:"
                f" {err.message}",
                point,
            ) from None
        ready_again = self.api_ready()
        if ready_again is not None:
            raise manual(
                f"the API was not ready after {m.label} ({problem}); the migration was"
                f" rolled back with its down script but the API is still not ready"
                f" ({ready_again}), so the migration may not be the cause",
                point,
                neither=False,
            )
        raise OperationFailed(
            f"the API was not ready after {m.label}: {problem}; the migration was rolled"
            " back with its down script and the API is ready again.",
            hint="Find out why the API failed with the new schema before applying it again.",
        )

    def down(
        self, *, steps: int = 1, to: str | None = None, expect: list[str] | None = None
    ) -> RunResult:
        """Revert the last ``steps`` applied migrations, or all applied after ``to`` (``0``:
        every one). ``expect``: the versions the caller confirmed, newest first; refused when
        the list differs under the lock."""
        from ptool_ops.migrate.execution import is_irreversible
        from ptool_ops.migrate.lint import down_is_empty

        migrations = self.migrations()
        to = self.resolve(to, allow_zero=True)
        with self._session("down") as (executor, run_id):
            conn = executor.conn
            result = RunResult("down", run_id)
            report = history.status(migrations, history.read_history(conn), str(self.directory))
            self._refuse_drift(
                history.StatusReport(
                    report.directory, report.of(history.MigrationState.interrupted)
                )
            )
            targets = self._to_revert(report, steps, to)
            self._refuse_unexpected("down", expect, [s.version for s in targets])
            if not targets:
                result.notes.append("nothing to revert")
                return result
            for s in targets:
                if s.state is not history.MigrationState.applied:
                    self._refuse_drift(history.StatusReport(report.directory, [s]))
                assert s.migration is not None
                if is_irreversible(s.migration):
                    raise Refused(
                        f"migration {s.label} is irreversible (its down script says so); nothing"
                        " was reverted.",
                        hint="Go back with the backup point taken before it was applied (its"
                        " history row names it), or write a new migration that undoes it.",
                    )
                down_text = s.migration.down.read_text(encoding="utf-8")
                if down_is_empty(down_text, str(s.migration.down)):
                    raise Refused(
                        f"the down script of {s.label} holds no statement, so reverting it would"
                        " change nothing; nothing was reverted.",
                        hint="Write the statements that undo it, or declare it"
                        " '-- ptool: irreversible -- reason: ...' in its down script.",
                    )
            self._precheck([s.migration.down for s in targets if s.migration is not None])
            at: MigrationFiles | None = None
            try:
                with tracing.span("backup point"):
                    result.backup_point = self._take_point(executor, f"down-{targets[-1].version}")
                baseline = executor.baseline()
                for s in targets:
                    assert s.migration is not None
                    at = s.migration
                    try:
                        with tracing.span(f"migration {s.migration.label}", direction="down"):
                            done, baseline = executor.apply(
                                s.migration,
                                up=False,
                                baseline=baseline,
                                run_id=run_id,
                                point=result.backup_point,
                            )
                    except PtoolError as err:
                        raise self._stopped(err, result, conn, s.migration) from None
                    result.migrations.append(done)
            except (SessionLost, psycopg.OperationalError) as err:
                if not conn.broken and isinstance(err, psycopg.OperationalError):
                    raise
                raise self._lost(err, at) from None
            return result

    def verify(self) -> VerifyReport:
        """Run the verify script of every applied migration and the invariants (read only)."""
        results: list[dict[str, Any]] = []
        with pg.connect(self.url) as conn:
            report = self._read(conn, "migrate.verify")
            for s in report.migrations:
                if s.state is history.MigrationState.pending or s.migration is None:
                    continue
                if s.migration.verify is None:
                    results.append(
                        {
                            "version": s.version,
                            "name": s.name,
                            "ok": True,
                            "detail": "no verify script",
                        }
                    )
                    continue
                try:
                    with conn.transaction(force_rollback=True):
                        conn.execute("SET TRANSACTION READ ONLY")
                        run_verify(
                            conn, s.migration.verify.read_text(encoding="utf-8"), label=s.label
                        )
                    results.append(_verified(s, True, "verified"))
                except (MigrationError, psycopg.Error) as err:
                    results.append(
                        {
                            "version": s.version,
                            "name": s.name,
                            "ok": False,
                            "detail": str(err).strip(),
                        }
                    )
            invariants = None
            if self.options.invariants:
                from ptool_ops.booking.invariants import run_invariants

                invariants = run_invariants(conn).to_dict()
        return VerifyReport(results, invariants)

    def repair(self, version: str, *, action: str, reason: str) -> history.MigrationStatus:
        """Record an operator's decision on a drifted or missing migration
        (:mod:`ptool_ops.migrate.repair`)."""
        from ptool_ops.migrate.repair import record_decision

        if not reason.strip():
            raise ConfigError("repair needs a --reason: it is recorded in the history.")
        migrations = self.migrations()
        with self._session("repair") as (executor, run_id):
            return record_decision(
                executor,
                migrations,
                str(self.directory),
                version,
                action=action,
                reason=reason,
                run_id=run_id,
            )
