"""What ``ptool-ops secrets rotate`` owns in a long-lived environment, so the stack sets it once.

The stack bootstraps each rotated credential and then never writes it again:

* the login roles' passwords: set from ``ptool-ops:dbPasswords`` when the role is created;
* the Secrets Manager secret the rotation keeps the credential in, ``<secrets.namePrefix>/
  <name>``: created with its first version only -- the credential in use, as the JSON the
  rotation reads (``ptool_ops.secrets.credential.Credential``);
* the consumer's variable (the backend's ``DATABASE_URL`` for ``app-db``): set once.

Each of those resources has ``ignore_changes`` on exactly the value the rotation replaces
(and the Railway variables are created-only in the provider too, so an update for another
reason cannot write them back). What no code rotates stays the stack's and is not ignored:
the operator's URL follows Neon's owner password and host, ``booking_backup`` and
``booking_readonly`` follow ``dbPasswords``, the ops token follows ``apiToken``.

A preview rotates nothing: its credentials are its own stack's (they follow its branch), so
it has no rotation store and ignores nothing.

Each entry is what ``[environments.<env>.secrets.<name>]`` of ``ptool-ops.toml`` declares for
that environment (``ptool_ops.secrets.spec.ManagedSecret``, store
``aws-sm:<secrets.namePrefix>/<name>``); ``tests/iac/test_rotation.py`` checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.backend import DATABASE_URL_VARIABLE
from ptool_ops.privileges import APP_LOGINS, MIGRATOR
from ptool_ops.secrets.spec import Kind


@dataclass(frozen=True)
class RotatedSecret:
    #: the managed secret's name in ptool-ops.toml and the last part of its store's name
    name: str
    kind: Kind
    #: the logins it alternates between (the first one is in use after bootstrap), or the one
    roles: tuple[str, ...]
    #: the backend's variable holding its URL (a Railway consumer), if any
    railway_variable: str | None = None

    @property
    def bootstrap_role(self) -> str:
        """The login the stack's first version names: the one the consumers start on."""
        return self.roles[0]


#: every credential ``ptool-ops secrets`` rotates in a long-lived environment
ROTATED: tuple[RotatedSecret, ...] = (
    RotatedSecret(
        "app-db", "database-alternating", APP_LOGINS, railway_variable=DATABASE_URL_VARIABLE
    ),
    RotatedSecret("migrator", "database-single", (MIGRATOR,)),
)


def rotated_secrets(*, preview: bool) -> tuple[RotatedSecret, ...]:
    """What the rotation owns in an environment: everything in :data:`ROTATED`, or, for a
    preview, nothing."""
    return () if preview else ROTATED


def rotated_roles(secrets: tuple[RotatedSecret, ...]) -> frozenset[str]:
    return frozenset(role for secret in secrets for role in secret.roles)


def rotated_variables(secrets: tuple[RotatedSecret, ...]) -> frozenset[str]:
    return frozenset(s.railway_variable for s in secrets if s.railway_variable)
