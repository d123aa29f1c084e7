SELECT c.relrowsecurity AND c.relowner = 'booking_migrator'::regrole
  FROM pg_catalog.pg_class c WHERE c.oid = 'booking.events'::regclass;

SELECT count(*) = 2 AND bool_and(t.tgenabled = 'O')
  FROM pg_catalog.pg_trigger t
 WHERE t.tgrelid = 'booking.events'::regclass
   AND t.tgname IN ('events_append_only', 'events_no_truncate');

SELECT EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = 'booking.events'::regclass);

SELECT pg_catalog.has_table_privilege('booking_app', 'booking.events', 'SELECT')
   AND pg_catalog.has_table_privilege('booking_app', 'booking.events', 'INSERT')
   AND NOT pg_catalog.has_table_privilege('booking_app', 'booking.events', 'UPDATE')
   AND NOT pg_catalog.has_table_privilege('booking_app', 'booking.events', 'DELETE')
   AND NOT pg_catalog.has_table_privilege('booking_app', 'booking.events', 'TRUNCATE')
   AND pg_catalog.has_table_privilege('booking_readonly', 'booking.events', 'SELECT');

SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint
                WHERE conrelid = 'booking.events'::regclass
                  AND conname = 'events_stream_version_key' AND contype = 'u');
