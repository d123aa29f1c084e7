-- 0002 tenancy: tenants and the per-tenant users, artists and projects.
--
-- Every table is created, owned by booking_migrator, RLS-enabled, given its
-- tenant-isolation policy and granted in this one migration, so a table never
-- exists without its isolation, and the down migration returns the catalog exactly
-- to its previous state by dropping the tables.
--
-- Tenant isolation: policies apply to booking_app (and so to its logins) and to
-- booking_readonly and are keyed by the session setting app.tenant_id. NULLIF(...,
-- '') makes an unset setting (NULL) and a RESET one ('') both mean "no rows" instead
-- of an error. The table owner and BYPASSRLS roles (migrator, superuser, backup) are
-- not subject to the policies, by design: invariant checks and backups run as them.

CREATE TABLE booking.tenants (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    slug       text        NOT NULL,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_slug_format CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    CONSTRAINT tenants_name_not_blank CHECK (btrim(name) <> '')
);

CREATE TABLE booking.users (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid        NOT NULL REFERENCES booking.tenants (id),
    email      text        NOT NULL,
    name       text        NOT NULL,
    role       text        NOT NULL DEFAULT 'viewer',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_tenant_email_key UNIQUE (tenant_id, email),
    CONSTRAINT users_role_check CHECK (role IN ('owner', 'admin', 'planner', 'viewer'))
);

-- UNIQUE (tenant_id, id) is the target of the bookings' composite foreign keys,
-- which keep a booking from pointing at another tenant's artist or project.
CREATE TABLE booking.artists (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid        NOT NULL REFERENCES booking.tenants (id),
    name       text        NOT NULL,
    email      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT artists_tenant_id_key UNIQUE (tenant_id, id)
);

CREATE TABLE booking.projects (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid        NOT NULL REFERENCES booking.tenants (id),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projects_tenant_id_key UNIQUE (tenant_id, id)
);

ALTER TABLE booking.tenants  OWNER TO booking_migrator;
ALTER TABLE booking.users    OWNER TO booking_migrator;
ALTER TABLE booking.artists  OWNER TO booking_migrator;
ALTER TABLE booking.projects OWNER TO booking_migrator;

ALTER TABLE booking.tenants  ENABLE ROW LEVEL SECURITY;
ALTER TABLE booking.users    ENABLE ROW LEVEL SECURITY;
ALTER TABLE booking.artists  ENABLE ROW LEVEL SECURITY;
ALTER TABLE booking.projects ENABLE ROW LEVEL SECURITY;

-- The tenants table is isolated by its own id.
CREATE POLICY tenant_isolation ON booking.tenants
    FOR ALL TO booking_app, booking_readonly
    USING (id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON booking.users
    FOR ALL TO booking_app, booking_readonly
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON booking.artists
    FOR ALL TO booking_app, booking_readonly
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON booking.projects
    FOR ALL TO booking_app, booking_readonly
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE ON booking.tenants, booking.users, booking.artists, booking.projects
    TO booking_app;
GRANT SELECT ON booking.tenants, booking.users, booking.artists, booking.projects
    TO booking_readonly;
