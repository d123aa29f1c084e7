"""The migration runner: status, plan, up, down, verify, repair.

``up`` is a fixed sequence (the step is named in errors):

1. refuse a Neon pooled host; take the run lock (:mod:`ptool_ops.migrate.lock`);
2. read the history; refuse drift (a changed script, a missing file) until ``repair``;
3. lint the pending migrations: errors not allowed in their file block the run;
4. take the backup point (:mod:`ptool_ops.migrate.backup_point`) unless told not to;
5. per migration, with ``lock_timeout``/``statement_timeout`` set on the session:

   * transactional: every statement, the verify script, the booking invariants (no new
     violations) and the history row in ONE transaction; a lock timeout (55P03, only)
     rolls it back and retries it with exponential back-off and jitter, so locks
     already taken are released while waiting;
   * ``no-transaction``: statements one by one (a lock timeout retries that statement,
     after dropping any invalid index it left); then verify + invariants + history in
     one transaction. On failure: drop invalid indexes left behind, run the down script
     statement by statement (objects that were never created are skipped), drop
     invalid indexes again and re-validate (catalog equal to before, no new invariant
     violations). Clean: :class:`OperationFailed` (exit 8). Not clean:
     :class:`ManualActionRequired` (exit 9) naming the command that returns to the
     backup point;

6. after each commit, when the environment has an API: wait for its readiness; an API
   that is not ready sends the migration down the same rollback path.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import SecretStr

from ptool_ops import pg
from ptool_ops.booking.schema import (
    HISTORY_TABLE,
    MIGRATIONS_DIR,
    MigrationError,
    MigrationFiles,
    load_migrations,
    run_verify,
)
from ptool_ops.errors import (
    ConfigError,
    ManualActionRequired,
    OperationFailed,
    PtoolError,
    Refused,
)
from ptool_ops.migrate import history
from ptool_ops.migrate.backup_point import BackupKind, BackupPlan, BackupPoint
from ptool_ops.migrate.lock import refuse_pooler, run_lock

if TYPE_CHECKING:
    from ptool_ops.settings import EnvironmentSettings

__all__ = [
    "MigrationResult",
    "Plan",
    "RunOptions",
    "RunResult",
    "Runner",
    "VerifyReport",
    "new_violations",
    "runner_for",
]

#: SQLSTATEs a down script may hit after a partial up: the object was never created.
_NEVER_CREATED = frozenset({"42704", "42P01", "42703", "42883", "3F000", "42P06"})

_UPSERT = sql.SQL(
    "INSERT INTO {} (version, name, checksum, down_checksum, verify_checksum, applied_at,"
    " applied_by, duration_ms, outcome, backup_point, run_id, note, transactional)"
    " VALUES (%s, %s, %s, %s, %s, now(), %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name,"
    " checksum = EXCLUDED.checksum, down_checksum = EXCLUDED.down_checksum,"
    " verify_checksum = EXCLUDED.verify_checksum, applied_at = now(),"
    " applied_by = EXCLUDED.applied_by, duration_ms = EXCLUDED.duration_ms,"
    " outcome = EXCLUDED.outcome, backup_point = EXCLUDED.backup_point,"
    " run_id = EXCLUDED.run_id, note = EXCLUDED.note, transactional = EXCLUDED.transactional"
).format(sql.SQL(HISTORY_TABLE))

_INVALID_INDEXES = """
SELECT format('%I.%I', n.nspname, c.relname)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT i.indisvalid OR NOT i.indisready
"""


@dataclass(frozen=True)
class RunOptions:
    lock_timeout_ms: int = 2000
    statement_timeout_ms: int = 3_600_000
    lock_retries: int = 5  # retries after the first attempt
    retry_initial_s: float = 0.5
    retry_max_s: float = 8.0
    run_lock_wait_s: float = 30.0
    api_ready_timeout_s: float = 30.0
    invariants: bool = True
    lint: bool = True  # lint errors block up (migrate test reports them instead)
    actor: str = "ptool-ops"


@dataclass
class MigrationResult:
    version: str
    name: str
    direction: str  # up | down
    outcome: str  # applied | reverted | failed
    transactional: bool
    duration_ms: int = 0
    attempts: int = 1
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
class StatementInfo:
    line: int
    text: str
    locks: list[dict[str, Any]]
    opaque: bool
    non_transactional: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PlannedMigration:
    version: str
    name: str
    transactional: bool
    statements: list[StatementInfo]
    findings: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "transactional": self.transactional,
            "statements": [s.to_dict() for s in self.statements],
            "findings": self.findings,
        }


@dataclass
class Plan:
    directory: str
    status: history.StatusReport
    pending: list[PlannedMigration]
    backup: BackupPlan | None
    blocked: list[str]  # why up would refuse (drift, lint errors)
    options: RunOptions

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "current": self.status.current,
            "pending": [p.to_dict() for p in self.pending],
            "backup_point": self.backup.to_dict() if self.backup else None,
            "blocked": self.blocked,
            "lock_timeout_ms": self.options.lock_timeout_ms,
            "statement_timeout_ms": self.options.statement_timeout_ms,
            "lock_retries": self.options.lock_retries,
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


class _Failed(Exception):
    """A step of one migration failed (internal; turned into an operator error)."""


def _label(m: MigrationFiles) -> str:
    return f"{m.version}_{m.name}"


def _is_missing(result: Any) -> bool:
    """An invariant check that does not apply yet: its schema or table does not exist."""
    violations = result.violations
    return (
        result.total == 1
        and len(violations) == 1
        and set(violations[0].ref) <= {"schema", "table"}
        and "does not exist" in violations[0].detail
    )


def new_violations(before: Any | None, after: Any) -> list[str]:
    """Invariant checks that got worse: more violations than before (a check whose tables
    do not exist does not apply)."""
    problems = []
    for result in after.results:
        if result.ok or _is_missing(result):
            continue
        prev_total = 0
        if before is not None:
            prev = before.result(result.name)
            prev_total = 0 if _is_missing(prev) else prev.total
        if result.total > prev_total:
            first = result.violations[0].detail if result.violations else "?"
            problems.append(
                f"{result.name}: {result.total} violation(s), {prev_total} before ({first})"
            )
    return problems


class Runner:
    """Runs the migrations of ``directory`` against the database at ``url``.

    ``settings`` (optional) gives the backup point and the API readiness check;
    ``take_backup=False`` skips the backup point; ``backup_if_fresh=False`` skips it only
    when nothing was ever applied (a fresh database has nothing to lose);
    ``check_api=False`` skips readiness (an API that starts after the migrations).
    """

    def __init__(
        self,
        url: SecretStr | str,
        *,
        directory: Path = MIGRATIONS_DIR,
        options: RunOptions | None = None,
        settings: EnvironmentSettings | None = None,
        take_backup: bool = True,
        backup_if_fresh: bool = True,
        check_api: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.directory = directory
        self.options = options or RunOptions()
        self.settings = settings
        self.take_backup = take_backup and settings is not None
        self.backup_if_fresh = backup_if_fresh
        self.check_api = check_api and settings is not None
        self._log = log or (lambda message: None)

    # --- reading -------------------------------------------------------------------------

    def migrations(self) -> list[MigrationFiles]:
        try:
            return load_migrations(self.directory)
        except ValueError as err:
            raise ConfigError(str(err).rstrip(".") + ".") from None

    def status(self) -> history.StatusReport:
        migrations = self.migrations()
        with pg.connect(self.url) as conn:
            rows = history.read_history(conn)
        return history.status(migrations, rows, str(self.directory))

    def lint(self, pending: list[MigrationFiles]) -> Any:
        """Lint every up script in order (tenant tables carry over) and keep the findings of
        ``pending``."""
        from ptool_ops.migrate.lint import LintReport, lint_paths

        migrations = self.migrations()
        report = lint_paths([m.up for m in migrations])
        wanted = {str(m.up) for m in pending}
        return LintReport(
            files=[f for f in report.files if f in wanted],
            findings=[f for f in report.findings if f.file in wanted],
        )

    def backup_plan(self, conn: psycopg.Connection[Any]) -> BackupPlan:
        if not self.take_backup:
            return BackupPlan(BackupKind.none, "no backup point (not requested)")
        from ptool_ops.migrate.backup_point import choose

        assert self.settings is not None
        return choose(self.settings, conn)

    def plan(self) -> Plan:
        from ptool_ops.migrate.lint import parse_directives
        from ptool_ops.migrate.locks import SqlSyntaxError, plan_statements

        refuse_pooler(self.url)
        migrations = self.migrations()
        with pg.connect(self.url) as conn:
            report = history.status(migrations, history.read_history(conn), str(self.directory))
            pending = [s.migration for s in report.pending if s.migration is not None]
            backup = self.backup_plan(conn) if pending else None
        lint = self.lint(pending)
        blocked = [
            f"{s.label}: {s.state.value}" + (f" ({', '.join(s.drift)})" if s.drift else "")
            for s in report.problems
        ]
        blocked += [f"{f.file}:{f.line}: lint error {f.rule}" for f in lint.errors]
        planned = []
        for m in pending:
            text = m.up.read_text(encoding="utf-8")
            try:
                plans = plan_statements(text, path=str(m.up))
            except SqlSyntaxError:
                plans = []
            statements = [
                StatementInfo(
                    line=p.statement.line,
                    text=" ".join(p.statement.text.split())[:160],
                    locks=[
                        {
                            "table": lk.table,
                            "mode": lk.mode.value,
                            "blocks_writes": lk.mode.blocks_writes,
                            "blocks_reads": lk.mode.blocks_reads,
                            "rewrites": lk.rewrites,
                            "scans": lk.scans,
                            "new_table": lk.new_table,
                        }
                        for lk in p.locks
                    ],
                    opaque=p.opaque,
                    non_transactional=p.non_transactional,
                )
                for p in plans
            ]
            planned.append(
                PlannedMigration(
                    m.version,
                    m.name,
                    not parse_directives(text).no_transaction,
                    statements,
                    [f.to_dict() for f in lint.findings if f.file == str(m.up)],
                )
            )
        return Plan(str(self.directory), report, planned, backup, blocked, self.options)

    # --- running -------------------------------------------------------------------------

    @contextmanager
    def _session(self, what: str) -> Iterator[tuple[psycopg.Connection[Any], str]]:
        refuse_pooler(self.url)
        run_id = uuid.uuid4().hex[:12]
        app_name = f"ptool-ops migrate {what} ({self.options.actor})"[:63]
        with run_lock(self.url, wait_s=self.options.run_lock_wait_s, application_name=app_name):
            work = pg.connect(self.url)
            try:
                work.execute("SELECT set_config('application_name', %s, false)", (app_name,))
                work.execute(
                    "SELECT set_config('lock_timeout', %s, false),"
                    " set_config('statement_timeout', %s, false)",
                    (f"{self.options.lock_timeout_ms}ms", f"{self.options.statement_timeout_ms}ms"),
                )
                try:
                    history.ensure_history(work)
                except psycopg.errors.InsufficientPrivilege as err:
                    raise ConfigError(
                        f"this login may not create or extend {HISTORY_TABLE}:"
                        f" {err.diag.message_primary}.",
                        hint="Run migrations as the schema owner or a superuser.",
                    ) from None
                yield work, run_id
            finally:
                work.close()

    def _retrying(self, what: str) -> Any:
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        def before_sleep(state: Any) -> None:
            wait = state.next_action.sleep if state.next_action else 0
            self._log(
                f"{what}: lock not available within {self.options.lock_timeout_ms} ms"
                f" (attempt {state.attempt_number}); retrying in {wait:.1f} s"
            )

        return Retrying(
            retry=retry_if_exception_type(pg_errors.LockNotAvailable),
            stop=stop_after_attempt(self.options.lock_retries + 1),
            wait=wait_exponential_jitter(
                multiplier=self.options.retry_initial_s,
                max=self.options.retry_max_s,
                jitter=self.options.retry_initial_s,
            ),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _statements(self, path: Path) -> list[Any]:
        from ptool_ops.migrate.locks import split_statements

        return split_statements(path.read_text(encoding="utf-8"), path=str(path))

    @staticmethod
    def _execute(conn: psycopg.Connection[Any], stmt: Any, path: Path) -> None:
        try:
            conn.execute(stmt.text)
        except pg_errors.LockNotAvailable:
            raise
        except psycopg.Error as err:
            state = err.sqlstate or "?"
            message = (err.diag.message_primary or str(err)).strip()
            raise _Failed(f"{path.name}:{stmt.line}: {message} (SQLSTATE {state})") from err

    def _validate(
        self, conn: psycopg.Connection[Any], baseline: Any | None, m: MigrationFiles, up: bool
    ) -> Any | None:
        """Verify (up only) and invariants, inside the caller's transaction."""
        if up and m.verify is not None:
            try:
                run_verify(conn, m.verify.read_text(encoding="utf-8"), label=_label(m))
            except MigrationError as err:
                raise _Failed(str(err)) from err
            except psycopg.Error as err:
                raise _Failed(f"verify script of {_label(m)} failed: {err}") from err
        if not self.options.invariants:
            return None
        from ptool_ops.booking.invariants import InvariantsUnavailable, run_invariants

        try:
            report = run_invariants(conn)
        except InvariantsUnavailable as err:
            raise _Failed(f"the booking invariants cannot be checked: {err}") from err
        problems = new_violations(baseline, report)
        if problems:
            raise _Failed("booking invariants broken: " + "; ".join(problems))
        return report

    def _baseline(self, conn: psycopg.Connection[Any]) -> Any | None:
        if not self.options.invariants:
            return None
        from ptool_ops.booking.invariants import InvariantsUnavailable, run_invariants

        try:
            return run_invariants(conn)
        except InvariantsUnavailable as err:
            raise ConfigError(
                f"the booking invariants cannot be checked with this login: {err}",
                hint="Run migrations as the schema owner or a superuser.",
            ) from None

    def _record(
        self,
        conn: psycopg.Connection[Any],
        m: MigrationFiles,
        *,
        outcome: str,
        duration_ms: int,
        run_id: str,
        point: BackupPoint | None,
        transactional: bool,
        note: str | None = None,
    ) -> None:
        sums = history.file_checksums(m)
        role = conn.execute("SELECT current_user").fetchone()
        conn.execute(
            _UPSERT,
            (
                m.version,
                m.name,
                sums.up,
                sums.down,
                sums.verify,
                f"{self.options.actor} ({role[0] if role else '?'})",
                duration_ms,
                outcome,
                point.label if point else None,
                run_id,
                note,
                transactional,
            ),
        )

    def _invalid_indexes(self, conn: psycopg.Connection[Any]) -> set[str]:
        return {str(row[0]) for row in conn.execute(_INVALID_INDEXES).fetchall()}

    def _drop_new_invalid(self, conn: psycopg.Connection[Any], before: set[str]) -> list[str]:
        dropped = []
        for name in sorted(self._invalid_indexes(conn) - before):
            schema, _, index = name.partition(".")
            self._log(f"dropping invalid index {name} left by a failed build")
            for attempt in self._retrying(f"DROP INDEX CONCURRENTLY {name}"):
                with attempt:
                    conn.execute(
                        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                            sql.Identifier(schema.strip('"')), sql.Identifier(index.strip('"'))
                        )
                    )
            dropped.append(name)
        return dropped

    def _transactional(
        self,
        conn: psycopg.Connection[Any],
        m: MigrationFiles,
        *,
        up: bool,
        baseline: Any | None,
        run_id: str,
        point: BackupPoint | None,
        result: MigrationResult,
    ) -> Any | None:
        script = m.up if up else m.down
        statements = self._statements(script)
        report: Any | None = None
        started = time.monotonic()
        for attempt in self._retrying(f"{_label(m)} ({'up' if up else 'down'})"):
            with attempt:
                result.attempts = attempt.retry_state.attempt_number
                with conn.transaction():
                    for stmt in statements:
                        self._execute(conn, stmt, script)
                    report = self._validate(conn, baseline, m, up)
                    self._record(
                        conn,
                        m,
                        outcome="applied" if up else "reverted",
                        duration_ms=round((time.monotonic() - started) * 1000),
                        run_id=run_id,
                        point=point,
                        transactional=True,
                    )
        result.duration_ms = round((time.monotonic() - started) * 1000)
        return report

    def _run_one_by_one(
        self, conn: psycopg.Connection[Any], path: Path, invalid_before: set[str], *, down: bool
    ) -> None:
        for stmt in self._statements(path):
            for attempt in self._retrying(f"{path.name}:{stmt.line}"):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._drop_new_invalid(conn, invalid_before)
                    try:
                        self._execute(conn, stmt, path)
                    except _Failed as err:
                        cause = err.__cause__
                        if (
                            down
                            and isinstance(cause, psycopg.Error)
                            and cause.sqlstate in _NEVER_CREATED
                        ):
                            self._log(f"{err} -- skipped: never created")
                            continue
                        raise

    def _no_transaction(
        self,
        conn: psycopg.Connection[Any],
        m: MigrationFiles,
        *,
        up: bool,
        baseline: Any | None,
        run_id: str,
        point: BackupPoint | None,
        result: MigrationResult,
    ) -> Any | None:
        from ptool_ops.migrate.catalog import snapshot

        before = snapshot(conn, exclude_schemas=("ptool_ops",))
        invalid_before = self._invalid_indexes(conn)
        started = time.monotonic()
        script = m.up if up else m.down
        try:
            self._run_one_by_one(conn, script, invalid_before, down=not up)
            with conn.transaction():
                report = self._validate(conn, baseline, m, up)
                self._record(
                    conn,
                    m,
                    outcome="applied" if up else "reverted",
                    duration_ms=round((time.monotonic() - started) * 1000),
                    run_id=run_id,
                    point=point,
                    transactional=False,
                )
        except (_Failed, pg_errors.LockNotAvailable) as err:
            result.duration_ms = round((time.monotonic() - started) * 1000)
            reason = self._reason(err)
            if not up:
                raise self._manual(
                    f"down script of {_label(m)} failed halfway: {reason}", point
                ) from None
            self._recover(conn, m, before, invalid_before, baseline, reason, point)
        result.duration_ms = round((time.monotonic() - started) * 1000)
        return report

    def _reason(self, err: BaseException) -> str:
        if isinstance(err, pg_errors.LockNotAvailable):
            return (
                f"a lock was not available within {self.options.lock_timeout_ms} ms after"
                f" {self.options.lock_retries + 1} attempts"
            )
        return str(err)

    def _manual(
        self, what: str, point: BackupPoint | None, *, neither: bool = True
    ) -> ManualActionRequired:
        state = "; the schema is in neither state" if neither else ""
        if point is None:
            return ManualActionRequired(
                f"{what}{state} and no backup point was taken.",
                hint="Inspect the schema, finish or undo the migration by hand, then record"
                " the decision with 'ptool-ops migrate repair'.",
            )
        return ManualActionRequired(
            f"{what}{state}. Return to the backup point taken"
            f" before the run ({point.label}) with: {point.restore_command}",
            hint=f"Return to the backup point: {point.restore_command}",
        )

    def _recover(
        self,
        conn: psycopg.Connection[Any],
        m: MigrationFiles,
        before: dict[str, Any],
        invalid_before: set[str],
        baseline: Any | None,
        reason: str,
        point: BackupPoint | None,
    ) -> None:
        """Undo a failed no-transaction migration; always raises."""
        from ptool_ops.migrate.catalog import diff, snapshot

        self._log(f"{_label(m)} failed ({reason}); rolling back with its down script")
        try:
            self._drop_new_invalid(conn, invalid_before)
            self._run_one_by_one(conn, m.down, invalid_before, down=True)
            self._drop_new_invalid(conn, invalid_before)
            changes = diff(before, snapshot(conn, exclude_schemas=("ptool_ops",)))
            if changes:
                raise _Failed(
                    "after its down script the schema still differs from before in "
                    + ", ".join(sorted(changes))
                )
            with conn.transaction():
                if self.options.invariants:
                    self._validate(conn, baseline, m, up=False)
        except (_Failed, pg_errors.LockNotAvailable, psycopg.Error) as err:
            raise self._manual(
                f"{_label(m)} failed ({reason}) and its rollback failed too: {self._reason(err)}",
                point,
            ) from None
        raise OperationFailed(
            f"{_label(m)} failed: {reason}; it was rolled back with its down script and the"
            " schema is as before.",
            hint="Fix the migration and run 'ptool-ops migrate up' again.",
        )

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        m: MigrationFiles,
        *,
        up: bool,
        baseline: Any | None,
        run_id: str,
        point: BackupPoint | None,
    ) -> tuple[MigrationResult, Any | None]:
        from ptool_ops.migrate.lint import parse_directives

        script = m.up if up else m.down
        transactional = not parse_directives(script.read_text(encoding="utf-8")).no_transaction
        result = MigrationResult(m.version, m.name, "up" if up else "down", "failed", transactional)
        self._log(f"{'applying' if up else 'reverting'} {_label(m)}")
        if transactional:
            try:
                report = self._transactional(
                    conn, m, up=up, baseline=baseline, run_id=run_id, point=point, result=result
                )
            except (_Failed, pg_errors.LockNotAvailable) as err:
                raise OperationFailed(
                    f"{_label(m)} ({'up' if up else 'down'}) failed: {self._reason(err)};"
                    " its transaction was rolled back, nothing changed.",
                    hint="Fix the migration (or wait for the blocking session) and run the"
                    " command again.",
                ) from None
        else:
            report = self._no_transaction(
                conn, m, up=up, baseline=baseline, run_id=run_id, point=point, result=result
            )
        result.outcome = "applied" if up else "reverted"
        return result, report

    def _api_ready(self) -> str | None:
        """None when ready or there is no API; else the reason it is not."""
        from ptool_ops.booking.api import BookingApi
        from ptool_ops.errors import ServiceUnavailable
        from ptool_ops.targets import api_endpoint

        assert self.settings is not None
        try:
            url, token = api_endpoint(self.settings)
        except ConfigError:
            return None
        except ServiceUnavailable as err:
            if self.settings is not None and self.settings.is_local:
                self._log(f"API readiness not checked: {err.message}")
                return None
            return err.message
        with BookingApi(url, token) as api:
            try:
                api.wait_ready(self.options.api_ready_timeout_s)
            except ServiceUnavailable as err:
                return err.message.rstrip(".")
        return None

    def _take_point(self, conn: psycopg.Connection[Any], label: str) -> BackupPoint | None:
        if not self.take_backup:
            return None
        from ptool_ops.migrate.backup_point import take

        assert self.settings is not None
        plan = self.backup_plan(conn)
        self._log(f"taking the backup point: {plan.reason}")
        point = take(self.settings, conn, plan, label=label)
        self._log(f"backup point {point.label}; way back: {point.restore_command}")
        return point

    def _refuse_drift(self, report: history.StatusReport) -> None:
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

    def up(self, *, to: str | None = None) -> RunResult:
        """Apply the pending migrations (up to and including ``to``)."""
        migrations = self.migrations()
        with self._session("up") as (conn, run_id):
            result = RunResult("up", run_id)
            report = history.status(migrations, history.read_history(conn), str(self.directory))
            self._refuse_drift(report)
            pending = [
                s.migration
                for s in report.pending
                if s.migration is not None and (to is None or s.version <= to)
            ]
            if not pending:
                result.notes.append("nothing to apply: the database is up to date")
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
            fresh = not any(s.row is not None for s in report.migrations)
            if fresh and not self.backup_if_fresh:
                result.notes.append("no backup point: nothing was ever applied to this database")
            else:
                result.backup_point = self._take_point(conn, f"up-{pending[-1].version}")
            baseline = self._baseline(conn)
            for m in pending:
                prior = baseline
                done, baseline = self._apply(
                    conn, m, up=True, baseline=baseline, run_id=run_id, point=result.backup_point
                )
                result.migrations.append(done)
                if self.check_api:
                    problem = self._api_ready()
                    if problem is not None:
                        self._after_api_failure(
                            conn, m, problem, run_id, result.backup_point, prior
                        )
            return result

    def _after_api_failure(
        self,
        conn: psycopg.Connection[Any],
        m: MigrationFiles,
        problem: str,
        run_id: str,
        point: BackupPoint | None,
        baseline: Any | None,
    ) -> None:
        self._log(f"the API is not ready after {_label(m)}: {problem}; rolling back")
        try:
            self._apply(conn, m, up=False, baseline=baseline, run_id=run_id, point=point)
        except PtoolError as err:
            raise self._manual(
                f"the API was not ready after {_label(m)} ({problem}) and its down failed:"
                f" {err.message}",
                point,
            ) from None
        ready_again = self._api_ready()
        if ready_again is not None:
            raise self._manual(
                f"the API was not ready after {_label(m)} ({problem}); the migration was"
                f" rolled back with its down script but the API is still not ready"
                f" ({ready_again}), so the migration may not be the cause",
                point,
                neither=False,
            )
        raise OperationFailed(
            f"the API was not ready after {_label(m)}: {problem}; the migration was rolled"
            " back with its down script and the API is ready again.",
            hint="Find out why the API failed with the new schema before applying it again.",
        )

    def down(self, *, steps: int = 1, to: str | None = None) -> RunResult:
        """Revert the last ``steps`` applied migrations, or all applied after ``to``."""
        migrations = self.migrations()
        with self._session("down") as (conn, run_id):
            result = RunResult("down", run_id)
            report = history.status(migrations, history.read_history(conn), str(self.directory))
            applied = [
                s for s in report.migrations if s.state is not history.MigrationState.pending
            ]
            targets = [s for s in applied if s.version > to] if to is not None else applied[-steps:]
            targets.reverse()
            if not targets:
                result.notes.append("nothing to revert")
                return result
            for s in targets:
                if s.state is not history.MigrationState.applied:
                    self._refuse_drift(history.StatusReport(report.directory, [s]))
            result.backup_point = self._take_point(conn, f"down-{targets[-1].version}")
            baseline = self._baseline(conn)
            for s in targets:
                assert s.migration is not None
                done, baseline = self._apply(
                    conn,
                    s.migration,
                    up=False,
                    baseline=baseline,
                    run_id=run_id,
                    point=result.backup_point,
                )
                result.migrations.append(done)
            return result

    def verify(self) -> VerifyReport:
        """Run the verify script of every applied migration and the invariants (read only)."""
        migrations = self.migrations()
        results: list[dict[str, Any]] = []
        with pg.connect(self.url) as conn:
            report = history.status(migrations, history.read_history(conn), str(self.directory))
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
                            conn,
                            s.migration.verify.read_text(encoding="utf-8"),
                            label=s.label,
                        )
                    results.append(
                        {"version": s.version, "name": s.name, "ok": True, "detail": "verified"}
                    )
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
        """Record an operator's decision on a drifted or missing migration.

        ``accept``: the files as they are now are what was applied (re-hash).
        ``forget``: the migration is no longer applied (its row becomes ``forgotten``).
        """
        if not reason.strip():
            raise ConfigError("repair needs a --reason: it is recorded in the history.")
        migrations = self.migrations()
        with self._session("repair") as (conn, run_id):
            report = history.status(migrations, history.read_history(conn), str(self.directory))
            found = [s for s in report.migrations if s.version == version]
            if not found or found[0].row is None or found[0].row.outcome != "applied":
                raise ConfigError(
                    f"migration {version} is not recorded as applied; nothing to repair.",
                    hint="'ptool-ops migrate status' lists what the history holds.",
                )
            s = found[0]
            note = f"repair {action} by {self.options.actor}: {reason.strip()}"
            with conn.transaction():
                if action == "accept":
                    if s.migration is None:
                        raise ConfigError(
                            f"migration {version} has no files to accept; use --forget."
                        )
                    self._record(
                        conn,
                        s.migration,
                        outcome="applied",
                        duration_ms=s.row.duration_ms if s.row and s.row.duration_ms else 0,
                        run_id=run_id,
                        point=None,
                        transactional=True,
                        note=note,
                    )
                    conn.execute(
                        sql.SQL("UPDATE {} SET applied_at = %s WHERE version = %s").format(
                            sql.SQL(HISTORY_TABLE)
                        ),
                        (s.row.applied_at if s.row else None, version),
                    )
                elif action == "forget":
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET outcome = 'forgotten', note = %s, run_id = %s"
                            " WHERE version = %s"
                        ).format(sql.SQL(HISTORY_TABLE)),
                        (note, run_id, version),
                    )
                else:
                    raise ValueError(f"unknown repair action {action!r}")
            rows = history.read_history(conn)
            after = history.status(migrations, rows, str(self.directory))
        return next(
            (m for m in after.migrations if m.version == version),
            history.MigrationStatus(
                version, s.name, history.MigrationState.pending, None, rows.get(version)
            ),
        )


def runner_for(
    settings: EnvironmentSettings,
    *,
    directory: Path | None = None,
    take_backup: bool = True,
    check_api: bool = True,
    invariants: bool = True,
    log: Callable[[str], None] | None = None,
) -> Runner:
    """A runner for an environment: its database URL, migrations dir and runner settings."""
    from ptool_ops.audit import actor
    from ptool_ops.targets import database_url

    options = RunOptions(
        lock_timeout_ms=settings.lock_timeout_ms,
        statement_timeout_ms=settings.statement_timeout_ms,
        lock_retries=settings.lock_retries,
        run_lock_wait_s=settings.migrate_lock_wait_s,
        api_ready_timeout_s=settings.api_ready_timeout_s,
        invariants=invariants,
        actor=actor(),
    )
    return Runner(
        database_url(settings),
        directory=directory or settings.migrations_dir or MIGRATIONS_DIR,
        options=options,
        settings=settings,
        take_backup=take_backup,
        check_api=check_api,
        log=log,
    )
