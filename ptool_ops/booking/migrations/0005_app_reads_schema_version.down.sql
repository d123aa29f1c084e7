-- 0005 app reads schema version (down): the application role loses read access to the
-- migration history again; the API's /version then reports no schema version.
REVOKE SELECT ON ptool_ops.migration_history FROM booking_app;
REVOKE USAGE ON SCHEMA ptool_ops FROM booking_app;
