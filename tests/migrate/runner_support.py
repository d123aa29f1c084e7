"""Helpers for the runner tests: a copy of the booking migrations plus extra ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg

from ptool_ops.booking import MIGRATIONS_DIR
from ptool_ops.migrate.runner import RunOptions
from ptool_ops.migrate.snapshot import snapshot

FAST = RunOptions(
    lock_timeout_ms=200,
    statement_timeout_ms=60_000,
    lock_retries=2,
    retry_initial_s=0.05,
    retry_max_s=0.2,
    run_lock_wait_s=5,
    api_ready_timeout_s=1,
    actor="test",
)


def migrations_copy(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def add_migration(
    directory: Path, version: str, name: str, up: str, down: str, verify: str | None = None
) -> None:
    (directory / f"{version}_{name}.up.sql").write_text(up)
    (directory / f"{version}_{name}.down.sql").write_text(down)
    if verify is not None:
        (directory / f"{version}_{name}.verify.sql").write_text(verify)


def state(conn: psycopg.Connection[Any]) -> tuple[Any, list[tuple[Any, ...]]]:
    """The schema (catalog, outside ptool_ops) and the history rows, for before/after."""
    rows = conn.execute(
        "SELECT version, name, checksum, outcome, applied_at FROM ptool_ops.migration_history"
        " ORDER BY version"
    ).fetchall()
    return snapshot(conn, exclude_schemas=("ptool_ops",)), rows


def invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid"
        ).fetchall()
    ]
