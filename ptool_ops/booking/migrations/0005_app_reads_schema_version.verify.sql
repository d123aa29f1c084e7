SELECT pg_catalog.has_schema_privilege('booking_app', 'ptool_ops', 'USAGE')
   AND NOT pg_catalog.has_schema_privilege('booking_app', 'ptool_ops', 'CREATE');

SELECT pg_catalog.has_table_privilege('booking_app', 'ptool_ops.migration_history', 'SELECT')
   AND NOT pg_catalog.has_table_privilege('booking_app', 'ptool_ops.migration_history', 'INSERT')
   AND NOT pg_catalog.has_table_privilege('booking_app', 'ptool_ops.migration_history', 'UPDATE')
   AND NOT pg_catalog.has_table_privilege('booking_app', 'ptool_ops.migration_history', 'DELETE');
