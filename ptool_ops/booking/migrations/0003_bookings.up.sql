-- 0003 bookings: an artist booked onto a project for a period.
--
-- The core rule: confirmed bookings of one artist never overlap. The exclusion
-- constraint needs btree_gist (0001) for the uuid equality part; only confirmed
-- rows are indexed, so tentative holds and cancelled bookings may overlap anything.
--
-- The composite foreign keys (tenant_id, artist_id) and (tenant_id, project_id)
-- reference UNIQUE (tenant_id, id) on artists and projects, so a booking can never
-- point at another tenant's artist or project; they also imply the tenant exists.
--
-- Periods are half-open [lower, upper), finite and non-empty; two bookings may touch
-- (one ends when the next begins) without overlapping.

CREATE FUNCTION booking.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$fn$;
ALTER FUNCTION booking.set_updated_at() OWNER TO booking_migrator;

CREATE TABLE booking.bookings (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid        NOT NULL,
    artist_id  uuid        NOT NULL,
    project_id uuid        NOT NULL,
    period     tstzrange   NOT NULL,
    status     text        NOT NULL DEFAULT 'tentative',
    note       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bookings_status_check
        CHECK (status IN ('tentative', 'confirmed', 'cancelled')),
    CONSTRAINT bookings_period_check
        CHECK (NOT isempty(period) AND lower_inc(period) AND NOT upper_inc(period)
               AND NOT lower_inf(period) AND NOT upper_inf(period)),
    CONSTRAINT bookings_artist_fk FOREIGN KEY (tenant_id, artist_id)
        REFERENCES booking.artists (tenant_id, id),
    CONSTRAINT bookings_project_fk FOREIGN KEY (tenant_id, project_id)
        REFERENCES booking.projects (tenant_id, id),
    CONSTRAINT bookings_no_overlap
        EXCLUDE USING gist (artist_id WITH =, period WITH &&) WHERE (status = 'confirmed')
);
ALTER TABLE booking.bookings OWNER TO booking_migrator;

-- A tenant's calendar: list its bookings by start time.
CREATE INDEX bookings_tenant_start_idx ON booking.bookings (tenant_id, lower(period));

CREATE TRIGGER bookings_set_updated_at
    BEFORE UPDATE ON booking.bookings
    FOR EACH ROW EXECUTE FUNCTION booking.set_updated_at();

ALTER TABLE booking.bookings ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON booking.bookings
    FOR ALL TO booking_app, booking_readonly
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE ON booking.bookings TO booking_app;
GRANT SELECT ON booking.bookings TO booking_readonly;
