-- ptool: run-as login
-- 0001 roles_and_schema: the booking roles, the `booking` schema and the btree_gist extension.
--
-- Runs as the login (run-as login), not as the schema owner: it may create the roles the
-- rest of the schema is granted to. On Neon and in the local environment the stack has
-- created them already (as the database owner, booking_owner), so this finds them and
-- changes nothing; on a fresh server the login needs CREATEROLE (and BYPASSRLS for
-- booking_backup) -- the owner role has both. Roles are cluster-wide and shared by every
-- database of the cluster, so they are created only when missing, and their attributes
-- brought in line when they differ. No passwords here: the stack (or local up) sets them.
--
-- The block between the markers is generated from ptool_ops/privileges
-- (`python -m ptool_ops.privileges FILE` rewrites it); a test keeps the two the same.

-- >>> privilege model: generated from ptool_ops/privileges, do not edit
DO $roles$
DECLARE
    spec record;
BEGIN
    FOR spec IN SELECT * FROM (VALUES
        ('booking_app', 'NOLOGIN INHERIT NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', false, false, false, false, false),
        ('booking_app_a', 'LOGIN INHERIT NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', true, false, false, false, false),
        ('booking_app_b', 'LOGIN INHERIT NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', true, false, false, false, false),
        ('booking_migrator', 'LOGIN INHERIT NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', true, false, false, false, false),
        ('booking_readonly', 'LOGIN INHERIT NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', true, false, false, false, false),
        ('booking_backup', 'LOGIN INHERIT NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS', true, false, false, false, true)
    ) AS s(rolname, attrs, login, createdb, createrole, replication, bypassrls)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = spec.rolname) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', spec.rolname, spec.attrs);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created at the same moment for another database
            END;
        ELSIF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r
                          WHERE r.rolname = spec.rolname AND r.rolinherit
                            AND r.rolcanlogin = spec.login AND r.rolcreatedb = spec.createdb
                            AND r.rolcreaterole = spec.createrole
                            AND r.rolreplication = spec.replication
                            AND r.rolbypassrls = spec.bypassrls) THEN
            EXECUTE format('ALTER ROLE %I %s', spec.rolname, spec.attrs);
        END IF;
    END LOOP;
END
$roles$;

DO $members$
DECLARE
    edge record;
BEGIN
    FOR edge IN SELECT * FROM (VALUES
        ('booking_app', 'booking_app_a', false),
        ('booking_app', 'booking_app_b', false),
        ('booking_app', 'booking_migrator', false),
        ('booking_migrator', 'booking_owner', false)
    ) AS e(grp, member, admin)
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = edge.member)
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_auth_members a
                           WHERE a.roleid = edge.grp::regrole AND a.member = edge.member::regrole
                             AND a.inherit_option AND a.set_option
                             AND (a.admin_option OR NOT edge.admin)) THEN
            EXECUTE format('GRANT %I TO %I WITH %sINHERIT TRUE, SET TRUE',
                           edge.grp, edge.member,
                           CASE WHEN edge.admin THEN 'ADMIN OPTION, ' ELSE '' END);
        END IF;
    END LOOP;
END
$members$;
-- <<< privilege model

-- The application schema, owned by the migrator so that later migrations run as
-- booking_migrator (the runner switches to it when the login is a member of it).
CREATE SCHEMA booking AUTHORIZATION booking_migrator;
COMMENT ON SCHEMA booking IS 'Production Tool booking service (managed by ptool-ops migrations)';
GRANT USAGE ON SCHEMA booking TO booking_app, booking_readonly, booking_backup;

-- btree_gist supplies the GiST operator class for uuid that the bookings exclusion
-- constraint needs (artist_id WITH =). It lives in a schema of its own so that its
-- ~200 functions do not clutter `booking`, and so that the down migration can tell
-- whether it installed the extension: it drops btree_gist only if the extension
-- lives in booking_ext. If btree_gist is already installed elsewhere (say in public)
-- it is used where it is: default operator classes are found without search_path.
-- btree_gist is a trusted extension: CREATE on the database is enough to install it.
CREATE SCHEMA booking_ext AUTHORIZATION booking_migrator;
COMMENT ON SCHEMA booking_ext IS 'Extensions used by the booking schema';
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA booking_ext;

-- ptool_ops holds the migration history. The runner created it before this migration
-- as whoever logged in first; like the booking schema it belongs to the migrator
-- (ALTER ... OWNER TO the current owner changes nothing). The backup role reads it.
ALTER SCHEMA ptool_ops OWNER TO booking_migrator;
ALTER TABLE ptool_ops.migration_history OWNER TO booking_migrator;
GRANT USAGE ON SCHEMA ptool_ops TO booking_backup;
GRANT SELECT ON ptool_ops.migration_history TO booking_backup;

-- Objects the migrator creates later are readable by the app and the read-only role
-- (schema booking) and by the backup role (booking and ptool_ops): pg_dump reads every
-- table and sequence. Writes are granted table by table in the migration that creates
-- the table (fail closed: an append-only table must not get UPDATE by default).
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    GRANT SELECT ON TABLES TO booking_app, booking_readonly, booking_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    GRANT USAGE, SELECT ON SEQUENCES TO booking_app;
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    GRANT SELECT ON SEQUENCES TO booking_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA ptool_ops
    GRANT SELECT ON TABLES TO booking_backup;
