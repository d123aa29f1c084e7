"""A way back before ``migrate up``/``down``: which kind an environment gets, and taking it.

Only what really is a way back counts:

* ``neon-branch`` -- a Neon environment (``kind = "neon"``): a branch of the current
  state of ``neon_branch_id``, through :class:`ptool_ops.platform.neon.NeonClient`;
  return with a branch restore.
* ``restore-point`` -- a self-managed server whose repository holds a base backup of its
  current timeline and an unbroken WAL archive since (``pitr window`` is clean) and whose
  archiver's last attempt succeeded: ``ptool-ops pitr mark``; return with ``ptool-ops pitr
  restore --restore-point NAME`` (a copy beside live, checked, then promoted).
* ``logical-backup`` -- everywhere else (the plan says why no restore point): a backup
  through :func:`ptool_ops.backup.create` into the environment's repository; return with
  ``ptool-ops backup restore ID --in-place``.

:func:`choose` decides (``migrate plan`` shows it) without changing anything;
:func:`take` takes the point. The point's ``restore_command`` is the exact command back.
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


@dataclass(frozen=True)
class BackupPlan:
    kind: BackupKind
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "reason": self.reason}


@dataclass(frozen=True)
class BackupPoint:
    kind: BackupKind
    ref: str  # branch id, backup id
    taken_at: str
    restore_command: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "kind": self.kind.value}

    @property
    def label(self) -> str:
        return f"{self.kind.value}:{self.ref}"


def choose(env: Environment, conn: psycopg.Connection[Any]) -> BackupPlan:
    """Which backup point a run would take (reads the settings, changes nothing)."""
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
    covered = _pitr_covers(env, conn)
    if covered is None:
        return BackupPlan(
            BackupKind.restore_point,
            f"a restore point ('ptool-ops pitr mark'): base backups and an unbroken WAL "
            f"archive in {env.repo_url} cover it",
        )
    return BackupPlan(
        BackupKind.logical_backup,
        f"a logical backup (pg_dump) into {env.repo_url}: a restore point is no way back "
        f"here because {covered}",
    )


def _pitr_covers(env: Environment, conn: psycopg.Connection[Any]) -> str | None:
    """None when a restore point made now could be restored to (a base backup of this
    server's timeline, no gap after it, archiving working); else why not."""
    from ptool_ops.pitr import window

    try:
        with conn.transaction():  # a savepoint inside the runner's transaction
            row = _archive_facts(conn)
    except psycopg.errors.InsufficientPrivilege:
        return "this login cannot read the server's control data (pg_control_system)"
    if row[0] == "off":
        return "the server does not archive its WAL"
    if row[3]:
        return "the server's last archive attempt failed"
    found = window.window(env.repository())
    if found.identity is None or found.identity["system_identifier"] != str(row[1]):
        return "the repository holds no WAL archive of this server"
    if found.current_timeline != int(row[2]) or not found.ok:
        return "no base backup covers the current timeline without a gap (see 'pitr window')"
    return None


def _archive_facts(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT current_setting('archive_mode'),"
        " (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),"
        " (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),"
        " (SELECT last_failed_time IS NOT NULL AND (last_archived_time IS NULL"
        "  OR last_failed_time > last_archived_time) FROM pg_catalog.pg_stat_archiver)"
    ).fetchone()
    assert row is not None
    return tuple(row)


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
        from ptool_ops.pitr import restore

        point = restore.mark(env, f"ptool-pre-migrate-{label}-{_stamp()}".lower())
        return BackupPoint(
            plan.kind,
            point["name"],
            taken_at,
            f"ptool-ops --env {env.name} pitr restore --restore-point {point['name']}",
        )
    from ptool_ops import backup

    result = backup.create(env, exact_counts=False)
    return BackupPoint(
        plan.kind,
        result.id,
        taken_at,
        f"ptool-ops --env {env.name} backup restore {result.id} --in-place",
    )


class EnvironmentBackupStep:
    """The runner's backup step for an environment (:class:`ptool_ops.migrate.runner.
    BackupStep`)."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def plan(self, conn: psycopg.Connection[Any]) -> BackupPlan:
        return choose(self.env, conn)

    def take(self, conn: psycopg.Connection[Any], plan: BackupPlan, label: str) -> BackupPoint:
        return take(self.env, conn, plan, label=label)
