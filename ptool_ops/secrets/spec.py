"""Managed secrets: what ``ptool-ops secrets`` rotates, where each is stored, who uses it.

Declared per environment in ``ptool-ops.toml``::

    [environments.prod.secrets.app-db]
    kind = "database-alternating"          # two logins, one group holding the grants
    roles = ["booking_app_a", "booking_app_b"]
    store = "aws-sm:prod/booking/app-db"   # or file:/path for a file store
    consumers = [{ type = "railway", variable = "DATABASE_URL" }]

Kinds:

* ``database-alternating`` -- the application's credential: each rotation gives the login
  that is *not* in use a new password and points the consumers at it, so the login in use
  stays valid (the way back) until ``revoke-previous``;
* ``database-single`` -- one role (the migrator): its password changes in place, the old one
  stops working at once, so consumers are updated right after it and a failure sets the old
  password back;
* ``api-token`` -- the API's ops token: consumers get the new one in ``<variable>`` and the
  one it replaces in ``<variable>_PREVIOUS`` (accepted until ``revoke-previous``);
* ``signing-keys`` -- the API's tenant-token key set (a ``kid`` per key): first every
  consumer learns the new key beside the current one, then signing switches to it; tokens
  signed with the previous key verify until ``revoke-previous``.

The ``local`` environment manages its own without any declaration (:func:`local_secrets`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ptool_ops.privileges.model import APP_LOGINS, MIGRATOR

Kind = Literal["database-alternating", "database-single", "api-token", "signing-keys"]
VercelTarget = Literal["production", "preview", "development"]
DATABASE_KINDS: tuple[str, ...] = ("database-alternating", "database-single")
#: secrets of the application itself, rotated with an overlap in the API (it accepts the
#: previous value until revoke-previous) instead of in the database
APPLICATION_KINDS: tuple[str, ...] = ("api-token", "signing-keys")


class ConsumerSpec(BaseModel):
    """Something that holds the secret's value and must get the new one."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["railway", "vercel", "local"] = Field(
        description="railway: the environment's Railway service variables; vercel: its Vercel"
        " project's env vars; local: the local environment's stand-in API."
    )
    variable: str = Field(
        default="DATABASE_URL", description="The variable that holds the value (a URL)."
    )
    targets: list[VercelTarget] = Field(
        default_factory=lambda: list[VercelTarget](["production"]),
        description="vercel: the env var's targets.",
    )


class ManagedSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    store: str = Field(description="aws-sm:NAME (AWS Secrets Manager) or file:PATH.")
    roles: list[str] = Field(
        default_factory=list,
        description="database-alternating: the two logins; database-single: the one role.",
    )
    consumers: list[ConsumerSpec] = Field(default_factory=list)
    password_length: int = Field(default=32, ge=20, le=100)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        if not sep or scheme not in ("aws-sm", "file") or not rest:
            raise ValueError("must look like aws-sm:NAME or file:PATH")
        return value

    @model_validator(mode="after")
    def _roles(self) -> ManagedSecret:
        from ptool_ops.privileges.model import is_plain

        if self.kind in APPLICATION_KINDS:
            if self.roles:
                raise ValueError(f"a {self.kind} secret names no roles")
            return self
        wanted = 2 if self.kind == "database-alternating" else 1
        if len(self.roles) != wanted or len(set(self.roles)) != wanted:
            raise ValueError(f"a {self.kind} secret names exactly {wanted} distinct role(s)")
        for name in self.roles:
            if not is_plain(name):
                raise ValueError(f"role {name!r} is not a plain lower-case SQL identifier")
        return self


def local_secrets(local_dir: Path) -> dict[str, ManagedSecret]:
    """The local environment's own: file stores in its directory, the stand-in API (and
    its files) as consumer."""
    store_dir = local_dir / "secret-store"
    local = [ConsumerSpec(type="local")]
    return {
        "app-db": ManagedSecret(
            kind="database-alternating",
            store=f"file:{store_dir / 'app-db.json'}",
            roles=list(APP_LOGINS),
            consumers=local,
        ),
        "migrator": ManagedSecret(
            kind="database-single",
            store=f"file:{store_dir / 'migrator.json'}",
            roles=[MIGRATOR],
            consumers=local,
        ),
        "api-token": ManagedSecret(
            kind="api-token", store=f"file:{store_dir / 'api-token.json'}", consumers=local
        ),
        "signing-keys": ManagedSecret(
            kind="signing-keys", store=f"file:{store_dir / 'signing-keys.json'}", consumers=local
        ),
    }
