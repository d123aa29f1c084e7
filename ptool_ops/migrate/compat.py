"""The compatibility gate: the deployed API's captured statements, prepared against the
migrated schema before the migration commits.

For each migration ``up`` (in ``migrate up`` and on ``migrate test``'s scratch copy) the
:class:`Gate` probes every current statement of the query set
(:meth:`ptool_ops.migrate.queryset.QuerySet.current`) twice on the migration's own
session: before its first statement (the baseline) and after its last, before commit.
A probe is ``SET ROLE booking_app`` then ``PREPARE`` (and, on PostgreSQL 16+, ``EXPLAIN
(GENERIC_PLAN)``, which checks table privileges as execution would), all under a savepoint
that is rolled back, so a probe changes nothing and its role switch ends with it.

A statement is **broken** by the migration when its probe fails with an error of class 42
(undefined column, table or function, insufficient privilege, ambiguous column...) after
the migration but not before. Statements that are no SELECT/INSERT/UPDATE/DELETE/MERGE
(utility statements), do not parse, or fail before the migration too are reported as
**skipped**. A broken statement fails the migration: transactional ones roll back whole;
``no-transaction`` ones are probed in their validation transaction, after the statements,
and a failure sends them down the rollback path (the down script) like a failed verify.

Phases (``-- ptool: phase expand|contract``): a ``contract`` migration is refused unless a
capture window began after the last deploy of the schema (the newest applied migration:
the expand half), so the statements checked are what the app runs against the expanded
schema; a broken statement is then a reference to what the contract removes. Which
statements are the deployed app's (its version's deploy) is the query set's
:meth:`~ptool_ops.migrate.queryset.QuerySet.current`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ptool_ops.migrate.files import migration_phase
from ptool_ops.privileges.model import APP_GROUP

if TYPE_CHECKING:
    from ptool_ops.migrate.files import MigrationFiles
    from ptool_ops.migrate.queryset import QuerySet, Statement

__all__ = ["Gate", "GateReport", "Probe"]

_PREPARABLE = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
_SHOWN = 160


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def preparable(text: str) -> str | None:
    """None when PREPARE accepts the statement, else why it is skipped."""
    from pglast.parser import ParseError, parse_sql

    try:
        parsed = parse_sql(text)
    except ParseError as err:
        return f"does not parse ({err}); a text cut at track_activity_query_size?"
    if len(parsed) != 1:
        return "not one statement"
    stmt = parsed[0].stmt
    kind = type(stmt).__name__ if stmt is not None else "?"
    return None if kind in _PREPARABLE else f"utility statement ({kind})"


@dataclass
class Probe:
    key: str
    text: str
    last_seen: datetime | None
    outcome: str  # ok | broken | skipped
    sqlstate: str | None = None
    error: str | None = None
    app_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "statement": self.text,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "outcome": self.outcome,
            "sqlstate": self.sqlstate,
            "error": self.error,
            "app_versions": self.app_versions,
        }

    def sentence(self) -> str:
        seen = self.last_seen.isoformat(timespec="seconds") if self.last_seen else "never"
        versions = f", app {', '.join(self.app_versions)}" if self.app_versions else ""
        return (
            f"statement `{_short(self.text)}` (last seen {seen}{versions}): {self.error}"
            f" (SQLSTATE {self.sqlstate})"
        )


@dataclass
class GateReport:
    migration: str
    phase: str | None
    role: str
    basis: str
    probes: list[Probe] = field(default_factory=list)
    refused: str | None = None  # a phase rule refused it before any probe

    @property
    def broken(self) -> list[Probe]:
        return [p for p in self.probes if p.outcome == "broken"]

    @property
    def skipped(self) -> list[Probe]:
        return [p for p in self.probes if p.outcome == "skipped"]

    @property
    def ok(self) -> bool:
        return self.refused is None and not self.broken

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "phase": self.phase,
            "role": self.role,
            "basis": self.basis,
            "ok": self.ok,
            "refused": self.refused,
            "checked": len(self.probes),
            "broken": [p.to_dict() for p in self.broken],
            "skipped": [p.to_dict() for p in self.skipped],
        }

    def failure(self) -> str:
        """The sentence a failed gate gives (the caller adds the migration's label)."""
        if self.refused:
            return self.refused
        first = self.broken[0]
        more = f" (and {len(self.broken) - 1} more)" if len(self.broken) > 1 else ""
        if self.phase == "contract":
            lead = "compatibility: the contract removes what the deployed API still uses:"
        else:
            lead = "compatibility: the deployed API's statements break against the new schema:"
        return f"{lead} {first.sentence()}{more}"


class Gate:
    """Probes the query set's current statements on a migration's session."""

    def __init__(
        self,
        query_set: QuerySet | None,
        *,
        role: str = APP_GROUP,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.query_set = query_set
        self.role = role
        self._log = log or (lambda message: None)
        current = query_set.current() if query_set is not None else None
        self.basis = current.basis if current else "nothing captured"
        self.app_deploy = current.app_deploy if current else None
        self.statements: list[Statement] = current.statements if current else []
        self._skip = {s.key: preparable(s.text) for s in self.statements}
        self.reports: list[GateReport] = []

    @property
    def needs_app_role(self) -> bool:
        """Whether probes will run (and so the session must be able to become the role)."""
        return bool(self.statements)

    # --- probing ---------------------------------------------------------------------------

    def _explain(self, conn: psycopg.Connection[Any]) -> bool:
        return conn.info.server_version >= 160000

    def probe(self, conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str] | None]:
        """Each statement's (SQLSTATE, message) as the app role, None when it prepares;
        changes nothing (one savepoint, or transaction, rolled back)."""
        out: dict[str, tuple[str, str] | None] = {}
        if not self.statements:
            return out
        explain = self._explain(conn)
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(self.role)))
            for n, s in enumerate(self.statements):
                if self._skip[s.key] is not None:
                    continue
                name = f"ptool_probe_{n}"
                prepared = False
                try:
                    with conn.transaction():
                        conn.execute(f"PREPARE {name} AS {s.text}")
                        prepared = True
                        if explain:
                            conn.execute(f"EXPLAIN (GENERIC_PLAN) {s.text}")
                    out[s.key] = None
                except psycopg.Error as err:
                    if conn.broken:
                        raise
                    message = (err.diag.message_primary or str(err)).strip()
                    out[s.key] = (err.sqlstate or "?", message)
                finally:
                    if prepared:  # prepared statements outlive a rolled-back savepoint
                        conn.execute(f"DEALLOCATE {name}")
        return out

    def check(
        self,
        conn: psycopg.Connection[Any],
        m: MigrationFiles,
        before: dict[str, tuple[str, str] | None] | None,
    ) -> GateReport:
        """The migrated schema's verdict on the current statements (``before``: the
        baseline probe, taken before the migration's first statement)."""
        phase = migration_phase(m.up.read_text(encoding="utf-8"))
        report = GateReport(m.label, phase, self.role, self.basis)
        self.reports.append(report)
        if phase == "contract":
            report.refused = self._contract_refusal(conn)
            if report.refused:
                return report
        if not self.statements:
            return report
        after = self.probe(conn)
        for s in self.statements:
            skip = self._skip[s.key]
            probe = Probe(s.key, s.text, s.last_seen, "ok", app_versions=list(s.app_versions))
            report.probes.append(probe)
            if skip is not None:
                probe.outcome, probe.error = "skipped", skip
                continue
            failed = after.get(s.key)
            if failed is None:
                continue
            probe.sqlstate, probe.error = failed
            was = (before or {}).get(s.key)
            if was is not None:
                probe.outcome = "skipped"
                probe.error = f"fails before the migration too: {was[1]}"
            elif failed[0].startswith("42"):
                probe.outcome = "broken"
            else:
                probe.outcome = "skipped"
        self._log(
            f"compatibility of {m.label}: {len(report.probes)} statement(s) as {self.role},"
            f" {len(report.broken)} broken, {len(report.skipped)} skipped"
        )
        return report

    def _contract_refusal(self, conn: psycopg.Connection[Any]) -> str | None:
        """A contract needs a capture window that began after the last deploy."""
        from ptool_ops.migrate import history

        if self.query_set is None or not self.query_set.windows():
            return (
                "compatibility: a contract migration needs a capture of the statements the API"
                " runs ('ptool-ops migrate capture' while it serves); there is none"
            )
        row = conn.execute(
            sql.SQL("SELECT max(applied_at) FROM {} WHERE outcome = 'applied'").format(
                sql.SQL(history.HISTORY_TABLE)
            )
        ).fetchone()
        deploy: datetime | None = row[0] if row else None
        if deploy is None or self.query_set.window_since(deploy) is not None:
            return None
        return (
            "compatibility: a contract migration needs a capture whose window began after the"
            f" last deploy (the newest migration was applied at"
            f" {deploy.isoformat(timespec='seconds')}), so that the statements checked are the"
            " ones the API runs against the new schema; there is none"
        )
