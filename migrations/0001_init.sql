-- floq schema, part 1: tenancy, identity, flows, runs, outbox.
--
-- Every tenant-owned table carries company_id and has row-level security
-- enabled AND forced. Services run tenant work as role floq_app (no BYPASSRLS)
-- via SET LOCAL ROLE, so RLS holds even when the connection user owns the
-- schema or is a superuser. A missing app.company_id matches no rows.
-- Cross-tenant duties (outbox sweep) run as floq_system, which gets
-- explicit, table-by-table policies instead of BYPASSRLS.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'floq_app') THEN
        CREATE ROLE floq_app NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'floq_system') THEN
        CREATE ROLE floq_system NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN unique_violation OR duplicate_object THEN
    -- roles are cluster-wide; a concurrent migration of another database made them
    NULL;
END
$$;

-- The connecting user must be able to SET ROLE to both.
DO $$
BEGIN
    EXECUTE format('GRANT floq_app TO %I', current_user);
    EXECUTE format('GRANT floq_system TO %I', current_user);
EXCEPTION WHEN OTHERS THEN
    NULL;
END
$$;

CREATE FUNCTION floq_current_company() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT NULLIF(current_setting('app.company_id', true), '')::uuid
$$;

CREATE TABLE companies (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    email          text NOT NULL,
    name           text NOT NULL DEFAULT '',
    password_hash  text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE memberships (
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    roles       text[] NOT NULL DEFAULT ARRAY['none'],
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text NOT NULL,
    scopes      text[] NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_company_idx ON api_keys (company_id);

CREATE TABLE flows (
    id              uuid PRIMARY KEY,
    company_id      uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    name            text NOT NULL,
    definition      jsonb NOT NULL,
    latest_version  integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX flows_company_idx ON flows (company_id, id) WHERE deleted_at IS NULL;

-- Immutable: the application role may insert and read versions, never change them.
CREATE TABLE flow_versions (
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    flow_id     uuid NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version > 0),
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, version)
);

CREATE TABLE runs (
    id           uuid PRIMARY KEY,
    company_id   uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    flow_id      uuid NOT NULL,
    version      integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trigger      text NOT NULL,
    input        jsonb NOT NULL,
    output       jsonb,
    error        jsonb,
    attempt      integer NOT NULL DEFAULT 1,
    queued_at    timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    FOREIGN KEY (flow_id, version) REFERENCES flow_versions (flow_id, version)
);
-- uuid v7 ids sort by creation time, so (company_id, id DESC) serves "newest first" listing and cursors.
CREATE INDEX runs_company_idx ON runs (company_id, id DESC);
CREATE INDEX runs_flow_idx ON runs (company_id, flow_id, id DESC);

CREATE TABLE run_steps (
    run_id       uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    company_id   uuid NOT NULL,
    node_id      text NOT NULL,
    seq          integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('succeeded', 'failed', 'skipped')),
    output       jsonb,
    error        jsonb,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (run_id, node_id)
);

CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    company_id    uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    run_id        uuid NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (created_at) WHERE published_at IS NULL;

-- Row-level security: enabled and forced everywhere a tenant's data lives.
ALTER TABLE companies ENABLE ROW LEVEL SECURITY;
ALTER TABLE companies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON companies TO floq_app
    USING (id = floq_current_company()) WITH CHECK (id = floq_current_company());

-- A user is visible to a company only through a membership in it (memberships
-- are themselves filtered by RLS); creating one is allowed, reading it back
-- requires the membership to exist first.
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY member_read ON users FOR SELECT TO floq_app
    USING (EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.id));
CREATE POLICY member_update ON users FOR UPDATE TO floq_app
    USING (EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = users.id));
CREATE POLICY create_user ON users FOR INSERT TO floq_app WITH CHECK (true);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['memberships', 'api_keys', 'flows', 'runs', 'run_steps', 'outbox'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO floq_app USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company())', t);
    END LOOP;
END
$$;

ALTER TABLE flow_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE flow_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON flow_versions FOR SELECT TO floq_app
    USING (company_id = floq_current_company());
CREATE POLICY tenant_insert ON flow_versions FOR INSERT TO floq_app
    WITH CHECK (company_id = floq_current_company());

-- floq_system's cross-tenant reach, one policy each: the scheduler's outbox
-- sweep, and finding a user by e-mail across companies (sign-in, bootstrap).
CREATE POLICY system_sweep ON outbox TO floq_system USING (true) WITH CHECK (true);
CREATE POLICY system_lookup ON users FOR SELECT TO floq_system USING (true);

GRANT USAGE ON SCHEMA public TO floq_app, floq_system;
GRANT SELECT, INSERT, UPDATE, DELETE ON companies, users, memberships, api_keys, flows, runs, run_steps, outbox TO floq_app;
GRANT SELECT, INSERT ON flow_versions TO floq_app;
GRANT USAGE ON SEQUENCE outbox_id_seq TO floq_app;
GRANT SELECT, UPDATE, DELETE ON outbox TO floq_system;
GRANT SELECT ON users TO floq_system;
GRANT EXECUTE ON FUNCTION floq_current_company() TO floq_app, floq_system;
