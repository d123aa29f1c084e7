SELECT count(*) = 6 FROM pg_catalog.pg_roles
 WHERE rolname IN ('booking_app', 'booking_app_a', 'booking_app_b',
                   'booking_migrator', 'booking_readonly', 'booking_backup');

SELECT NOT r.rolcanlogin AND NOT r.rolbypassrls
  FROM pg_catalog.pg_roles r WHERE r.rolname = 'booking_app';

SELECT r.rolbypassrls AND r.rolcanlogin AND NOT r.rolsuper
  FROM pg_catalog.pg_roles r WHERE r.rolname = 'booking_backup';

SELECT pg_catalog.has_schema_privilege('booking_backup', 'booking', 'USAGE')
   AND pg_catalog.has_schema_privilege('booking_backup', 'ptool_ops', 'USAGE')
   AND pg_catalog.has_table_privilege('booking_backup', 'ptool_ops.migration_history', 'SELECT')
   AND NOT pg_catalog.has_table_privilege('booking_backup', 'ptool_ops.migration_history', 'INSERT');

SELECT pg_catalog.pg_has_role('booking_app_a', 'booking_app', 'USAGE')
   AND pg_catalog.pg_has_role('booking_app_b', 'booking_app', 'USAGE');

SELECT count(*) = 3 FROM pg_catalog.pg_namespace
 WHERE nspname IN ('booking', 'booking_ext', 'ptool_ops')
   AND nspowner = 'booking_migrator'::regrole;

SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'btree_gist');

SELECT pg_catalog.has_schema_privilege('booking_app', 'booking', 'USAGE')
   AND pg_catalog.has_schema_privilege('booking_readonly', 'booking', 'USAGE')
   AND NOT pg_catalog.has_schema_privilege('booking_app', 'booking', 'CREATE');
