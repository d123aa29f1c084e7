-- 0004 events: the append-only event store (audit trail).
--
-- One stream per aggregate (stream_id = the booking's id); versions run 1..n without
-- gaps, UNIQUE (stream_id, version) gives optimistic concurrency to writers.
-- Append-only is enforced twice: the application role is granted INSERT and SELECT
-- only, and statement-level triggers reject UPDATE, DELETE and TRUNCATE for everyone
-- else too (owner and superuser included). A deliberate repair has to disable the
-- triggers explicitly (ALTER TABLE ... DISABLE TRIGGER), which is visible and logged.

CREATE FUNCTION booking.reject_event_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'booking.events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'Record a compensating event instead of changing history.';
END
$fn$;
ALTER FUNCTION booking.reject_event_change() OWNER TO booking_migrator;

CREATE TABLE booking.events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES booking.tenants (id),
    stream_id   uuid        NOT NULL,
    version     integer     NOT NULL,
    type        text        NOT NULL,
    payload     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_version_positive CHECK (version > 0),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
ALTER TABLE booking.events OWNER TO booking_migrator;

-- A tenant's audit trail in time order.
CREATE INDEX events_tenant_recorded_idx ON booking.events (tenant_id, recorded_at);

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON booking.events
    FOR EACH STATEMENT EXECUTE FUNCTION booking.reject_event_change();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON booking.events
    FOR EACH STATEMENT EXECUTE FUNCTION booking.reject_event_change();

ALTER TABLE booking.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON booking.events
    FOR ALL TO booking_app, booking_readonly
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT ON booking.events TO booking_app;
GRANT SELECT ON booking.events TO booking_readonly;
-- Identity columns need no sequence privilege to insert; USAGE is granted so the
-- application can read the sequence like any other (currval, monitoring).
GRANT USAGE, SELECT ON SEQUENCE booking.events_id_seq TO booking_app;
