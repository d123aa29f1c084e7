"""Dynamic provider inside a database that already has its roles: ``RolePasswords``.

A preview environment is a Neon branch of staging, and a branch is a copy of its parent's
cluster: the booking roles, their memberships, grants and password hashes come with it. The
preview must not create roles (``CREATE ROLE`` would fail on every one of them), and it should
not keep staging's passwords either (a preview's URL would then open staging). So it logs in
as the branch's owner (``booking_owner``, which created the roles on staging and so holds
ADMIN OPTION on them, plus CREATEROLE) and gives each login role the preview's own password:
``ALTER ROLE ... PASSWORD``, in one transaction, after checking that every role is there
and can log in. Nothing else changes: attributes, memberships and grants stay the parent's,
which are the privilege model's.

* ``create`` / ``update`` set the passwords (idempotent: setting a password twice is the same).
* ``delete`` does nothing: the roles belong to the branch, and the branch goes with the stack;
  the parent's passwords cannot be put back (only their hashes were ever on the branch).
* A change of host, port or database (the branch was replaced) replaces the resource, so the
  new branch gets the passwords too.
* Connecting retries while the endpoint wakes up (a new branch's compute may still be
  starting); a refused login does not retry.

The passwords are inputs, so they are in state like every other input -- as secrets (the
resource declares them ``additional_secret_outputs``), as the URLs in Secrets Manager versions
and Railway variables are.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar, Literal

import pulumi
from pulumi.dynamic import CreateResult, ReadResult, Resource, UpdateResult
from pydantic import Field, field_validator

from components.providers._base import PROVIDER_VERSION, InputsProvider, ProviderInputs, outputs
from ptool_ops.errors import OperationFailed

_ROLE = r"^[a-z_][a-z0-9_]{0,62}$"
CONNECT_ATTEMPTS = 6
CONNECT_TIMEOUT_S = 30
APPLICATION_NAME = "ptool-ops stack (role passwords)"
_sleep = time.sleep  # (tests replace it)


class RolePasswordsInputs(ProviderInputs):
    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(pattern=_ROLE)
    owner_role: str = Field(pattern=_ROLE)
    owner_password: str = Field(min_length=1)
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "require"
    passwords: dict[str, str]

    @field_validator("passwords")
    @classmethod
    def _roles(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("no role to set a password for")
        bad = sorted(k for k in value if not re.match(_ROLE, k))
        if bad:
            raise ValueError(f"not a plain role name: {', '.join(bad)}")
        empty = sorted(k for k, v in value.items() if not v)
        if empty:
            raise ValueError(f"empty password for {', '.join(empty)}")
        return value


#: a login the server refused, or a client set-up that cannot work: trying again won't help
_FINAL = re.compile(
    r"authentication failed|no password supplied|pg_hba\.conf|does not exist"
    r"|permission denied|not permitted to log in|server does not support SSL"
    r"|SSL support is not compiled in|invalid sslmode value",
    re.IGNORECASE,
)


def _retryable(err: Exception) -> bool:
    """A network error or a server still starting (a new branch's compute waking), not a
    refused login. Connection errors carry no SQLSTATE in psycopg: the message tells."""
    sqlstate = getattr(err, "sqlstate", None)
    if sqlstate is not None and sqlstate not in ("57P03", "08006", "08001"):
        return False
    return not _FINAL.search(str(err))


class RolePasswordsProvider(InputsProvider):
    INPUTS = RolePasswordsInputs
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset({"host", "port", "database"})

    def _connect(self, inputs: RolePasswordsInputs) -> Any:
        import psycopg

        where = f"{inputs.owner_role}@{inputs.host}:{inputs.port}/{inputs.database}"
        delay = 1.0
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                return psycopg.connect(
                    host=inputs.host,
                    port=inputs.port,
                    dbname=inputs.database,
                    user=inputs.owner_role,
                    password=inputs.owner_password,
                    sslmode=inputs.sslmode,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    application_name=APPLICATION_NAME,
                    autocommit=True,
                )
            except psycopg.OperationalError as err:
                if attempt == CONNECT_ATTEMPTS or not _retryable(err):
                    first = str(err).strip().splitlines()[0] if str(err).strip() else "error"
                    raise OperationFailed(f"cannot log in as {where}: {first}") from None
                _sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply(self, inputs: RolePasswordsInputs) -> None:
        from ptool_ops import pg

        names = sorted(inputs.passwords)
        with self._connect(inputs) as conn:
            rows = conn.execute(
                "SELECT rolname, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
                [names],
            ).fetchall()
            found = {str(name): bool(login) for name, login in rows}
            missing = [n for n in names if n not in found]
            if missing:
                raise OperationFailed(
                    f"database {inputs.database} on {inputs.host} has no role "
                    f"{', '.join(missing)}; a preview creates no roles, it uses those its parent's"
                    " stack created (run the parent environment's pulumi up first)."
                )
            nologin = [n for n in names if not found[n]]
            if nologin:
                raise OperationFailed(
                    f"role {', '.join(nologin)} on {inputs.host} cannot log in (NOLOGIN); only"
                    " login roles get a password."
                )
            with conn.transaction():
                for name in names:
                    pg.set_password(conn, name, inputs.passwords[name])

    @staticmethod
    def _id(inputs: RolePasswordsInputs) -> str:
        return f"{inputs.host}:{inputs.port}/{inputs.database}"

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs: RolePasswordsInputs = self.parse(props)
        self._apply(inputs)
        return CreateResult(self._id(inputs), outputs(inputs))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # passwords cannot be read back; what was set is what state says
        inputs: RolePasswordsInputs = self.parse(props)
        return ReadResult(id_, outputs(inputs))

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs: RolePasswordsInputs = self.parse(news)
        self._apply(inputs)
        return UpdateResult(outputs(inputs))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # the roles are the branch's, and go with it; the parent's passwords cannot be restored
        return None


class RolePasswords(Resource, module="postgres", name="RolePasswords"):
    """New passwords for existing login roles (``pulumi-python:dynamic/postgres:RolePasswords``);
    ``owner_password`` and ``passwords`` are secret."""

    def __init__(
        self,
        resource_name: str,
        *,
        host: pulumi.Input[str],
        database: pulumi.Input[str],
        owner_role: pulumi.Input[str],
        owner_password: pulumi.Input[str],
        passwords: pulumi.Input[dict[str, str]],
        port: pulumi.Input[int] = 5432,
        sslmode: pulumi.Input[str] = "require",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "host": host,
            "port": port,
            "database": database,
            "owner_role": owner_role,
            "owner_password": pulumi.Output.secret(owner_password),
            "sslmode": sslmode,
            "passwords": pulumi.Output.secret(passwords),
            "version": PROVIDER_VERSION,
        }
        secret = pulumi.ResourceOptions(additional_secret_outputs=["owner_password", "passwords"])
        super().__init__(
            RolePasswordsProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secret),
        )
