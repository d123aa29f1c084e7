"""The local environment as a rotation's consumer: its ``secrets.json`` is what Railway's
variables are to a deployed API, and the stand-in's ``SIGHUP`` reload is its redeploy."""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ptool_ops import privileges
from ptool_ops.errors import OperationFailed

if TYPE_CHECKING:
    from ptool_ops.booking.api import BookingApi
    from ptool_ops.local.facts import LocalFacts, LocalSecrets

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


def _update(facts: LocalFacts, change: Callable[[LocalSecrets], LocalSecrets]) -> None:
    from ptool_ops.local.env import write_secrets

    with _locked(facts):
        creds = facts.secrets()
        if creds is None:
            raise OperationFailed(
                f"the local environment has no {facts.paths.secrets}.",
                hint="Run 'ptool-ops local up' first.",
            )
        write_secrets(facts.paths, facts.server().port, change(creds))


def set_password(facts: LocalFacts, role: str, password: str, *, serve: bool) -> None:
    """Record ``role``'s password in the local environment's files; ``serve``: the
    stand-in API logs in as it from now on."""
    _update(
        facts,
        lambda creds: replace(
            creds,
            passwords={**creds.passwords, role: password},
            app_role=role if serve else creds.app_role,
        ),
    )


class LocalConsumer:
    """The local environment's files, and its stand-in API reloaded (SIGHUP) until it uses
    what they say: as the new login (its readiness names the role), accepting the new ops
    token, or signing tenant tokens with the new key."""

    def __init__(self, facts: LocalFacts, kind: str, variable: str) -> None:
        self.facts = facts
        self.kind = kind
        self.variable = variable
        self.serves_api = kind != "database-single"
        self.label = "the local environment" + (" and its stand-in API" if self.serves_api else "")

    def apply(
        self,
        variables: Mapping[str, SecretStr],
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        value = variables[self.variable].get_secret_value()
        check: Callable[[], str | None]
        if self.kind.startswith("database-"):
            from ptool_ops import pg

            params = pg._params(value)
            role, password = str(params["user"]), str(params["password"])
            set_password(self.facts, role, password, serve=self.serves_api)
            if not self.serves_api or role not in privileges.APP_LOGINS:
                return
            what, check = f"serving as {role}", lambda: self._serving_as(role)
        elif self.kind == "api-token":
            previous = variables.get(f"{self.variable}_PREVIOUS")
            earlier = [t for t in (previous.get_secret_value() if previous else "").split(",") if t]
            _update(self.facts, lambda c: replace(c, api_token=value, api_tokens_previous=earlier))
            what, check = "accepting the new ops token", lambda: self._accepts(value)
        else:
            keyset = json.loads(value)
            _update(self.facts, lambda c: replace(c, signing_keys=keyset))
            kid = str(keyset["signing"])
            what, check = f"signing with key {kid}", lambda: self._signs_with(kid)
        from ptool_ops.local import api as local_api

        if not local_api.reload(self.facts.paths):
            return  # no stand-in runs: it reads the files when it starts
        if progress:
            progress(f"stand-in API reloading, until {what}")
        self._wait(what, check)

    def _wait(self, what: str, check: Callable[[], str | None]) -> None:
        from ptool_ops.errors import ServiceUnavailable

        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        seen: str | None = None
        while time.monotonic() < deadline:
            try:
                seen = check()
                if seen is None:
                    return
            except ServiceUnavailable as err:
                seen = err.message.rstrip(".")
            time.sleep(0.2)
        raise OperationFailed(
            f"the local stand-in API was not {what} within {RELOAD_TIMEOUT_S:.0f} s after its"
            f" reload ({seen}).",
            hint=f"Its log, {self.facts.paths.log_dir / 'api.log'}, says why.",
        )

    def _api(self, token: str | None = None) -> BookingApi:
        from ptool_ops.booking.api import BookingApi

        running = self.facts.api()
        if running is None:
            raise OperationFailed("the local stand-in API stopped during the rotation.")
        return BookingApi(running[0], SecretStr(token or running[1]), attempts=1)

    def _serving_as(self, role: str) -> str | None:
        with self._api() as api:
            readiness = api.ready()
        if readiness.ready and readiness.role == role:
            return None
        return f"it serves as {readiness.role or 'nothing'}"

    def _accepts(self, token: str) -> str | None:
        from ptool_ops.booking.api import ApiError

        with self._api(token) as api:
            try:
                api.maintenance_state()
            except ApiError as err:
                return f"the new token gets HTTP {err.status}"
        return None

    def _signs_with(self, kid: str) -> str | None:
        with self._api() as api:
            token = str(api.smoke_fixture()["tenant_token"])
        if token.startswith(f"v2.{kid}."):
            return None
        return f"its tokens are signed with {token.split('.')[1] if '.' in token else '?'}"
