-- 0001 roles_and_schema: cluster roles, the `booking` schema and the btree_gist extension.
--
-- Must run as a superuser (or a role that may create BYPASSRLS roles and grant
-- pg_read_all_data): later migrations only need to be the schema owner.
--
-- Roles are cluster-wide and shared by every database of the cluster, so they are
-- created only when missing (and their attributes brought in line when they exist).
-- A concurrent migration in another database may create the same role between our
-- check and our CREATE: that race surfaces as duplicate_object / unique_violation
-- and is ignored. No passwords here: the environment tooling sets them.

DO $roles$
DECLARE
    spec record;
BEGIN
    FOR spec IN
        SELECT * FROM (VALUES
            ('booking_app',      false, false),
            ('booking_app_a',    true,  false),
            ('booking_app_b',    true,  false),
            ('booking_migrator', true,  false),
            ('booking_readonly', true,  false),
            ('booking_backup',   true,  true)
        ) AS s(rolname, login, bypassrls)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = spec.rolname) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s INHERIT %s',
                               spec.rolname,
                               CASE WHEN spec.login THEN 'LOGIN' ELSE 'NOLOGIN' END,
                               CASE WHEN spec.bypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by a migration in another database
            END;
        END IF;
        -- An existing role keeps its password; only the attributes we rely on are fixed.
        IF EXISTS (SELECT FROM pg_catalog.pg_roles r
                   WHERE r.rolname = spec.rolname
                     AND (r.rolcanlogin <> spec.login
                          OR r.rolbypassrls <> spec.bypassrls
                          OR NOT r.rolinherit)) THEN
            EXECUTE format('ALTER ROLE %I %s INHERIT %s',
                           spec.rolname,
                           CASE WHEN spec.login THEN 'LOGIN' ELSE 'NOLOGIN' END,
                           CASE WHEN spec.bypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END);
        END IF;
    END LOOP;
END
$roles$;

-- Memberships (GRANT of an existing membership is a no-op with a notice).
-- Two logins share the application's privileges so one password can be rotated
-- while the other serves traffic.
GRANT booking_app TO booking_app_a, booking_app_b WITH INHERIT TRUE;
-- pg_dump must read every row: pg_read_all_data gives SELECT everywhere, and
-- BYPASSRLS (above) keeps row-level security from filtering (pg_dump refuses to
-- dump RLS-filtered tables).
GRANT pg_read_all_data TO booking_backup;

-- The application schema, owned by the migrator so that later migrations can run
-- as booking_migrator instead of a superuser.
CREATE SCHEMA booking AUTHORIZATION booking_migrator;
COMMENT ON SCHEMA booking IS 'Production Tool booking service (managed by ptool-ops migrations)';
GRANT USAGE ON SCHEMA booking TO booking_app, booking_readonly;

-- btree_gist supplies the GiST operator class for uuid that the bookings exclusion
-- constraint needs (artist_id WITH =). It lives in a schema of its own so that its
-- ~200 functions do not clutter `booking`, and so that the down migration can tell
-- whether it installed the extension: it drops btree_gist only if the extension
-- lives in booking_ext. If btree_gist is already installed elsewhere (say in public)
-- it is used where it is: default operator classes are found without search_path.
CREATE SCHEMA booking_ext AUTHORIZATION booking_migrator;
COMMENT ON SCHEMA booking_ext IS 'Extensions used by the booking schema';
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA booking_ext;

-- Objects the migrator creates later in `booking` are readable by the app and the
-- read-only role. Writes are granted table by table in the migration that creates
-- the table (fail closed: an append-only table must not get UPDATE by default).
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    GRANT SELECT ON TABLES TO booking_app, booking_readonly;
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    GRANT USAGE, SELECT ON SEQUENCES TO booking_app;
