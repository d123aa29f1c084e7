"""What each command needs, as which role, and the checks that say what a login lacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import PermissionDenied
from ptool_ops.privileges.model import (
    APP_GROUP,
    APP_LOGINS,
    BACKUP,
    DATA_SCHEMAS,
    MIGRATOR,
    OPERATOR,
    SCHEMA_OWNER,
    is_plain,
)

if TYPE_CHECKING:
    import psycopg

#: the logins whose passwords ``secrets rotate`` changes (the stacks' defaults)
ROTATED_ROLES: tuple[str, ...] = (*APP_LOGINS, MIGRATOR)


@dataclass(frozen=True)
class Need:
    """One privilege a duty needs. ``missing`` is a query run as the login; each row it
    returns is one object the privilege is missing on (no row: the need is met)."""

    name: str
    what: str  # the privilege, in words
    why: str
    missing: str
    grant: str  # the fix, with {role}; "" when no single grant fixes it


_TABLES = (
    "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p')"
)
_BYPASS = (
    "(SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r"
    " WHERE r.rolname = current_user)"
)

NEEDS: dict[str, Need] = {
    need.name: need
    for need in (
        Need(
            "read_history",
            "SELECT on ptool_ops.migration_history",
            "reads which migrations are applied (the schema version)",
            "SELECT 'ptool_ops.migration_history' FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'ptool_ops' AND c.relname = 'migration_history'"
            " AND NOT (pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
            " AND pg_catalog.has_table_privilege(c.oid, 'SELECT'))",
            "GRANT USAGE ON SCHEMA ptool_ops TO {role};"
            " GRANT SELECT ON ptool_ops.migration_history TO {role}",
        ),
        Need(
            "read_all_rows",
            "SELECT on every table of schemas booking and ptool_ops, not filtered by"
            " row-level security (BYPASSRLS or table ownership)",
            "reads every tenant's rows: invariants and pg_dump must not see a filtered view",
            _TABLES + " AND NOT (pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
            " AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
            f" AND (NOT c.relrowsecurity OR {_BYPASS}"
            " OR pg_catalog.pg_has_role(c.relowner, 'USAGE')))",
            "ALTER ROLE {role} BYPASSRLS; GRANT SELECT ON ALL TABLES IN SCHEMA booking,"
            " ptool_ops TO {role}",
        ),
        Need(
            "dump_everything",
            "SELECT on every table and sequence of the database (every schema but the"
            " system's), not filtered by row-level security",
            "pg_dump reads every table and sequence it dumps, and refuses a filtered one",
            "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'S')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'"
            " AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.objid = c.oid"
            "   AND d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e')"
            " AND NOT (pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
            " AND (CASE WHEN c.relkind = 'S' THEN"
            "   pg_catalog.has_sequence_privilege(c.oid, 'SELECT')"
            "   ELSE pg_catalog.has_table_privilege(c.oid, 'SELECT') END)"
            f" AND (NOT c.relrowsecurity OR {_BYPASS}"
            " OR pg_catalog.pg_has_role(c.relowner, 'USAGE')))",
            "ALTER ROLE {role} BYPASSRLS; GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO"
            " {role}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA <schema> TO {role}",
        ),
        Need(
            "write_all_rows",
            "INSERT on every table of schema booking, not filtered by row-level security",
            "writes rows of every tenant",
            _TABLES + " AND n.nspname = 'booking'"
            " AND NOT (pg_catalog.has_table_privilege(c.oid, 'INSERT')"
            f" AND (NOT c.relrowsecurity OR {_BYPASS}"
            " OR pg_catalog.pg_has_role(c.relowner, 'USAGE')))",
            "ALTER ROLE {role} BYPASSRLS; GRANT INSERT ON ALL TABLES IN SCHEMA booking TO {role}",
        ),
        Need(
            "createdb",
            "CREATEDB",
            "creates the database it restores into, or a scratch copy",
            "SELECT 'CREATEDB' FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
            " AND NOT (r.rolsuper OR r.rolcreatedb)",
            "ALTER ROLE {role} CREATEDB",
        ),
        Need(
            "act_as_schema_owner",
            f"membership in {SCHEMA_OWNER} (INHERIT and SET)",
            f"objects it restores or migrates belong to {SCHEMA_OWNER}",
            "SELECT r.rolname::text FROM pg_catalog.pg_roles r WHERE r.rolname = %(owner)s"
            " AND NOT (pg_catalog.pg_has_role(current_user, r.oid, 'SET')"
            " AND pg_catalog.pg_has_role(current_user, r.oid, 'USAGE'))",
            f"GRANT {SCHEMA_OWNER} TO {{role}} WITH INHERIT TRUE, SET TRUE",
        ),
        Need(
            "run_migrations",
            "ownership of the migration history and the schemas (as booking_migrator or a"
            " member of it), or CREATE on the database for a fresh one",
            "applies migrations and records them in ptool_ops.migration_history",
            "SELECT 'database ' || current_database() WHERE NOT EXISTS ("
            " SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'ptool_ops')"
            " AND NOT pg_catalog.has_database_privilege(current_database(), 'CREATE')"
            " UNION ALL SELECT 'table ptool_ops.migration_history' FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'ptool_ops' AND c.relname = 'migration_history'"
            " AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')",
            f"GRANT {SCHEMA_OWNER} TO {{role}} WITH INHERIT TRUE, SET TRUE",
        ),
        Need(
            "own_database",
            "ownership of the environment's database",
            "renames the database it replaces (an in-place restore keeps it)",
            "SELECT 'database ' || d.datname FROM pg_catalog.pg_database d"
            " WHERE d.datname = current_database()"
            " AND NOT pg_catalog.pg_has_role(d.datdba, 'USAGE')",
            "ALTER DATABASE {database} OWNER TO {role}",
        ),
        Need(
            "signal_backends",
            "the privileges of pg_signal_backend",
            "ends the sessions of the database an in-place restore replaces",
            "SELECT 'pg_signal_backend' WHERE NOT pg_catalog.pg_has_role("
            "current_user, 'pg_signal_backend', 'USAGE')",
            "GRANT pg_signal_backend TO {role}",
        ),
        Need(
            "replication",
            "REPLICATION",
            "streams a physical base backup (pg_basebackup speaks the replication protocol)",
            "SELECT 'REPLICATION' FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
            " AND NOT (r.rolsuper OR r.rolreplication)",
            "ALTER ROLE {role} REPLICATION",
        ),
        Need(
            "manage_passwords",
            "CREATEROLE and ADMIN OPTION on the rotated roles",
            "changes the password of a login it does not own (PostgreSQL 16+ asks for"
            " CREATEROLE and ADMIN OPTION on that role)",
            "SELECT m.name FROM unnest(%(managed)s::text[]) AS m(name)"
            " JOIN pg_catalog.pg_roles r ON r.rolname = m.name"
            " WHERE NOT (SELECT c.rolsuper OR (c.rolcreaterole AND pg_catalog.pg_has_role("
            "c.oid, r.oid, 'MEMBER WITH ADMIN OPTION')) FROM pg_catalog.pg_roles c"
            " WHERE c.rolname = current_user)",
            "GRANT {objects} TO {role} WITH ADMIN OPTION (as their creator or a superuser;"
            " {role} needs CREATEROLE too)",
        ),
        Need(
            "mark_restore_points",
            "EXECUTE on pg_create_restore_point(text) and pg_switch_wal() in the"
            " maintenance database postgres",
            "names a point in the WAL and closes its segment, so the archive holds it (the"
            " WAL is the server's: it runs in database postgres, so the grant is in no dump"
            " of the booking database)",
            "SELECT f FROM unnest(ARRAY['pg_catalog.pg_create_restore_point(text)',"
            " 'pg_catalog.pg_switch_wal()']) AS f"
            " WHERE NOT pg_catalog.has_function_privilege(f, 'EXECUTE')",
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_create_restore_point(text),"
            " pg_catalog.pg_switch_wal() TO {role} (in database postgres, as a superuser of"
            " the self-managed server)",
        ),
        # --- migration compatibility gate (migrate capture, the PREPARE probes) ---------
        Need(
            "read_query_stats",
            "the privileges of pg_read_all_stats (on Neon: through neon_superuser's pg_monitor)",
            "reads the text of the statements other roles (the booking API) ran, from"
            " pg_stat_statements",
            "SELECT 'pg_read_all_stats' WHERE NOT pg_catalog.pg_has_role("
            "current_user, 'pg_read_all_stats', 'USAGE')",
            "GRANT pg_read_all_stats TO {role}",
        ),
        Need(
            "probe_as_app",
            f"membership in {APP_GROUP} with SET (directly, or through {MIGRATOR})",
            f"prepares the API's captured statements as {APP_GROUP} (SET ROLE) against the"
            " migrated schema, inside the migration's transaction",
            "SELECT %(app)s::text WHERE NOT pg_catalog.pg_has_role(session_user,"
            " %(app)s::text, 'SET')",
            f"GRANT {APP_GROUP} TO {MIGRATOR} WITH INHERIT TRUE, SET TRUE (and {MIGRATOR} TO"
            " {role} when {role} is not it)",
        ),
        # --- end of the migration compatibility gate -------------------------------------
        # --- tenant recovery (recover tenant) ---------------------------------------------
        Need(
            "read_tenant_rows",
            "SELECT on every table of schema booking, not filtered by row-level security"
            " (BYPASSRLS or table ownership); every query names the tenant",
            "reads one tenant's rows, live and in the restored copy, by an explicit tenant"
            " filter (the operator is not subject to row-level security, so the filter is"
            " what scopes each read)",
            _TABLES + " AND n.nspname = 'booking'"
            " AND NOT (pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
            " AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
            f" AND (NOT c.relrowsecurity OR {_BYPASS}"
            " OR pg_catalog.pg_has_role(c.relowner, 'USAGE')))",
            "ALTER ROLE {role} BYPASSRLS; GRANT SELECT ON ALL TABLES IN SCHEMA booking TO {role}",
        ),
        Need(
            "restore_tenant_rows",
            "INSERT and UPDATE on the tenant tables of schema booking and INSERT on the event"
            " store booking.events, not filtered by row-level security",
            "re-inserts one tenant's rows with their original ids and values, restores changed"
            " ones, and appends an event per restored aggregate (never DELETE)",
            _TABLES + " AND n.nspname = 'booking'"
            " AND (c.relname = 'tenants' OR EXISTS (SELECT FROM pg_catalog.pg_attribute a"
            " WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))"
            " AND NOT (pg_catalog.has_table_privilege(c.oid, 'INSERT')"
            " AND (c.relname = 'events' OR pg_catalog.has_table_privilege(c.oid, 'UPDATE'))"
            f" AND (NOT c.relrowsecurity OR {_BYPASS}"
            " OR pg_catalog.pg_has_role(c.relowner, 'USAGE')))",
            "ALTER ROLE {role} BYPASSRLS; GRANT INSERT, UPDATE ON <tables> TO {role}",
        ),
        # --- end of tenant recovery -------------------------------------------------------
    )
}


@dataclass(frozen=True)
class Duty:
    """What one group of commands does to the database, as which role, needing what."""

    name: str
    commands: tuple[str, ...]
    role: str
    needs: tuple[str, ...]
    #: the database its work (and so its check) runs in, when not the environment's
    database: str | None = None


DUTIES: dict[str, Duty] = {
    duty.name: duty
    for duty in (
        Duty("status", ("status",), OPERATOR, ("read_history", "read_all_rows")),
        Duty("migrate.read", ("migrate status", "migrate plan"), MIGRATOR, ("read_history",)),
        Duty("migrate.verify", ("migrate verify",), MIGRATOR, ("read_history", "read_all_rows")),
        Duty(
            "migrate.run",
            ("migrate up", "migrate down", "migrate repair"),
            MIGRATOR,
            # probe_as_app: only checked when a query set is there to probe (see runner)
            ("run_migrations", "read_all_rows", "probe_as_app"),
        ),
        Duty(
            "migrate.test",
            ("migrate test",),
            OPERATOR,
            ("createdb", "act_as_schema_owner", "read_all_rows", "probe_as_app"),
        ),
        # --- migration compatibility gate -------------------------------------------------
        Duty("migrate.capture", ("migrate capture",), OPERATOR, ("read_query_stats",)),
        # --- end of the migration compatibility gate ---------------------------------------
        Duty("backup.create", ("backup create",), BACKUP, ("dump_everything",)),
        Duty(
            "backup.restore",
            ("backup restore", "backup verify --restore"),
            OPERATOR,
            ("createdb", "act_as_schema_owner"),
        ),
        Duty(
            "backup.restore_in_place",
            ("backup restore --in-place",),
            OPERATOR,
            ("createdb", "act_as_schema_owner", "own_database", "signal_backends"),
        ),
        Duty("local.seed", ("local seed",), OPERATOR, ("write_all_rows",)),
        Duty("pitr.base_backup", ("pitr base-backup",), OPERATOR, ("replication",)),
        Duty("pitr.mark", ("pitr mark",), OPERATOR, ("mark_restore_points",), "postgres"),
        Duty(
            "secrets.rotate",
            ("secrets rotate", "secrets rollback", "secrets revoke-previous"),
            OPERATOR,
            ("manage_passwords",),
        ),
        Duty(
            "pitr.restore",
            ("pitr restore", "pitr promote"),
            OPERATOR,
            ("read_all_rows",),
        ),
        # --- tenant recovery ---------------------------------------------------------------
        Duty(
            "recover.tenant",
            ("recover tenant",),
            OPERATOR,
            ("read_tenant_rows", "restore_tenant_rows"),
        ),
        # --- end of tenant recovery --------------------------------------------------------
    )
}


@dataclass(frozen=True)
class Missing:
    need: Need
    objects: list[str]
    role: str

    def sentence(self, duty: Duty) -> str:
        where = ", ".join(self.objects[:3]) + (
            f" and {len(self.objects) - 3} more" if len(self.objects) > 3 else ""
        )
        on = "" if self.objects == [self.need.what] else f" (missing on {where})"
        return (
            f"role {self.role} lacks {self.need.what}{on}, which '{duty.commands[0]}' needs:"
            f" it {self.need.why}"
        )

    def fix(self, database: str) -> str:
        return self.need.grant.format(
            role=_ident(self.role),
            database=_ident(database),
            objects=", ".join(_ident(o) if is_plain(o) else o for o in self.objects),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "need": self.need.name,
            "privilege": self.need.what,
            "objects": self.objects,
            "role": self.role,
        }


@dataclass
class DutyCheck:
    duty: Duty
    role: str  # the login checked (session_user)
    missing: list[Missing] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "duty": self.duty.name,
            "commands": list(self.duty.commands),
            "role": self.role,
            "model_role": self.duty.role,
            "ok": self.ok,
            "missing": [m.to_dict() for m in self.missing],
        }


def check(
    conn: psycopg.Connection[Any],
    duty_name: str,
    *,
    skip: tuple[str, ...] = (),
    managed: tuple[str, ...] | None = None,
) -> DutyCheck:
    """Which of the duty's needs the current role lacks (reads the catalog only); ``skip``
    names needs the caller does not use this time."""
    duty = DUTIES[duty_name]
    login = current_user(conn)
    result = DutyCheck(duty, login)
    for name in duty.needs:
        if name in skip:
            continue
        need = NEEDS[name]
        params = {
            "schemas": list(DATA_SCHEMAS),
            "owner": SCHEMA_OWNER,
            "managed": list(managed if managed is not None else ROTATED_ROLES),
            "app": APP_GROUP,
        }
        rows = conn.execute(need.missing, params).fetchall()
        if rows:
            result.missing.append(Missing(need, [str(r[0]) for r in rows], login))
    return result


def require(
    conn: psycopg.Connection[Any],
    duty_name: str,
    *,
    skip: tuple[str, ...] = (),
    managed: tuple[str, ...] | None = None,
) -> None:
    """Raise :class:`PermissionDenied` naming the first missing privilege and its grant
    (``managed``: the roles a password duty changes, default :data:`ROTATED_ROLES`)."""
    result = check(conn, duty_name, skip=skip, managed=managed)
    if result.ok:
        return
    first = result.missing[0]
    database = str(conn.info.dbname)
    duty = result.duty
    other = (
        f", or run it as {duty.role} (the role the privilege model names for it)"
        if result.role != duty.role
        else ""
    )
    raise PermissionDenied(
        first.sentence(duty) + ".",
        hint=f"Grant it with: {first.fix(database)}{other}. 'ptool-ops doctor' lists what"
        " every configured role can do.",
    )


def current_user(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    return str(row[0]) if row else "?"


def _ident(name: str) -> str:
    """A role or database name as SQL: plain when it can be, else quoted."""
    if is_plain(name):
        return name
    from psycopg import sql

    return sql.Identifier(name).as_string(None)
