"""``migrate plan``: what ``up`` would do, read from the files and the history alone.

Per pending migration: transactional or not, each statement with the locks it takes (from
the parse tree, :mod:`ptool_ops.migrate.lock_analysis`), the lint findings, plus the backup
point ``up`` would take and every reason ``up`` would refuse: drift, lint errors and the
script problems of :func:`script_problems` (which ``up`` checks before its first statement).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool_ops.migrate import history

if TYPE_CHECKING:
    from ptool_ops.migrate.backup_point import BackupPlan
    from ptool_ops.migrate.execution import RunOptions
    from ptool_ops.migrate.files import MigrationFiles
    from ptool_ops.migrate.lint import LintReport

__all__ = [
    "Plan",
    "PlannedMigration",
    "ScriptProblem",
    "StatementInfo",
    "build_plan",
    "script_problems",
]


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
    blocked: list[str]  # why up would refuse (drift, lint errors, script problems)
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


@dataclass(frozen=True)
class ScriptProblem:
    """A script ``up`` or ``down`` would refuse to start with: ``text`` is ``file:line:
    what`` (no full stop), ``hint`` the fix."""

    text: str
    hint: str


def script_problems(scripts: list[Path]) -> list[ScriptProblem]:
    """Each script that does not parse, or holds a statement that cannot run in a
    transaction while the file runs in one (the first such statement per script)."""
    from ptool_ops.migrate.lint import parse_directives
    from ptool_ops.migrate.lock_analysis import SqlSyntaxError, plan_statements

    problems = []
    for path in scripts:
        text = path.read_text(encoding="utf-8")
        try:
            plans = plan_statements(text, path=str(path))
        except SqlSyntaxError as err:
            problems.append(
                ScriptProblem(
                    f"{path.name}:{err.line}: {err.reason}",
                    "Fix the SQL at that line ('ptool-ops migrate lint FILE' checks it).",
                )
            )
            continue
        if parse_directives(text).no_transaction:
            continue
        blocking = next((plan for plan in plans if plan.non_transactional), None)
        if blocking is not None:
            problems.append(
                ScriptProblem(
                    f"{path.name}:{blocking.statement.line}: {blocking.non_transactional},"
                    " but the file runs in one transaction",
                    "Mark the file '-- ptool: no-transaction' (its first line), or move the"
                    " statement to a migration of its own that is.",
                )
            )
    return problems


def _statements(m: MigrationFiles) -> list[StatementInfo]:
    from ptool_ops.migrate.lock_analysis import SqlSyntaxError, plan_statements

    text = m.up.read_text(encoding="utf-8")
    try:
        plans = plan_statements(text, path=str(m.up))
    except SqlSyntaxError:
        plans = []
    return [
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


def build_plan(
    report: history.StatusReport,
    pending: list[MigrationFiles],
    lint: LintReport,
    problems: list[ScriptProblem],
    backup: BackupPlan | None,
    options: RunOptions,
) -> Plan:
    """The plan of applying ``pending`` (what ``up`` would apply, ``--to`` considered):
    ``lint`` and ``problems`` are theirs, the drift the whole history's (``up`` refuses
    any)."""
    from ptool_ops.migrate.lint import parse_directives

    blocked = [
        f"{s.label}: {s.state.value}" + (f" ({', '.join(s.drift)})" if s.drift else "")
        for s in report.problems
    ]
    blocked += [f"{f.file}:{f.line}: lint error {f.rule}" for f in lint.errors]
    blocked += [problem.text for problem in problems]
    planned = [
        PlannedMigration(
            m.version,
            m.name,
            not parse_directives(m.up.read_text(encoding="utf-8")).no_transaction,
            _statements(m),
            [f.to_dict() for f in lint.findings if f.file == str(m.up)],
        )
        for m in pending
    ]
    return Plan(report.directory, report, planned, backup, blocked, options)
