"""What the rotation of every kind shares: reports, the step timer, the managed secret's
declaration, and its consumers built from the settings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptool_ops import tracing
from ptool_ops.errors import ConfigError, ManualActionRequired, OperationFailed, PtoolError
from ptool_ops.secrets.spec import ManagedSecret

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.secrets.consumers import Consumer
    from ptool_ops.secrets.spec import ConsumerSpec

Progress = Callable[[str, str], None]

STEPS = ("create", "set", "test", "propagate", "verify", "finish")


@dataclass
class StepResult:
    name: str
    outcome: str  # done | skipped | failed | undone
    detail: str = ""
    elapsed_s: float = 0.0


@dataclass
class RotationReport:
    secret: str
    kind: str
    store: str
    outcome: str  # rotated | rolled back | nothing to do
    token: str | None = None
    role_before: str | None = None
    role_after: str | None = None
    recovered: str | None = None  # what became of a half-finished rotation found first
    notes: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "secret": self.secret,
            "kind": self.kind,
            "store": self.store,
            "outcome": self.outcome,
            "token": self.token,
            "role_before": self.role_before,
            "role_after": self.role_after,
            "recovered": self.recovered,
            "notes": self.notes,
            "consumers": self.consumers,
            "steps": [vars(s) for s in self.steps],
            "error": self.error,
        }


def spec_of(env: Environment, name: str) -> ManagedSecret:
    specs = env.settings.managed_secrets()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise ConfigError(
            f"{name!r} is not a managed secret of environment {env.name!r} (managed: {known}).",
            hint=f"Declare it in [environments.{env.name}.secrets.{name}] of ptool-ops.toml;"
            " 'ptool-ops secrets list' shows what is managed.",
        )
    return specs[name]


def consumer_for(env: Environment, name: str, kind: str, spec: ConsumerSpec) -> Consumer:
    """The consumer ``spec`` names, for secret ``name`` of ``kind``."""
    settings = env.settings
    timeout = settings.secret_deploy_timeout_s
    if spec.type == "local":
        from ptool_ops.secrets.local import LocalConsumer

        local = env.local
        if local is None:
            raise ConfigError(
                f"secret {name!r} names the consumer 'local', which only the local"
                " environment has.",
                hint="Use railway or vercel consumers for a deployed environment.",
            )
        return LocalConsumer(local, kind, spec.variable)
    if spec.type == "railway":
        from ptool_ops.platform.railway import RailwayClient
        from ptool_ops.secrets.consumers import RailwayConsumer

        ids = (
            settings.railway_project_id,
            settings.railway_environment_id,
            settings.railway_service_id,
        )
        if not all(ids):
            raise ConfigError(
                f"secret {name!r} has a Railway consumer, but environment"
                f" {env.name!r} lacks railway_project_id, railway_environment_id or"
                " railway_service_id.",
                hint="Set them (the stack's outputs name them) in ptool-ops.toml.",
            )
        project, environment, service = (str(i) for i in ids)
        return RailwayConsumer(
            RailwayClient.from_settings(settings),
            project_id=project,
            environment_id=environment,
            service_id=service,
            timeout_s=timeout,
            interval_s=settings.secret_deploy_poll_s,
        )
    from ptool_ops.platform.vercel import VercelClient
    from ptool_ops.secrets.consumers import VercelConsumer

    if not settings.vercel_project_id:
        raise ConfigError(
            f"secret {name!r} has a Vercel consumer, but environment"
            f" {env.name!r} has no vercel_project_id.",
            hint="Set it (the stack's output names it) in ptool-ops.toml.",
        )
    return VercelConsumer(
        VercelClient.from_settings(settings),
        project_id=settings.vercel_project_id,
        targets=tuple(spec.targets),
        timeout_s=timeout,
        interval_s=settings.secret_deploy_poll_s,
    )


@contextmanager
def timed(report: RotationReport, name: str, progress: Progress) -> Iterator[StepResult]:
    step = StepResult(name, "done")
    report.steps.append(step)
    progress(name, "")
    start = time.monotonic()
    try:
        with tracing.span(name) as traced:
            yield step
            traced.set(outcome=step.outcome)
    except BaseException:
        step.outcome = "failed"
        raise
    finally:
        step.elapsed_s = round(time.monotonic() - start, 3)


@dataclass
class RevokeReport:
    secret: str
    role: str | None
    version: str | None
    outcome: str  # revoked | nothing to revoke
    sessions: list[dict[str, Any]] = field(default_factory=list)
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return vars(self)


def ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def failed_step(report: RotationReport) -> str:
    return next((s.name for s in report.steps if s.outcome == "failed"), "start")


def rolled_back(
    name: str, report: RotationReport, err: PtoolError, undone: list[str]
) -> OperationFailed:
    """The error of a rotation that failed and was undone (the report in its details)."""
    report.outcome, report.error = "rolled back", err.message
    report.steps.append(StepResult("rollback", "done", "; ".join(undone)))
    return OperationFailed(
        f"rotating {name} failed at {failed_step(report)}: {err.message.rstrip('.')}; rolled"
        f" back ({'; '.join(undone)}).",
        hint=err.hint or f"Fix the cause, then run 'ptool-ops secrets rotate {name}' again.",
        details={"report": report.to_dict()},
    )


def rollback_failed(
    name: str, report: RotationReport, err: PtoolError, second: PtoolError, what_now: str
) -> ManualActionRequired:
    """The error of a rotation whose undoing failed too: ``what_now`` says how to recover."""
    report.outcome, report.error = "rollback failed", second.message
    return ManualActionRequired(
        f"rotating {name} failed at {failed_step(report)} ({err.message.rstrip('.')}), and"
        f" rolling back failed too: {second.message.rstrip('.')}.",
        hint=f"{what_now}, then run 'ptool-ops secrets rotate {name}' again to finish or clear"
        " the rotation.",
        details={"report": report.to_dict()},
    )
