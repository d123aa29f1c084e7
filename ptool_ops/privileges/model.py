"""The roles, their attributes, memberships and database grants: the declarations."""

from __future__ import annotations

import re
from dataclasses import dataclass

DATABASE = "booking"

PLATFORM_SUPERUSER = "neon_superuser"
OWNER = "booking_owner"  # Neon names the owner role after the database: <db>_owner
APP_GROUP = "booking_app"
APP_LOGINS = ("booking_app_a", "booking_app_b")
MIGRATOR = "booking_migrator"
READONLY = "booking_readonly"
BACKUP = "booking_backup"

#: the operator's role: what the operator of a Neon project holds
OPERATOR = OWNER
#: the role every migration runs as (logged in, or by SET ROLE from a member)
SCHEMA_OWNER = MIGRATOR
#: schemas owned by the schema owner; ``ptool_ops`` is the toolkit's own (migration history)
SCHEMAS = ("booking", "booking_ext", "ptool_ops")
#: schemas whose tables hold data a backup must read
DATA_SCHEMAS = ("booking", "ptool_ops")

ATTRIBUTES = ("CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS")


@dataclass(frozen=True)
class Role:
    name: str
    login: bool
    provider: str  # "platform": Neon (local up mirrors it); "stack": Pulumi / local up / 0001
    who: str  # who logs in as it, or what it groups
    attributes: tuple[str, ...] = ()
    why: str = ""  # why it has the attributes and memberships it has


@dataclass(frozen=True)
class Membership:
    group: str
    member: str
    admin: bool = False
    why: str = ""


@dataclass(frozen=True)
class DatabaseGrant:
    role: str
    privileges: tuple[str, ...]
    why: str


PLATFORM_ROLES: tuple[Role, ...] = (
    Role(
        PLATFORM_SUPERUSER,
        login=False,
        provider="platform",
        who="nobody logs in: Neon grants it to every role made in its console or API",
        attributes=("CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS"),
        why="Neon's administrator group (its 'Manage roles' page); local up mirrors it",
    ),
    Role(
        OWNER,
        login=True,
        provider="platform",
        who="the operator: ptool-ops status, restores, migrate test, local seed, doctor",
        attributes=("CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS"),
        why="Neon creates it with the project and makes it own database booking; CREATEROLE"
        " creates the stack roles (and, later, rotates their passwords), CREATEDB the"
        " databases restores and migrate test fill",
    ),
)

#: Neon's grants to neon_superuser (read off a Neon cluster's roles dump); ADMIN on
#: pg_signal_backend lets members end the sessions an in-place restore replaces
PLATFORM_MEMBERSHIPS: tuple[Membership, ...] = (
    Membership("pg_read_all_data", PLATFORM_SUPERUSER),
    Membership("pg_write_all_data", PLATFORM_SUPERUSER),
    Membership("pg_create_subscription", PLATFORM_SUPERUSER),
    Membership("pg_monitor", PLATFORM_SUPERUSER, admin=True),
    Membership("pg_signal_backend", PLATFORM_SUPERUSER, admin=True),
    Membership(PLATFORM_SUPERUSER, OWNER),
)

#: what a self-managed server's administrator grants for point-in-time restore (Neon has
#: no physical backups, so nothing to grant there): the operator names restore points and
#: closes the WAL segment they are in. ``local up`` grants them as the server's superuser,
#: in the maintenance database ``postgres`` (``pitr mark`` runs there): a grant on a
#: pg_catalog function in ``booking`` would be in its dumps, restorable only by a superuser.
SELF_MANAGED_FUNCTION_GRANTS: tuple[tuple[str, str], ...] = (
    ("pg_catalog.pg_create_restore_point(text)", OPERATOR),
    ("pg_catalog.pg_switch_wal()", OPERATOR),
)

STACK_ROLES: tuple[Role, ...] = (
    Role(
        APP_GROUP,
        login=False,
        provider="stack",
        who="nobody logs in: holds the booking API's grants",
        why="migrations grant to the group, so a password rotation never touches grants",
    ),
    *(
        Role(
            login,
            login=True,
            provider="stack",
            who="the booking API (Railway), one login at a time; rotation alternates them",
            why="member of booking_app; row-level security applies",
        )
        for login in APP_LOGINS
    ),
    Role(
        MIGRATOR,
        login=True,
        provider="stack",
        who="CI's 'ptool-ops migrate up' (the stacks' migrator URL)",
        why="owns schemas booking, booking_ext and ptool_ops, so it runs every migration"
        " after 0001 and writes the history; row-level security does not apply to owners",
    ),
    Role(
        READONLY,
        login=True,
        provider="stack",
        who="people and reports reading one tenant at a time",
        why="SELECT only, and row-level security applies",
    ),
    Role(
        BACKUP,
        login=True,
        provider="stack",
        who="scheduled 'ptool-ops backup create' (the stacks' backup URL)",
        attributes=("BYPASSRLS",),
        why="pg_dump refuses tables that row-level security would filter; SELECT on every"
        " table comes from default privileges of the schema owner",
    ),
)

MEMBERSHIPS: tuple[Membership, ...] = (
    *(
        Membership(APP_GROUP, login, why="the API's logins share the group's grants")
        for login in APP_LOGINS
    ),
    Membership(
        APP_GROUP,
        MIGRATOR,
        why="the compatibility gate of migrate up prepares the API's captured statements as"
        " booking_app (SET ROLE) inside the migration's transaction; booking_app's grants"
        " are a subset of what the schema owner has",
    ),
    Membership(
        MIGRATOR,
        OWNER,
        why="the operator acts as the schema owner: pg_restore gives restored objects to"
        " booking_migrator, and migrations on a scratch copy run as it",
    ),
)

DATABASE_GRANTS: tuple[DatabaseGrant, ...] = (
    DatabaseGrant(APP_GROUP, ("CONNECT", "TEMPORARY"), "the API connects"),
    DatabaseGrant(READONLY, ("CONNECT",), "reads"),
    DatabaseGrant(BACKUP, ("CONNECT",), "pg_dump connects"),
    DatabaseGrant(
        MIGRATOR,
        ("CONNECT", "CREATE", "TEMPORARY"),
        "creates schemas booking, booking_ext, ptool_ops and the btree_gist extension",
    ),
)


def is_plain(name: str) -> bool:
    """Whether ``name`` reads the same in SQL unquoted (lower case, no special signs)."""
    return re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name) is not None


def plain(name: str) -> str:
    """The model's names go into generated SQL unquoted: they must be plain identifiers."""
    if not is_plain(name):
        raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")
    return name


for _r in (*PLATFORM_ROLES, *STACK_ROLES):
    plain(_r.name)
for _m in (*PLATFORM_MEMBERSHIPS, *MEMBERSHIPS):
    plain(_m.group), plain(_m.member)


def role(name: str) -> Role:
    for candidate in (*PLATFORM_ROLES, *STACK_ROLES):
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def login_roles() -> tuple[str, ...]:
    """Every role that logs in, platform's first (local up generates their passwords)."""
    return tuple(r.name for r in (*PLATFORM_ROLES, *STACK_ROLES) if r.login)
