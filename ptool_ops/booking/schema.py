"""The booking schema's migrations and a minimal, in-order runner.

Migrations are flat files in ``migrations/``: ``NNNN_name.up.sql``,
``NNNN_name.down.sql`` and an optional ``NNNN_name.verify.sql`` whose SELECTs must
each return one row with a single boolean ``true``.

:func:`apply_pending` applies what is missing, one transaction per migration: it
takes a transaction-scoped advisory lock (so two runners serialise), re-reads the
history under that lock, runs the up script and the verify queries and writes the
``ptool_ops.migration_history`` row in the same transaction. A failed verify rolls
the migration back. The full runner (down, linting, reversibility proofs) builds on
the same files, history table and lock key.

The first migration creates cluster roles, so the runner must connect as a superuser
for it; later ones only need to be the owner of schema ``booking``.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

__all__ = [
    "HISTORY_TABLE",
    "MIGRATIONS_DIR",
    "MIGRATION_LOCK_KEY",
    "MigrationError",
    "MigrationFiles",
    "applied_versions",
    "apply_pending",
    "checksum",
    "ensure_history_table",
    "load_migrations",
    "run_verify",
    "schema_version",
]

MIGRATIONS_DIR: Path = Path(__file__).resolve().parent / "migrations"

HISTORY_SCHEMA = "ptool_ops"
HISTORY_TABLE = "ptool_ops.migration_history"
#: the schema version: the highest version applied (a reverted one does not count). The
#: application role may run it too (migration 0005), for the API's ``/version``.
SCHEMA_VERSION_SQL = (
    "SELECT max(version) FROM ptool_ops.migration_history WHERE outcome = 'applied'"
)

#: Key of the transaction-scoped advisory lock every migration run takes
#: (first 8 bytes of sha256("ptool_ops.migrations"), as a signed bigint).
MIGRATION_LOCK_KEY: int = int.from_bytes(
    hashlib.sha256(b"ptool_ops.migrations").digest()[:8], "big", signed=True
)

_FILE_RE = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.(?P<kind>up|down|verify)\.sql$"
)

_HISTORY_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {HISTORY_SCHEMA};
CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text        NOT NULL DEFAULT current_user,
    duration_ms integer,
    outcome     text        NOT NULL
);
"""


class MigrationError(RuntimeError):
    """A migration could not be applied (verify failed, history disagrees with files)."""


@dataclass(frozen=True)
class MigrationFiles:
    """The files of one migration version."""

    version: str
    name: str
    up: Path
    down: Path
    verify: Path | None

    @property
    def checksum(self) -> str:
        """sha256 of the normalised up script (see :func:`checksum`)."""
        return checksum(self.up.read_text(encoding="utf-8"))


