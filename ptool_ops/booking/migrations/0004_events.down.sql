-- 0004 events (down): dropping the table is not a TRUNCATE, so the append-only
-- triggers do not fire; they, the policy, grants and the identity sequence go with it.
DROP TABLE booking.events;
DROP FUNCTION booking.reject_event_change();
