"""Running one migration: the two executors and the rollback of a failed no-transaction one.

* transactional: every statement, the verify script, the booking invariants (no new
  violations) and the history row in ONE transaction; a lock timeout (55P03, only) rolls it
  back and retries it with exponential back-off and jitter, so locks already taken are
  released while waiting;
* ``no-transaction``: statements one by one (a lock timeout retries that statement, after
  dropping any invalid index it left); then verify + invariants + history in one
  transaction. On failure: drop invalid indexes left behind, run the down script statement
  by statement (objects that were never created are skipped), drop invalid indexes again
  and re-validate (catalog equal to before, no new invariant violations). Clean:
  :class:`OperationFailed` (exit 8). Not clean: :class:`ManualActionRequired` (exit 9)
  naming the command that returns to the backup point.

Migrations run as the schema owner of the privilege model: the :class:`Executor` switches
to it with ``SET ROLE`` when the login is a member of it (the operator), except for a file
marked ``-- ptool: run-as login`` (0001, which creates roles and needs the login's
CREATEROLE).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ptool_ops.errors import ConfigError, ManualActionRequired, OperationFailed, PermissionDenied
from ptool_ops.migrate import history
from ptool_ops.migrate.files import MigrationError, MigrationFiles, run_verify
from ptool_ops.privileges.model import SCHEMA_OWNER

if TYPE_CHECKING:
    from ptool_ops.migrate.backup_point import BackupPoint
    from ptool_ops.migrate.compat import Gate

__all__ = ["Executor", "MigrationResult", "RunOptions", "new_violations"]

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
).format(sql.SQL(history.HISTORY_TABLE))

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
    #: the role migrations run as (None: the login itself); see the module docstring
    schema_owner: str | None = SCHEMA_OWNER


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
    #: the compatibility gate's report (:mod:`ptool_ops.migrate.compat`), for an up
    compatibility: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Failed(Exception):
    """A step of one migration failed (turned into an operator error by the caller)."""


class PrivilegeFailure(Failed):
    """A statement was refused for a missing privilege (SQLSTATE 42501)."""


class Incompatible(Failed):
    """The compatibility gate found captured API statements the migration breaks."""


class SessionLost(Exception):
    """The work session ended under the run (terminated, or the connection lost); the run
    lock, held by that session, is gone with it."""


_PRIVILEGE_HINT = (
    f"Migrations run as {SCHEMA_OWNER}, the schema owner: use its URL (migrator_url), or"
    " grant the missing privilege; 'ptool-ops doctor' shows what each role can do."
)


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


class Executor:
    """Applies and reverts single migrations on one work connection."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        options: RunOptions,
        log: Callable[[str], None],
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.conn = conn
        #: the compatibility gate run before each up commits (None: none)
        self.gate = gate
        self.options = options
        self._log = log
        #: told when a no-transaction migration starts (the audit trail's "started" record)
        self._on_event = on_event or (lambda action, details: None)
        row = conn.execute("SELECT session_user").fetchone()
        self.login = str(row[0]) if row else "?"
        self._current = self.login
        self._owner: str | None = None
        self.ran = 0  # statements of the current no-transaction script that succeeded

    # --- who runs it -----------------------------------------------------------------------

    def _schema_owner(self) -> str | None:
        """The role to SET ROLE to: the schema owner, when the login may become it and it
        owns the migration history (on a fresh database the login does, until 0001)."""
        wanted = self.options.schema_owner
        if not wanted:
            return None
        row = self.conn.execute(
            "SELECT r.rolname <> session_user AND pg_has_role(session_user, r.oid, 'SET')"
            " AND EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "   WHERE n.nspname = 'ptool_ops' AND c.relname = 'migration_history'"
            "   AND c.relowner = r.oid)"
            " FROM pg_roles r WHERE r.rolname = %s",
            (wanted,),
        ).fetchone()
        return wanted if row and row[0] else None

    def become_owner(self) -> None:
        """Run as the schema owner from here on (when the login is a member of it); asked
        afresh each time, since a migration that runs as the login may create or drop it."""
        self._owner = self._schema_owner()
        if self._owner:
            self.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self._owner)))
            self._current = self._owner

    def as_login(self) -> None:
        self.conn.execute("RESET ROLE")
        self._current = self.login

    @property
    def who(self) -> str:
        if self._current == self.login:
            return self.login
        return f"{self._current} (SET ROLE by {self.login})"

    # --- pieces ----------------------------------------------------------------------------

    def retrying(self, what: str) -> Any:
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

    @staticmethod
    def statements(path: Path) -> list[Any]:
        from ptool_ops.migrate.lock_analysis import split_statements

        return split_statements(path.read_text(encoding="utf-8"), path=str(path))

    def execute(self, stmt: Any, path: Path) -> None:
        where = f"{path.name}:{stmt.line}"
        try:
            self.conn.execute(stmt.text)
        except pg_errors.LockNotAvailable:
            raise
        except psycopg.Error as err:
            if self.conn.broken:
                raise SessionLost(f"{where}: {_first_line(err)}") from err
            message = (err.diag.message_primary or str(err)).strip()
            if isinstance(err, pg_errors.InsufficientPrivilege):
                raise PrivilegeFailure(
                    f"{where}: role {self.who} was refused: {message.rstrip('.')} (SQLSTATE 42501)"
                ) from err
            raise Failed(f"{where}: {message} (SQLSTATE {err.sqlstate or '?'})") from err

    def validate(self, baseline: Any | None, m: MigrationFiles, up: bool) -> Any | None:
        """Verify (up only) and invariants, inside the caller's transaction."""
        if up and m.verify is not None:
            try:
                run_verify(self.conn, m.verify.read_text(encoding="utf-8"), label=m.label)
            except MigrationError as err:
                raise Failed(str(err)) from err
            except psycopg.Error as err:
                raise Failed(f"verify script of {m.label} failed: {err}") from err
        if not self.options.invariants:
            return None
        from ptool_ops.booking.invariants import InvariantsUnavailable, run_invariants

        try:
            report = run_invariants(self.conn)
        except InvariantsUnavailable as err:
            raise Failed(f"the booking invariants cannot be checked: {err}") from err
        problems = new_violations(baseline, report)
        if problems:
            raise Failed("booking invariants broken: " + "; ".join(problems))
        return report

    def baseline(self) -> Any | None:
        if not self.options.invariants:
            return None
        from ptool_ops.booking.invariants import InvariantsUnavailable, run_invariants

        try:
            return run_invariants(self.conn)
        except InvariantsUnavailable as err:
            raise ConfigError(
                f"the booking invariants cannot be checked with this login: {err}",
                hint=f"Run migrations as {SCHEMA_OWNER}, the schema owner.",
            ) from None

    def gate_baseline(self, up: bool) -> Any | None:
        """The gate's probe before the migration's first statement (the baseline)."""
        if not up or self.gate is None:
            return None
        return self.gate.probe(self.conn)

    def gate_check(self, m: MigrationFiles, up: bool, before: Any | None, result: Any) -> None:
        """The gate's verdict on the migrated schema, in the caller's transaction."""
        if not up or self.gate is None:
            return
        try:
            report = self.gate.check(self.conn, m, before)
        except psycopg.Error as err:
            if self.conn.broken:
                raise SessionLost(_first_line(err)) from err
            raise Failed(f"the compatibility gate could not run: {_first_line(err)}") from err
        result.compatibility = report.to_dict()
        if not report.ok:
            raise Incompatible(report.failure())

    def gate_rehearse(
        self, m: MigrationFiles, script: Path, before: Any | None, result: MigrationResult
    ) -> None:
        """A ``no-transaction`` up, rehearsed for the gate before anything of it commits:
        its statements in one transaction that is rolled back (those that cannot run in a
        transaction, ``CONCURRENTLY`` index builds and drops, left out: no statement's
        PREPARE depends on an index), the gate checked inside. Only for DDL: a file with
        DML, ``DO`` or ``CALL`` (a backfill) is not rehearsed -- its gate runs after its
        statements. A rehearsal that fails for another reason is let go: the real run meets
        the same error and handles it."""
        from ptool_ops.migrate.files import migration_phase
        from ptool_ops.migrate.lock_analysis import non_transactional_reason

        if self.gate is None:
            return
        contract = migration_phase(script.read_text(encoding="utf-8")) == "contract"
        if not self.gate.needs_app_role and not contract:
            return  # nothing to probe, no phase rule: nothing to rehearse for
        statements = self.statements(script)
        work = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "DoStmt", "CallStmt"}
        if any(stmt.kind in work for stmt in statements):
            self._log(f"{m.label}: not rehearsed for the gate (it changes rows)")
            return
        planned = [s for s in statements if non_transactional_reason(s.node) is None]
        try:
            with self.conn.transaction(force_rollback=True):
                for stmt in planned:
                    self.execute(stmt, script)
                self.gate_check(m, True, before, result)
        except Incompatible:
            raise
        except (Failed, pg_errors.LockNotAvailable) as err:
            self._log(f"{m.label}: the gate's rehearsal stopped ({err}); checked after it runs")

    def record(
        self,
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
        row = self.conn.execute("SELECT session_user, current_user").fetchone()
        who = "?" if row is None else row[0] if row[0] == row[1] else f"{row[0]} as {row[1]}"
        self.conn.execute(
            _UPSERT,
            (
                m.version,
                m.name,
                sums.up,
                sums.down,
                sums.verify,
                f"{self.options.actor} ({who})",
                duration_ms,
                outcome,
                point.label if point else None,
                run_id,
                note,
                transactional,
            ),
        )

    def invalid_indexes(self) -> set[str]:
        return {str(row[0]) for row in self.conn.execute(_INVALID_INDEXES).fetchall()}

    def drop_new_invalid(self, before: set[str]) -> list[str]:
        dropped = []
        for name in sorted(self.invalid_indexes() - before):
            schema, _, index = name.partition(".")
            self._log(f"dropping invalid index {name} left by a failed build")
            for attempt in self.retrying(f"DROP INDEX CONCURRENTLY {name}"):
                with attempt:
                    self.conn.execute(
                        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                            sql.Identifier(schema.strip('"')), sql.Identifier(index.strip('"'))
                        )
                    )
            dropped.append(name)
        return dropped

    def reason(self, err: BaseException) -> str:
        if isinstance(err, pg_errors.LockNotAvailable):
            return (
                f"a lock was not available within {self.options.lock_timeout_ms} ms after"
                f" {self.options.lock_retries + 1} attempts"
            )
        return str(err)

    # --- one migration ---------------------------------------------------------------------

    def apply(
        self,
        m: MigrationFiles,
        *,
        up: bool,
        baseline: Any | None,
        run_id: str,
        point: BackupPoint | None,
    ) -> tuple[MigrationResult, Any | None]:
        from ptool_ops.migrate.lint import parse_directives

        script = m.up if up else m.down
        directives = parse_directives(script.read_text(encoding="utf-8"))
        transactional = not directives.no_transaction
        result = MigrationResult(m.version, m.name, "up" if up else "down", "failed", transactional)
        self._log(f"{'applying' if up else 'reverting'} {m.label}")
        if directives.run_as_login:
            self.as_login()
        try:
            if transactional:
                try:
                    report = self._transactional(
                        m, up=up, baseline=baseline, run_id=run_id, point=point, result=result
                    )
                except (Failed, pg_errors.LockNotAvailable) as err:
                    what = (
                        f"{m.label} ({'up' if up else 'down'}) failed: {self.reason(err)};"
                        " its transaction was rolled back, nothing of it changed."
                    )
                    if isinstance(err, PrivilegeFailure):
                        raise PermissionDenied(what, hint=_PRIVILEGE_HINT) from None
                    raise OperationFailed(what, hint=_hint_for(err)) from None
            else:
                report = self._no_transaction(
                    m, up=up, baseline=baseline, run_id=run_id, point=point, result=result
                )
        finally:
            if directives.run_as_login:
                self.become_owner()
        result.outcome = "applied" if up else "reverted"
        return result, report

    def _transactional(
        self,
        m: MigrationFiles,
        *,
        up: bool,
        baseline: Any | None,
        run_id: str,
        point: BackupPoint | None,
        result: MigrationResult,
    ) -> Any | None:
        script = m.up if up else m.down
        statements = self.statements(script)
        report: Any | None = None
        started = time.monotonic()
        for attempt in self.retrying(f"{m.label} ({'up' if up else 'down'})"):
            with attempt:
                result.attempts = attempt.retry_state.attempt_number
                with self.conn.transaction():
                    before = self.gate_baseline(up)
                    for stmt in statements:
                        self.execute(stmt, script)
                    self.gate_check(m, up, before, result)
                    report = self.validate(baseline, m, up)
                    self.record(
                        m,
                        outcome="applied" if up else "reverted",
                        duration_ms=round((time.monotonic() - started) * 1000),
                        run_id=run_id,
                        point=point,
                        transactional=True,
                    )
        result.duration_ms = round((time.monotonic() - started) * 1000)
        return report

    def run_one_by_one(
        self, path: Path, invalid_before: set[str], *, skip_missing: bool = False
    ) -> None:
        """Each statement on its own (autocommit). ``skip_missing``: a statement failing
        because its object was never created is skipped -- only when undoing a failed up,
        whose later statements never ran; a deliberate down must find what it drops.
        ``self.ran`` counts the statements that succeeded."""
        self.ran = 0
        for stmt in self.statements(path):
            for attempt in self.retrying(f"{path.name}:{stmt.line}"):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.drop_new_invalid(invalid_before)
                    try:
                        self.execute(stmt, path)
                        self.ran += 1
                    except Failed as err:
                        cause = err.__cause__
                        if (
                            skip_missing
                            and isinstance(cause, psycopg.Error)
                            and cause.sqlstate in _NEVER_CREATED
                        ):
                            self._log(f"{err} -- skipped: never created")
                            continue
                        raise

    def _no_transaction(
        self,
        m: MigrationFiles,
        *,
        up: bool,
        baseline: Any | None,
        run_id: str,
        point: BackupPoint | None,
        result: MigrationResult,
    ) -> Any | None:
        from ptool_ops.migrate.snapshot import snapshot

        before = snapshot(self.conn, exclude_schemas=("ptool_ops",))
        invalid_before = self.invalid_indexes()
        started = time.monotonic()
        script = m.up if up else m.down
        before_probe = self.gate_baseline(up)
        if up:
            try:
                self.gate_rehearse(m, script, before_probe, result)
            except Incompatible as err:
                raise OperationFailed(
                    f"{m.label} (up) failed: {err}; it was rehearsed in a transaction that was"
                    " rolled back, nothing of it ran.",
                    hint=_hint_for(err),
                ) from None
        previous = self._mark_running(m, up=up, run_id=run_id, point=point)
        try:
            self.run_one_by_one(script, invalid_before)
            with self.conn.transaction():
                # no-transaction: the gate runs again after the statements committed (the
                # only check for a file that was not rehearsed); a broken statement sends
                # the migration down the rollback path (its down script)
                self.gate_check(m, up, before_probe, result)
                report = self.validate(baseline, m, up)
                self.record(
                    m,
                    outcome="applied" if up else "reverted",
                    duration_ms=round((time.monotonic() - started) * 1000),
                    run_id=run_id,
                    point=point,
                    transactional=False,
                )
        except (Failed, pg_errors.LockNotAvailable) as err:
            result.duration_ms = round((time.monotonic() - started) * 1000)
            reason = self.reason(err)
            if not up and self.ran == 0:
                # nothing of the down ran: the migration is as applied as it was
                with self.conn.transaction():
                    self._restore_row(m, previous, run_id)
                raise OperationFailed(
                    f"the down script of {m.label} failed at its first statement: {reason};"
                    " nothing was changed, it stays applied.",
                    hint=_hint_for(err),
                ) from None
            if not up:
                raise manual(
                    f"down script of {m.label} failed halfway: {reason}; its history row says"
                    f" '{history.REVERTING}' (run {run_id})",
                    point,
                ) from None
            self._recover(m, before, invalid_before, baseline, err, point, previous, run_id)
        result.duration_ms = round((time.monotonic() - started) * 1000)
        return report

    def _mark_running(
        self, m: MigrationFiles, *, up: bool, run_id: str, point: BackupPoint | None
    ) -> history.HistoryRow | None:
        """Commit a ``running`` (``reverting``) history row before the first statement, so
        a run killed half-way leaves a trace; returns the row before (None: there was none).

        The ``started`` event (the audit record) comes first: if it cannot be written, the
        error leaves the history as it was -- no row claims a run that never started."""
        previous = history.read_history(self.conn).get(m.version)
        outcome = history.RUNNING if up else history.REVERTING
        self._on_event(
            "migrate.up" if up else "migrate.down",
            {"version": m.version, "name": m.name, "run_id": run_id, "outcome": outcome},
        )
        with self.conn.transaction():
            self.record(
                m,
                outcome=outcome,
                duration_ms=0,
                run_id=run_id,
                point=point,
                transactional=False,
                note=f"statements of the {'up' if up else 'down'} script running since run"
                f" {run_id} started it; if this stays, the run was killed half-way",
            )
        return previous

    def _recover(
        self,
        m: MigrationFiles,
        before: dict[str, Any],
        invalid_before: set[str],
        baseline: Any | None,
        cause: BaseException,
        point: BackupPoint | None,
        previous: history.HistoryRow | None,
        run_id: str,
    ) -> None:
        """Undo a failed no-transaction migration; always raises."""
        from ptool_ops.migrate.snapshot import diff, snapshot

        reason = self.reason(cause)
        if is_irreversible(m):
            raise manual(
                f"{m.label} failed ({reason}) and is irreversible (its down script says so),"
                f" so nothing undid it; its history row says '{history.RUNNING}' (run {run_id})",
                point,
            ) from None
        self._log(f"{m.label} failed ({reason}); rolling back with its down script")
        try:
            self.drop_new_invalid(invalid_before)
            self.run_one_by_one(m.down, invalid_before, skip_missing=True)
            self.drop_new_invalid(invalid_before)
            changes = diff(before, snapshot(self.conn, exclude_schemas=("ptool_ops",)))
            if changes:
                raise Failed(
                    "after its down script the schema still differs from before in "
                    + ", ".join(sorted(changes))
                )
            with self.conn.transaction():
                if self.options.invariants:
                    self.validate(baseline, m, up=False)
                self._restore_row(m, previous, run_id)
        except (Failed, pg_errors.LockNotAvailable, psycopg.Error) as err:
            raise manual(
                f"{m.label} failed ({reason}) and its rollback failed too: {self.reason(err)};"
                f" its history row says '{history.RUNNING}' (run {run_id})",
                point,
            ) from None
        what = (
            f"{m.label} failed: {reason}; it was rolled back with its down script and the"
            " schema is as before."
        )
        if isinstance(cause, PrivilegeFailure):
            raise PermissionDenied(what, hint=_PRIVILEGE_HINT)
        raise OperationFailed(what, hint=_hint_for(cause))

    def _restore_row(
        self, m: MigrationFiles, previous: history.HistoryRow | None, run_id: str
    ) -> None:
        """After a clean rollback: the history says what it said before the attempt."""
        table = sql.SQL(history.HISTORY_TABLE)
        if previous is None:
            self.conn.execute(
                sql.SQL("DELETE FROM {} WHERE version = %s").format(table), (m.version,)
            )
            return
        note = f"run {run_id} failed and changed nothing" + (
            f"; {previous.note}" if previous.note else ""
        )
        self.conn.execute(
            sql.SQL(
                "UPDATE {} SET outcome = %s, applied_at = %s, applied_by = %s, duration_ms = %s,"
                " backup_point = %s, run_id = %s, note = %s WHERE version = %s"
            ).format(table),
            (
                previous.outcome,
                previous.applied_at,
                previous.applied_by,
                previous.duration_ms,
                previous.backup_point,
                previous.run_id,
                note,
                m.version,
            ),
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _hint_for(err: BaseException) -> str:
    """What to do next, by what failed."""
    if isinstance(err, pg_errors.LockNotAvailable):
        return (
            "Find the session holding the lock (pg_stat_activity, pg_locks), let it finish or"
            " end it, then run the command again."
        )
    text = str(err)
    if isinstance(err, Incompatible):
        return (
            "Keep what the deployed API uses: split the change into an expand migration now and"
            " a contract one once the API no longer uses the old shape ('ptool-ops migrate new"
            " NAME --rename TABLE.COLUMN=NEW' scaffolds both; see docs/migrations.md);"
            " 'ptool-ops migrate test' lists every statement it breaks."
        )
    if "booking invariants broken" in text or "Verification of migration" in text:
        return (
            "Fix the migration so that its verify queries and the invariants hold, then run"
            " the command again ('ptool-ops migrate test' proves it on a scratch copy)."
        )
    return "Fix the statement the message names and run the command again."


def is_irreversible(m: MigrationFiles) -> bool:
    """Its down script declares ``-- ptool: irreversible``."""
    from ptool_ops.migrate.lint import parse_directives

    return parse_directives(m.down.read_text(encoding="utf-8")).irreversible


def manual(what: str, point: BackupPoint | None, *, neither: bool = True) -> ManualActionRequired:
    """The operator must act: the schema is in neither state (or the cause is elsewhere)."""
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
