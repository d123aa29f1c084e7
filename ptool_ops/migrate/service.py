"""The migration runner wired to an environment: the migrator's login, the runner settings,
the backup point and the API readiness check -- and the policy that goes with them (a
protected environment always takes a backup point), so library callers get it as the CLI
does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool_ops.environment import Environment
from ptool_ops.errors import OperationFailed, PtoolError, Refused, ServiceUnavailable
from ptool_ops.migrate.execution import RunOptions
from ptool_ops.migrate.runner import Runner

if TYPE_CHECKING:
    from ptool_ops.migrate.compat import Gate

__all__ = ["api_readiness", "gate_for", "options_for", "runner_for"]


def gate_for(env: Environment, log: Callable[[str], None] | None = None) -> Gate | None:
    """The compatibility gate from the environment's query set (None: switched off with
    ``migrate_compat_check = false``). An environment without a repository, or whose
    repository holds no query set, gets a gate with nothing to probe: ordinary migrations
    pass, a ``contract`` one is refused (nothing proves the API stopped using what it
    removes)."""
    from ptool_ops.errors import ConfigError
    from ptool_ops.migrate import queryset
    from ptool_ops.migrate.compat import Gate

    say = log or (lambda message: None)
    if not env.settings.migrate_compat_check:
        return None
    try:
        query_set = queryset.load(env.repository())
    except ConfigError as err:
        say(f"compatibility gate without a query set: {err.message}")
        query_set = None
    gate = Gate(query_set, log=say)
    say(f"compatibility gate: {len(gate.statements)} statement(s) ({gate.basis})")
    return gate


def options_for(env: Environment, *, invariants: bool = True) -> RunOptions:
    from ptool_ops.audit import actor

    s = env.settings
    return RunOptions(
        lock_timeout_ms=s.lock_timeout_ms,
        statement_timeout_ms=s.statement_timeout_ms,
        lock_retries=s.lock_retries,
        run_lock_wait_s=s.migrate_lock_wait_s,
        api_ready_timeout_s=s.api_ready_timeout_s,
        invariants=invariants,
        actor=actor(),
    )


def api_readiness(
    env: Environment, timeout_s: float, log: Callable[[str], None]
) -> Callable[[], str | None]:
    """None when the environment's API is ready (or it has none), else the reason."""

    def check() -> str | None:
        if not env.has_api:
            return None  # no API configured: nothing to wait for
        try:
            api = env.api(ops_token=False)
        except ServiceUnavailable as err:
            if env.is_local:
                log(f"API readiness not checked: {err.message}")
                return None
            return err.message
        with api:
            try:
                api.wait_ready(timeout_s)
            except PtoolError as err:
                return err.message.rstrip(".")
        return None

    return check


def runner_for(
    env: Environment,
    *,
    directory: Path | None = None,
    take_backup: bool = True,
    check_api: bool = True,
    invariants: bool = True,
    log: Callable[[str], None] | None = None,
    gate: bool = True,
) -> Runner:
    """A runner for an environment's migrations, as its migrator."""
    from ptool_ops.booking import MIGRATIONS_DIR
    from ptool_ops.migrate.backup_point import EnvironmentBackupStep

    if not take_backup and env.protected:
        raise Refused(
            f"environment {env.name!r} is protected: migrations there always take a backup point.",
            hint="Drop --no-backup-point.",
        )
    say = log or (lambda message: None)
    options = options_for(env, invariants=invariants)

    def started(action: str, details: dict[str, Any]) -> None:
        """The audit event ``started``, before a no-transaction migration's history row and
        first statement: if it cannot be written, nothing of the migration has run."""
        from ptool_ops.audit import AuditWriteFailed

        try:
            env.audit_trail.append(action, "started", details)
        except AuditWriteFailed as err:
            raise OperationFailed(
                f"the audit event of starting {details['version']}_{details['name']}"
                f" ({action}) could not be written to {err.location} ({err.reason});"
                " nothing of it was run.",
                hint="Fix the repository (credentials, space, permissions) and run the"
                " command again.",
            ) from None

    return Runner(
        env.database("migrate.run").url,
        directory=directory or env.settings.migrations_dir or MIGRATIONS_DIR,
        options=options,
        backup=EnvironmentBackupStep(env) if take_backup else None,
        api_ready=api_readiness(env, options.api_ready_timeout_s, say) if check_api else None,
        log=say,
        on_event=started,
        gate=gate_for(env, say) if gate else None,
    )
