"""Surgical tenant recovery: one tenant's rows brought back as they were at a moment, from a
point-in-time copy, while everyone's writes since stay (see docs/recover.md).

* :mod:`.source` -- the copy: a restored copy beside live or a Neon branch at the point,
  made on demand (and removed after) or given (``--from``)
* :mod:`.schema` -- the tenant tables, their keys and constraints, foreign-key order
* :mod:`.rows`   -- reading one tenant's rows: streamed by key, fetched in batches
* :mod:`.plan`   -- the row diff (missing / changed / new) and the conflicts
* :mod:`.apply`  -- plan and write back in one transaction, with events, invariants, audit

:func:`recover_tenant` does it all in one call (what the CLI, tests and benches use);
the CLI uses :func:`.source.opened`, :func:`.apply.plan_tenant` and
:func:`.apply.apply_tenant` to
confirm between plan and apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptool_ops.recover.apply import Applied, Progress, apply_tenant, plan_tenant
from ptool_ops.recover.plan import Conflict, RecoveryPlan, TablePlan
from ptool_ops.recover.source import Source, opened

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.pitr.target import Target

__all__ = [
    "Applied",
    "Conflict",
    "Recovery",
    "RecoveryPlan",
    "Source",
    "TablePlan",
    "apply_tenant",
    "opened",
    "plan_tenant",
    "recover_tenant",
]


@dataclass
class Recovery:
    """A plan, and what applying it did (None: only planned)."""

    source: Source
    plan: RecoveryPlan
    applied: Applied | None = None

    @property
    def blocked(self) -> bool:
        """Conflicts stopped it (or would stop an apply): exit 1."""
        return bool(self.plan.conflict_count) and (self.applied is None or not self.applied.applied)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.plan.tenant_id,
            "tenant_slug": self.plan.tenant_slug,
            "as_of": self.plan.as_of,
            "source": self.source.to_dict(),
            "plan": self.plan.to_dict(),
            "applied": self.applied.to_dict() if self.applied else None,
            "blocked": self.blocked,
        }


def recover_tenant(
    env: Environment,
    tenant: str,
    *,
    as_of: Target | None = None,
    from_id: str | None = None,
    tables: Sequence[str] | None = None,
    restore_changed: bool = False,
    skip_conflicts: bool = False,
    apply_plan: bool = False,
    keep_clone: bool = False,
    progress: Progress | None = None,
) -> Recovery:
    """Plan (and with ``apply_plan`` apply) the recovery of ``tenant`` (id or slug)."""
    with opened(env, as_of=as_of, from_id=from_id, keep=keep_clone, progress=progress) as src:
        if not apply_plan:
            the_plan = plan_tenant(
                env, src, tenant, tables=tables, restore_changed=restore_changed, progress=progress
            )
            return Recovery(src, the_plan)
        done = apply_tenant(
            env,
            src,
            tenant,
            tables=tables,
            restore_changed=restore_changed,
            skip_conflicts=skip_conflicts,
            progress=progress,
        )
        return Recovery(src, done.plan, done)
