"""The one context object every command receives (built by the root callback)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from ptool_ops.console import Output, Redactor
from ptool_ops.errors import PtoolError, Refused

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.settings import EnvironmentSettings


@dataclass
class AppContext:
    env_name: str | None
    output: Output
    redactor: Redactor
    yes: bool = False
    dry_run: bool = False
    verbose: int = 0
    debug: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: EnvironmentSettings | None = None
    _env: Environment | None = None
    #: the context of the command being run (the last to ask for this object), whose path
    #: and arguments the audit trail records
    command: typer.Context | None = None

    @property
    def settings(self) -> EnvironmentSettings:
        """Loaded on first use, so ``--help`` never pays for pydantic."""
        if self._settings is None:
            from ptool_ops.settings import load_environment

            settings = load_environment(self.env_name, overrides=self.overrides)
            self.redactor.add(*settings.secret_values())
            if settings.is_local:
                from ptool_ops.local.facts import local_secret_values

                self.redactor.add(*local_secret_values(settings.local_dir))
            self._settings = settings
        return self._settings

    @property
    def env(self) -> Environment:
        """The environment the command acts on, built once; every secret it resolves is
        added to the redactor before anything can print it."""
        if self._env is None:
            from ptool_ops.environment import Environment

            self._env = Environment(
                self.settings,
                on_secret=self.redactor.add,
                redact=self.redactor.data,
                invocation=invocation(self.command),
            )
        return self._env

    def other_env(self, name: str) -> Environment:
        """Another environment of the same configuration (disaster recovery reads one
        environment's repository into another's server); its secrets are redacted too."""
        from ptool_ops.environment import Environment
        from ptool_ops.settings import load_environment

        settings = load_environment(name)
        self.redactor.add(*settings.secret_values())
        return Environment(
            settings,
            on_secret=self.redactor.add,
            redact=self.redactor.data,
            invocation=invocation(self.command),
        )

    def fail(self, err: PtoolError) -> NoReturn:
        """End a command whose result was already shown: its sentence for people, its code.

        With ``--output json`` the result on stdout already says what failed, so nothing
        more is printed there (one JSON document per run).
        """
        if not self.output.json:
            self.output.error(err.message, err.hint, err.to_dict())
        raise typer.Exit(err.exit_code)

    def confirm(self, action: str) -> None:
        """Ask before something destructive; ``--yes`` answers, no terminal means no."""
        if self.yes:
            return
        if not sys.stdin.isatty():
            raise Refused(
                f"{action} needs confirmation and there is no terminal to ask.",
                hint="Rerun with --yes once you are sure.",
            )
        if not typer.confirm(f"{action}. Continue?", default=False, err=True):
            raise Refused(f"{action}: not confirmed, nothing was changed.")


#: option names whose values are never recorded, whatever the redactor knows
_SECRET_WORDS = ("password", "token", "secret")


def invocation(ctx: typer.Context | None) -> dict[str, Any] | None:
    """The command being run, for the audit trail: its path (``ptool-ops backup create``)
    and its parsed arguments; values of options named like secrets are masked (the
    redactor masks every secret value it knows when the event is written)."""
    from ptool_ops.console import MASK, to_jsonable

    if ctx is None:
        return None
    arguments: dict[str, Any] = {}
    for name, value in ctx.params.items():
        if value is None:
            continue
        if any(word in name for word in _SECRET_WORDS) and isinstance(value, str):
            value = MASK
        arguments[name] = to_jsonable(value)
    root = ctx.find_root()
    for flag in ("yes", "dry_run"):
        if root.params.get(flag):
            arguments[flag] = True
    # the program's own name, however it was started (python -m ptool_ops, a test runner)
    words = []
    node: Any = ctx
    while node is not None and node is not root:
        words.append(node.info_name or "")
        node = node.parent
    return {"command": " ".join(["ptool-ops", *reversed(words)]), "arguments": arguments}


def get(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    obj.command = ctx
    return obj
