-- 0003 bookings (down): the trigger, policy, grants and indexes go with the table.
DROP TABLE booking.bookings;
DROP FUNCTION booking.set_updated_at();
