"""``migrate repair``: record an operator's decision on a drifted, missing or interrupted
migration.

``accept``: the files as they are now are what is applied (re-hash; a drifted one keeps when
it was applied; an interrupted one -- its run killed half-way -- is applied as of now), in
the migration's own mode (``transactional`` false for a ``no-transaction`` up script).
``forget``: the migration is not applied (its row becomes ``forgotten``). Either way the
decision and its reason are kept in the row's note.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ptool_ops.errors import ConfigError
from ptool_ops.migrate import history
from ptool_ops.migrate.execution import Executor
from ptool_ops.migrate.files import MigrationFiles

__all__ = ["ACTIONS", "record_decision"]

ACTIONS = ("accept", "forget")


def record_decision(
    executor: Executor,
    migrations: list[MigrationFiles],
    directory: str,
    version: str,
    *,
    action: str,
    reason: str,
    run_id: str,
) -> history.MigrationStatus:
    """Write the decision in one transaction; returns the migration's state after it."""
    from ptool_ops.migrate.lint import parse_directives

    if action not in ACTIONS:
        raise ValueError(f"unknown repair action {action!r}")
    if not reason.strip():
        raise ConfigError("repair needs a --reason: it is recorded in the history.")
    conn: psycopg.Connection[Any] = executor.conn
    report = history.status(migrations, history.read_history(conn), directory)
    found = [s for s in report.migrations if s.version == version]
    repairable = ("applied", history.RUNNING, history.REVERTING)
    if not found or found[0].row is None or found[0].row.outcome not in repairable:
        raise ConfigError(
            f"migration {version} is not recorded as applied or interrupted; nothing to repair.",
            hint="'ptool-ops migrate status' lists what the history holds.",
        )
    s = found[0]
    row = s.row
    assert row is not None
    note = f"repair {action} by {executor.options.actor}: {reason.strip()}"
    table = sql.SQL(history.HISTORY_TABLE)
    with conn.transaction():
        if action == "accept":
            if s.migration is None:
                raise ConfigError(f"migration {version} has no files to accept; use --forget.")
            up = s.migration.up.read_text(encoding="utf-8")
            executor.record(
                s.migration,
                outcome="applied",
                duration_ms=row.duration_ms or 0,
                run_id=run_id,
                point=None,
                transactional=not parse_directives(up).no_transaction,  # its own mode
                note=note,
            )
            if row.outcome == "applied":  # drift accepted: it was applied back then
                conn.execute(
                    sql.SQL("UPDATE {} SET applied_at = %s WHERE version = %s").format(table),
                    (row.applied_at, version),
                )
        else:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET outcome = 'forgotten', note = %s, run_id = %s WHERE version = %s"
                ).format(table),
                (note, run_id, version),
            )
    rows = history.read_history(conn)
    after = history.status(migrations, rows, directory)
    return next(
        (m for m in after.migrations if m.version == version),
        history.MigrationStatus(
            version, s.name, history.MigrationState.pending, None, rows.get(version)
        ),
    )
