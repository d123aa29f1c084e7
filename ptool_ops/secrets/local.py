"""The local environment as a rotation's consumer: its ``secrets.json`` is what Railway's
variables are to a deployed API, and the stand-in's ``SIGHUP`` reload is its redeploy."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ptool_ops import privileges
from ptool_ops.errors import OperationFailed

if TYPE_CHECKING:
    from ptool_ops.local.facts import LocalFacts

#: how long the stand-in may take to log in with the new credential after SIGHUP
RELOAD_TIMEOUT_S = 30.0


@contextmanager
def _locked(facts: LocalFacts) -> Iterator[None]:
    """One writer of secrets.json at a time (two rotations, or a rotation and a revoke)."""
    lock = facts.paths.root / ".secrets.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def set_password(facts: LocalFacts, role: str, password: str, *, serve: bool) -> None:
    """Record ``role``'s password in the local environment's files; ``serve``: the
    stand-in API logs in as it from now on."""
    from ptool_ops.local.env import write_secrets

    with _locked(facts):
        creds = facts.secrets()
        if creds is None:
            raise OperationFailed(
                f"the local environment has no {facts.paths.secrets}.",
                hint="Run 'ptool-ops local up' first.",
            )
        passwords = {**creds.passwords, role: password}
        updated = replace(creds, passwords=passwords, app_role=role if serve else creds.app_role)
        write_secrets(facts.paths, facts.server().port, updated)


class LocalConsumer:
    """Puts a database credential into the local environment's files; for the
    application's logins also makes the stand-in API reload and waits until it serves as
    the new login (its readiness names the role it uses)."""

    def __init__(self, facts: LocalFacts, variable: str, *, serves_api: bool) -> None:
        self.facts = facts
        self.variable = variable
        self.serves_api = serves_api
        self.label = "the local environment" + (" and its stand-in API" if serves_api else "")

    def apply(
        self,
        variables: Mapping[str, SecretStr],
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        from ptool_ops import pg

        params = pg._params(variables[self.variable])
        role, password = str(params["user"]), str(params["password"])
        set_password(self.facts, role, password, serve=self.serves_api)
        if not self.serves_api or role not in privileges.APP_LOGINS:
            return
        from ptool_ops.local import api as local_api

        if not local_api.reload(self.facts.paths):
            return  # no stand-in runs: it reads the file when it starts
        if progress:
            progress(f"stand-in API reloading as {role}")
        self._wait_serving(role)

    def _wait_serving(self, role: str) -> None:
        from ptool_ops.booking.api import BookingApi
        from ptool_ops.errors import ServiceUnavailable

        running = self.facts.api()
        if running is None:
            return
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        seen: str | None = None
        with BookingApi(running[0]) as api:
            while time.monotonic() < deadline:
                try:
                    readiness = api.ready()
                    seen = readiness.role
                    if readiness.ready and readiness.role == role:
                        return
                except ServiceUnavailable:
                    pass
                time.sleep(0.2)
        raise OperationFailed(
            f"the local stand-in API did not start serving as {role} within"
            f" {RELOAD_TIMEOUT_S:.0f} s after its reload (it serves as {seen or 'nothing'}).",
            hint=f"Its log, {self.facts.paths.log_dir / 'api.log'}, says why the login failed.",
        )
