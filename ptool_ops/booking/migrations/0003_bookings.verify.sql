SELECT c.relrowsecurity AND c.relowner = 'booking_migrator'::regrole
  FROM pg_catalog.pg_class c WHERE c.oid = 'booking.bookings'::regclass;

SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint
                WHERE conrelid = 'booking.bookings'::regclass
                  AND conname = 'bookings_no_overlap' AND contype = 'x' AND convalidated);

SELECT count(*) = 2 AND bool_and(convalidated)
  FROM pg_catalog.pg_constraint
 WHERE conrelid = 'booking.bookings'::regclass AND contype = 'f'
   AND conname IN ('bookings_artist_fk', 'bookings_project_fk');

SELECT EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = 'booking.bookings'::regclass);

SELECT pg_catalog.has_table_privilege('booking_app', 'booking.bookings', 'SELECT')
   AND pg_catalog.has_table_privilege('booking_app', 'booking.bookings', 'INSERT')
   AND pg_catalog.has_table_privilege('booking_app', 'booking.bookings', 'UPDATE')
   AND NOT pg_catalog.has_table_privilege('booking_app', 'booking.bookings', 'DELETE')
   AND pg_catalog.has_table_privilege('booking_readonly', 'booking.bookings', 'SELECT');