def checksum(script: str) -> str:
    """sha256 hex digest of ``script`` normalised: CRLF to LF, trailing whitespace
    stripped from each line, trailing blank lines dropped."""
    lines = [line.rstrip() for line in script.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[MigrationFiles]:
    """The migrations in ``directory``, sorted by version.

    Raises :class:`ValueError` when a file is misnamed, a version has two names, or an
    up script has no down script (or the other way round).
    """
    if not directory.is_dir():
        raise ValueError(f"The migrations directory {directory} does not exist.")
    found: dict[str, dict[str, Path]] = {}
    names: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_RE.match(path.name)
        if match is None:
            raise ValueError(
                f"Migration file {path.name} is misnamed: expected "
                "NNNN_snake_name.up.sql, .down.sql or .verify.sql."
            )
        version, name, kind = match["version"], match["name"], match["kind"]
        if names.setdefault(version, name) != name:
            raise ValueError(
                f"Migration {version} has files under two names, "
                f"{names[version]!r} and {name!r}; rename one."
            )
        found.setdefault(version, {})[kind] = path
    migrations: list[MigrationFiles] = []
    for version in sorted(found):
        files = found[version]
        label = f"{version}_{names[version]}"
        if "up" not in files:
            raise ValueError(f"Migration {label} has no up script ({label}.up.sql).")
        if "down" not in files:
            raise ValueError(
                f"Migration {label} has no down script: add {label}.down.sql "
                "so that it can be rolled back."
            )
        migrations.append(
            MigrationFiles(
                version=version,
                name=names[version],
                up=files["up"],
                down=files["down"],
                verify=files.get("verify"),
            )
        )
    return migrations


def ensure_history_table(conn: psycopg.Connection[Any]) -> None:
    """Create schema ``ptool_ops`` and the history table if missing (in the caller's
    transaction)."""
    conn.execute(_HISTORY_DDL)


def applied_versions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Applied versions and their checksums; empty if there is no history table."""
    if not _history_exists(conn):
        return {}
    rows = conn.execute(
        sql.SQL("SELECT version, checksum FROM {} WHERE outcome = 'applied'").format(
            sql.SQL(HISTORY_TABLE)
        )
    ).fetchall()
    return {str(version): str(digest) for version, digest in rows}


def run_verify(conn: psycopg.Connection[Any], script: str, *, label: str) -> None:
    """Run the verify queries in ``script``; raise :class:`MigrationError` unless every
    one of them returns exactly one row holding ``true``."""
    with conn.cursor() as cur:
        cur.execute(script)
        index = 0
        while True:
            index += 1
            if cur.description is not None:
                rows = cur.fetchall()
                if len(rows) != 1 or len(rows[0]) != 1 or rows[0][0] is not True:
                    raise MigrationError(
                        f"Verification of migration {label} failed: query {index} "
                        f"returned {rows!r} instead of a single true."
                    )
            if not cur.nextset():
                break


def apply_pending(conn: psycopg.Connection[Any], directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration of ``directory`` not yet recorded as applied, in order.

    Each migration runs in its own transaction together with its verify queries and
    its history row, under the advisory lock :data:`MIGRATION_LOCK_KEY`. Returns the
    versions applied (empty when up to date). Raises :class:`MigrationError` if a
    verify query fails (that migration is rolled back; earlier ones stay) or if an
    applied migration's up script has changed since it was applied.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError(
            "apply_pending needs a connection with no open transaction: commit or roll back first."
        )
    migrations = load_migrations(directory)
    applied: list[str] = []
    for migration in migrations:
        label = f"{migration.version}_{migration.name}"
        digest = migration.checksum
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            ensure_history_table(conn)
            done = applied_versions(conn)
            if migration.version in done:
                if done[migration.version] != digest:
                    raise MigrationError(
                        f"Migration {label} was applied with a different up script "
                        f"(checksum {done[migration.version][:12]}, file "
                        f"{digest[:12]}); restore the file or write a new migration."
                    )
                continue
            started = time.monotonic()
            conn.execute(migration.up.read_text(encoding="utf-8"))
            if migration.verify is not None:
                run_verify(conn, migration.verify.read_text(encoding="utf-8"), label=label)
            duration_ms = round((time.monotonic() - started) * 1000)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (version, name, checksum, duration_ms, outcome)"
                    " VALUES (%s, %s, %s, %s, 'applied')"
                    " ON CONFLICT (version) DO UPDATE SET"
                    " name = EXCLUDED.name, checksum = EXCLUDED.checksum,"
                    " applied_at = now(), applied_by = current_user,"
                    " duration_ms = EXCLUDED.duration_ms, outcome = EXCLUDED.outcome"
                ).format(sql.SQL(HISTORY_TABLE)),
                (migration.version, migration.name, digest, duration_ms),
            )
        applied.append(migration.version)
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> str | None:
    """The highest applied version, or None if nothing is applied or there is no
    history table."""
    if not _history_exists(conn):
        return None
    row = conn.execute(SCHEMA_VERSION_SQL).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _history_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (HISTORY_TABLE,)).fetchone()
    return bool(row and row[0])
