-- 0005 app reads schema version: the application role may see which migrations are
-- applied, so the API's /version reports the schema it runs against (on-call compares
-- it with the schema the API expects).
--
-- ptool_ops.migration_history is the migration runner's own table: the runner creates
-- it before the first migration, as the role that runs migrations, which therefore owns
-- it and can grant on it. booking_app may read that one table and nothing else of
-- schema ptool_ops; the runner alone writes it.
GRANT USAGE ON SCHEMA ptool_ops TO booking_app;
GRANT SELECT ON ptool_ops.migration_history TO booking_app;
