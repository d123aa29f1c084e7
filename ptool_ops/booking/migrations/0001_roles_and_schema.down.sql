-- ptool: run-as login
-- 0001 roles_and_schema (down).
--
-- Revokes what 0001 granted, drops the schemas (RESTRICT: fails loudly if later
-- migrations left objects), the btree_gist extension if 0001 installed it (it lives in
-- booking_ext), and finally the booking roles -- but only when no database in the
-- cluster still depends on any of them. Many databases of one cluster share these roles
-- (a template and its clones, a scratch copy of `migrate test`, and the migration history
-- in ptool_ops, which stays): dropping them here would break the others, so the roles
-- stay as long as pg_shdepend shows any owner, ACL, policy or default-ACL reference to
-- one of them, in any database. The roles are kept or dropped as a group.

ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA ptool_ops
    REVOKE SELECT ON TABLES FROM booking_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    REVOKE SELECT ON SEQUENCES FROM booking_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    REVOKE USAGE, SELECT ON SEQUENCES FROM booking_app;
ALTER DEFAULT PRIVILEGES FOR ROLE booking_migrator IN SCHEMA booking
    REVOKE SELECT ON TABLES FROM booking_app, booking_readonly, booking_backup;

REVOKE SELECT ON ptool_ops.migration_history FROM booking_backup;
REVOKE USAGE ON SCHEMA ptool_ops FROM booking_backup;
-- the history stays, with whoever reverts 0001 (the up gave it to booking_migrator; as
-- booking_migrator this changes nothing)
ALTER TABLE ptool_ops.migration_history OWNER TO CURRENT_USER;
ALTER SCHEMA ptool_ops OWNER TO CURRENT_USER;

DROP SCHEMA booking;

DO $ext$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
               WHERE e.extname = 'btree_gist' AND n.nspname = 'booking_ext') THEN
        DROP EXTENSION btree_gist;
    END IF;
END
$ext$;

DROP SCHEMA booking_ext;

DO $roles$
DECLARE
    names constant text[] := ARRAY['booking_app_a', 'booking_app_b', 'booking_app',
                                   'booking_migrator', 'booking_readonly', 'booking_backup'];
    rolename text;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_shdepend d
               JOIN pg_catalog.pg_roles r ON d.refclassid = 'pg_catalog.pg_authid'::regclass
                                         AND d.refobjid = r.oid
               WHERE r.rolname = ANY (names)) THEN
        RAISE NOTICE 'booking roles are still used by objects in this cluster; keeping them';
        RETURN;
    END IF;
    FOREACH rolename IN ARRAY names LOOP
        EXECUTE format('DROP ROLE IF EXISTS %I', rolename);
    END LOOP;
END
$roles$;
