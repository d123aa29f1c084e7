SELECT count(*) = 4 AND bool_and(c.relrowsecurity)
       AND bool_and(c.relowner = 'booking_migrator'::regrole)
  FROM pg_catalog.pg_class c
 WHERE c.oid IN ('booking.tenants'::regclass, 'booking.users'::regclass,
                 'booking.artists'::regclass, 'booking.projects'::regclass);

SELECT count(DISTINCT p.polrelid) = 4
  FROM pg_catalog.pg_policy p
 WHERE p.polrelid IN ('booking.tenants'::regclass, 'booking.users'::regclass,
                      'booking.artists'::regclass, 'booking.projects'::regclass);

-- has_table_privilege with a list is true if ANY is held: test one privilege at a time.
SELECT bool_and(pg_catalog.has_table_privilege('booking_app', t, 'SELECT'))
   AND bool_and(pg_catalog.has_table_privilege('booking_app', t, 'INSERT'))
   AND bool_and(pg_catalog.has_table_privilege('booking_app', t, 'UPDATE'))
   AND NOT bool_or(pg_catalog.has_table_privilege('booking_app', t, 'DELETE'))
   AND bool_and(pg_catalog.has_table_privilege('booking_readonly', t, 'SELECT'))
   AND NOT bool_or(pg_catalog.has_table_privilege('booking_readonly', t, 'INSERT, UPDATE, DELETE'))
  FROM unnest(ARRAY['booking.tenants', 'booking.users',
                    'booking.artists', 'booking.projects']) AS t;

SELECT EXISTS (SELECT FROM pg_catalog.pg_constraint
                WHERE conrelid = 'booking.artists'::regclass
                  AND conname = 'artists_tenant_id_key' AND contype = 'u');
