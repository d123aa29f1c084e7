-- 0002 tenancy (down): policies, grants and indexes go with their tables.
DROP TABLE booking.projects;
DROP TABLE booking.artists;
DROP TABLE booking.users;
DROP TABLE booking.tenants;
