"""A way back before ``migrate up``/``down``: which kind an environment gets, and taking it.

Only what really is a way back counts:

* ``neon-branch`` -- a Neon environment (``kind = "neon"``): a branch of the current
  state of ``neon_branch_id``, through :class:`ptool_ops.platform.neon.NeonClient`;
  return with a branch restore.
* ``logical-backup`` -- everywhere else: a backup through :func:`ptool_ops.backup.create`
  into the environment's repository; return with ``ptool-ops backup restore ID --in-place``.

A named restore point (``pg_create_restore_point``) is no way back on its own: recovering to
it needs a base backup taken before it and an unbroken WAL chain from there, which
ptool-ops does not take yet (point-in-time restore is a later piece of work). So a server
with working WAL archiving still gets a logical backup, and the plan says why.

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
    return BackupPlan(
        BackupKind.logical_backup,
        f"a logical backup (pg_dump) into {env.repo_url}: a restore point would need a base"
        " backup and the WAL since, which ptool-ops does not take yet",
    )


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
