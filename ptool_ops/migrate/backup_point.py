"""A way back before ``migrate up``/``down``: which kind an environment gets, and taking it.

In order of preference:

* ``neon-branch`` -- a Neon environment (``kind = "neon"``): a branch of the current
  state of ``neon_branch_id``, through :class:`ptool_ops.platform.neon.NeonClient`;
  return with a branch restore.
* ``restore-point`` -- self-managed PostgreSQL whose WAL is archived (``archive_mode``
  on and ``pg_stat_archiver`` showing archiving works: something archived, no failure
  since the last success): ``pg_create_restore_point`` then ``pg_switch_wal`` so the
  segment holding it gets archived; return with point-in-time recovery to that name.
* ``logical-backup`` -- otherwise: a backup through :func:`ptool_ops.backup.create` into
  the environment's repository; return with ``ptool-ops backup restore ID --in-place``.

:func:`choose` decides (``migrate plan`` shows it) without changing anything;
:func:`take` takes the point.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from ptool_ops.errors import ConfigError

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

__all__ = ["BackupKind", "BackupPlan", "BackupPoint", "EnvironmentBackupStep", "choose", "take"]


class BackupKind(enum.StrEnum):
    neon_branch = "neon-branch"
    restore_point = "restore-point"
    logical_backup = "logical-backup"
    none = "none"


@dataclass(frozen=True)
class BackupPlan:
    kind: BackupKind
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "reason": self.reason}


@dataclass(frozen=True)
class BackupPoint:
    kind: BackupKind
    ref: str  # branch id, restore point name, backup id
    taken_at: str
    restore_command: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "kind": self.kind.value}

    @property
    def label(self) -> str:
        return f"{self.kind.value}:{self.ref}"


@dataclass(frozen=True)
class ArchiveState:
    archive_mode: str
    archived_count: int
    failed_count: int
    last_archived: datetime | None
    last_failed: datetime | None
    can_create: bool

    @property
    def working(self) -> bool:
        if self.archive_mode not in ("on", "always") or self.archived_count == 0:
            return False
        return self.last_failed is None or (
            self.last_archived is not None and self.last_archived > self.last_failed
        )


def archive_state(conn: psycopg.Connection[Any]) -> ArchiveState:
    row = conn.execute(
        "SELECT current_setting('archive_mode'), archived_count, failed_count,"
        " last_archived_time, last_failed_time,"
        " has_function_privilege('pg_create_restore_point(text)', 'EXECUTE')"
        " AND has_function_privilege('pg_switch_wal()', 'EXECUTE')"
        " AND NOT pg_is_in_recovery()"
        " FROM pg_stat_archiver"
    ).fetchone()
    assert row is not None
    return ArchiveState(str(row[0]), int(row[1]), int(row[2]), row[3], row[4], bool(row[5]))


def choose(env: Environment, conn: psycopg.Connection[Any]) -> BackupPlan:
    """Which backup point a run would take (reads the server, changes nothing)."""
    settings = env.settings
    if settings.kind == "neon":
        if not settings.neon_project_id or not settings.neon_branch_id:
            raise ConfigError(
                f"environment {settings.name!r} is a Neon environment without"
                " neon_project_id and neon_branch_id, so no backup branch can be made.",
                hint="Set both in ptool-ops.toml (or PTOOL_NEON_PROJECT_ID/_BRANCH_ID).",
            )
        return BackupPlan(
            BackupKind.neon_branch,
            f"Neon: a branch of {settings.neon_branch_id} in project {settings.neon_project_id}",
        )
    state = archive_state(conn)
    if state.working and state.can_create:
        return BackupPlan(
            BackupKind.restore_point,
            f"WAL archiving works ({state.archived_count} segments archived): a named"
            " restore point",
        )
    why = (
        f"archive_mode is {state.archive_mode}"
        if state.archive_mode not in ("on", "always")
        else "WAL archiving is not working (nothing archived or failing)"
        if not state.working
        else "this role may not create restore points (EXECUTE on pg_create_restore_point"
        " and pg_switch_wal)"
    )
    return BackupPlan(BackupKind.logical_backup, f"{why}: a logical backup (pg_dump)")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def take(
    env: Environment,
    conn: psycopg.Connection[Any],
    plan: BackupPlan,
    *,
    label: str,
) -> BackupPoint:
    """Take the point ``plan`` names; ``label`` (e.g. ``up-0005``) goes into its name."""
    taken_at = datetime.now(UTC).isoformat(timespec="seconds")
    settings = env.settings
    name_of_env = env.name
    if plan.kind is BackupKind.neon_branch:
        assert settings.neon_project_id and settings.neon_branch_id
        name = f"ptool-pre-migrate-{label}-{_stamp()}".lower()
        with env.neon() as neon:
            created = neon.create_branch(
                settings.neon_project_id, name=name, parent_id=settings.neon_branch_id
            )
        return BackupPoint(
            plan.kind,
            created.branch.id,
            taken_at,
            f"neonctl branches restore {settings.neon_branch_id} {created.branch.id}"
            f" --project-id {settings.neon_project_id}"
            f" --preserve-under-name {name}-replaced",
        )
    if plan.kind is BackupKind.restore_point:
        name = f"ptool-migrate-{label}-{_stamp()}"
        row = conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()
        lsn = str(row[0]) if row else "?"
        conn.execute("SELECT pg_switch_wal()")
        return BackupPoint(
            plan.kind,
            name,
            taken_at,
            f"point-in-time recovery of environment {name_of_env!r} to restore point {name!r}"
            f" (recovery_target_name = '{name}', LSN {lsn}) from a base backup taken"
            f" before {taken_at}",
        )
    if plan.kind is BackupKind.logical_backup:
        from ptool_ops import backup

        result = backup.create(env, exact_counts=False)
        return BackupPoint(
            plan.kind,
            result.id,
            taken_at,
            f"ptool-ops --env {name_of_env} backup restore {result.id} --in-place",
        )
    raise ValueError(f"no backup point to take for plan {plan.kind.value}")


class EnvironmentBackupStep:
    """The runner's backup step for an environment (:class:`ptool_ops.migrate.runner.
    BackupStep`)."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def plan(self, conn: psycopg.Connection[Any]) -> BackupPlan:
        return choose(self.env, conn)

    def take(self, conn: psycopg.Connection[Any], plan: BackupPlan, label: str) -> BackupPoint:
        return take(self.env, conn, plan, label=label)
