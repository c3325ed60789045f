-- Identity: browser sessions, login throttling, groups.

-- Sessions are looked up by token before the company is known, so they are
-- reached only as floq_system (explicit policy); the application role has
-- no access at all. Only a SHA-256 of the token is stored.
CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY system_sessions ON sessions TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON sessions TO floq_system;

-- Failed sign-ins per account (`email:<address>`) and per client (`ip:<address>`).
CREATE TABLE login_attempts (
    key           text PRIMARY KEY,
    failures      integer NOT NULL DEFAULT 0,
    locked_until  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE login_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE login_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY system_attempts ON login_attempts TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON login_attempts TO floq_system;

-- Signing in lists a user's companies before one is chosen.
CREATE POLICY system_lookup ON memberships FOR SELECT TO floq_system USING (true);
CREATE POLICY system_lookup ON companies FOR SELECT TO floq_system USING (true);
GRANT SELECT ON memberships, companies TO floq_system;

CREATE TABLE groups (
    id          uuid PRIMARY KEY,
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, name)
);

CREATE TABLE group_members (
    company_id  uuid NOT NULL,
    group_id    uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL,
    PRIMARY KEY (group_id, user_id),
    FOREIGN KEY (company_id, user_id) REFERENCES memberships (company_id, user_id) ON DELETE CASCADE
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['groups', 'group_members'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO floq_app USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO floq_app', t);
    END LOOP;
END
$$;
