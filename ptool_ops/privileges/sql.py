"""The model as SQL: what the platform (Neon; ``local up`` as the superuser) runs, what the
stack (Pulumi; ``local up`` as the owner) runs, and the block migration 0001 carries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool_ops.privileges.duties import current_user
from ptool_ops.privileges.model import (
    ATTRIBUTES,
    DATABASE,
    DATABASE_GRANTS,
    MEMBERSHIPS,
    OWNER,
    PLATFORM_MEMBERSHIPS,
    PLATFORM_ROLES,
    PLATFORM_SUPERUSER,
    SELF_MANAGED_FUNCTION_GRANTS,
    STACK_ROLES,
    Membership,
    Role,
    plain,
)

if TYPE_CHECKING:
    import psycopg


def _attrs(r: Role) -> str:
    words = [("" if a in r.attributes else "NO") + a for a in ATTRIBUTES]
    return " ".join(["LOGIN" if r.login else "NOLOGIN", "INHERIT", *words])


def platform_role_statements() -> Iterator[str]:
    """What Neon does when it creates a project: its administrator group and the owner role
    (idempotent; ``local up`` runs them as the superuser, the one place it is used)."""
    yield _ensure_roles(PLATFORM_ROLES)
    yield _ensure_memberships(PLATFORM_MEMBERSHIPS)


def platform_database_statements(database: str = DATABASE) -> Iterator[str]:
    """The owner owns the database; neon_superuser has every privilege on it (as on Neon)."""
    plain(database)
    yield (
        "DO $db$ BEGIN IF (SELECT datdba::regrole::text FROM pg_catalog.pg_database"
        f" WHERE datname = '{database}') <> '{OWNER}' THEN"
        f" ALTER DATABASE {database} OWNER TO {OWNER}; END IF; END $db$"
    )
    yield f"GRANT ALL PRIVILEGES ON DATABASE {database} TO {PLATFORM_SUPERUSER}"


def self_managed_statements() -> Iterator[str]:
    """What a self-managed server's administrator does, in the maintenance database
    ``postgres``: the grants for point-in-time restore, and ``pg_stat_statements`` (the
    server preloads it) for ``migrate capture``. In ``postgres``, not the booking database,
    so no dump of that database holds an extension only a superuser may create there (on
    Neon the owner creates it in the database itself: ``CREATE EXTENSION
    pg_stat_statements``)."""
    for function, grantee in SELF_MANAGED_FUNCTION_GRANTS:
        yield f"GRANT EXECUTE ON FUNCTION {function} TO {plain(grantee)}"
    yield "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"


def _sql_bool(value: bool) -> str:
    return "true" if value else "false"


def _ensure_roles(roles: tuple[Role, ...]) -> str:
    """One DO block: create each missing role; align the attributes of an existing one."""
    rows = ",\n".join(
        f"        ('{r.name}', '{_attrs(r)}', {_sql_bool(r.login)}, "
        + ", ".join(_sql_bool(a in r.attributes) for a in ATTRIBUTES)
        + ")"
        for r in roles
    )
    return (
        "DO $roles$\n"
        "DECLARE\n"
        "    spec record;\n"
        "BEGIN\n"
        "    FOR spec IN SELECT * FROM (VALUES\n"
        f"{rows}\n"
        "    ) AS s(rolname, attrs, login, createdb, createrole, replication, bypassrls)\n"
        "    LOOP\n"
        "        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r"
        " WHERE r.rolname = spec.rolname) THEN\n"
        "            BEGIN\n"
        "                EXECUTE format('CREATE ROLE %I %s', spec.rolname, spec.attrs);\n"
        "            EXCEPTION WHEN duplicate_object OR unique_violation THEN\n"
        "                NULL;  -- created at the same moment for another database\n"
        "            END;\n"
        "        ELSIF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r\n"
        "                          WHERE r.rolname = spec.rolname AND r.rolinherit\n"
        "                            AND r.rolcanlogin = spec.login"
        " AND r.rolcreatedb = spec.createdb\n"
        "                            AND r.rolcreaterole = spec.createrole\n"
        "                            AND r.rolreplication = spec.replication\n"
        "                            AND r.rolbypassrls = spec.bypassrls) THEN\n"
        "            EXECUTE format('ALTER ROLE %I %s', spec.rolname, spec.attrs);\n"
        "        END IF;\n"
        "    END LOOP;\n"
        "END\n"
        "$roles$"
    )


def _ensure_memberships(memberships: tuple[Membership, ...]) -> str:
    """One DO block: grant each missing membership (INHERIT and SET; ADMIN where asked).
    A membership whose member does not exist (no owner role on this server) is skipped."""
    rows = ",\n".join(
        f"        ('{m.group}', '{m.member}', {_sql_bool(m.admin)})" for m in memberships
    )
    return (
        "DO $members$\n"
        "DECLARE\n"
        "    edge record;\n"
        "BEGIN\n"
        "    FOR edge IN SELECT * FROM (VALUES\n"
        f"{rows}\n"
        "    ) AS e(grp, member, admin)\n"
        "    LOOP\n"
        "        IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = edge.member)\n"
        "           AND NOT EXISTS (SELECT FROM pg_catalog.pg_auth_members a\n"
        "                           WHERE a.roleid = edge.grp::regrole"
        " AND a.member = edge.member::regrole\n"
        "                             AND a.inherit_option AND a.set_option\n"
        "                             AND (a.admin_option OR NOT edge.admin)) THEN\n"
        "            EXECUTE format('GRANT %I TO %I WITH %sINHERIT TRUE, SET TRUE',\n"
        "                           edge.grp, edge.member,\n"
        "                           CASE WHEN edge.admin THEN 'ADMIN OPTION, ' ELSE '' END);\n"
        "        END IF;\n"
        "    END LOOP;\n"
        "END\n"
        "$members$"
    )


def stack_statements() -> Iterator[str]:
    """The stack roles and their memberships (idempotent), as the Pulumi ``Database``
    component creates them on Neon; run as the database owner. No passwords."""
    yield _ensure_roles(STACK_ROLES)
    yield _ensure_memberships(MEMBERSHIPS)


def database_grant_statements(database: str = DATABASE) -> Iterator[str]:
    for g in DATABASE_GRANTS:
        yield f"GRANT {', '.join(g.privileges)} ON DATABASE {database} TO {g.role}"


BLOCK_BEGIN = "-- >>> privilege model: generated from ptool_ops/privileges, do not edit"
BLOCK_END = "-- <<< privilege model"


def migration_block() -> str:
    """The stack roles and memberships as migration 0001 carries them."""
    body = ";\n\n".join(stack_statements())
    return f"{BLOCK_BEGIN}\n{body};\n{BLOCK_END}\n"


def provision(conn: psycopg.Connection[Any], passwords: dict[str, str], database: str) -> None:
    """As the database owner: the stack roles, memberships, database grants and the login
    roles' passwords -- what Pulumi does on Neon, what ``local up`` does here."""
    from ptool_ops import pg

    for statement in (*stack_statements(), *database_grant_statements(database)):
        conn.execute(statement)
    for name, password in passwords.items():
        if name == current_user(conn):
            continue  # the owner's own password is the platform's (set by local up)
        pg.set_password(conn, name, password)


def block_of(text: str) -> str | None:
    """The privilege-model block a migration file holds (markers included), or None."""
    start = text.find(BLOCK_BEGIN.split(":", 1)[0])  # the marker, whatever follows it
    end = text.find(BLOCK_END)
    if start < 0 or end < 0:
        return None
    return text[start : end + len(BLOCK_END)] + "\n"


def write_block(path: Path) -> bool:
    """Put the current :func:`migration_block` between the markers of ``path``; returns
    whether the file changed."""
    text = path.read_text(encoding="utf-8")
    current = block_of(text)
    if current is None:
        raise ValueError(f"{path} has no privilege-model markers")
    new = text.replace(current, migration_block())
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
