-- Single sign-on (OpenID Connect), issue 16.
--
-- | table            | whose            | reached by                                            |
-- | sso_connections  | a company's      | floq_app (tenant); floq_sso by id (sign-in)            |
-- | sso_domains      | a company's      | floq_app (tenant); floq_sso, verified rows only, by domain or connection id |
-- | sso_settings     | a company's      | floq_app (tenant); floq_signin for a signing-in identity's companies |
-- | sso_states       | the platform's   | floq_sso keyed by the state's SHA-256                  |
-- | sso_identities   | the platform's   | floq_sso keyed by SHA-256(issuer, sub)                 |
--
-- floq_sso is the anonymous sign-in duty: like the other lookup roles it is
-- keyed (`floq.lookup`) and sees only the row it looked up; it reads no
-- tenant data but a connection (its encrypted client secret included, which
-- the API opens for the one code exchange) and verified domains.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'floq_sso') THEN
        BEGIN
            CREATE ROLE floq_sso NOLOGIN NOBYPASSRLS;
        EXCEPTION WHEN unique_violation OR duplicate_object THEN
            NULL; -- a concurrent migration of another database made it
        END;
    END IF;
    IF NOT pg_has_role(current_user, 'floq_sso', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT floq_sso TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'floq: the database user % is not a member of role floq_sso and cannot grant it to itself', current_user
                USING HINT = format('As a superuser: GRANT floq_sso TO %I; then migrate again.', current_user);
        END;
    END IF;
    GRANT USAGE ON SCHEMA public TO floq_sso;
END
$$;
GRANT EXECUTE ON FUNCTION floq_lookup(), floq_lookup_hash(), floq_lookup_id() TO floq_sso;

CREATE TABLE sso_connections (
    id               uuid PRIMARY KEY,
    company_id       uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    preset           text NOT NULL CHECK (preset IN ('generic', 'entra')),
    -- generic: the issuer whose discovery document is used; entra: derived from the tenant.
    issuer           text NOT NULL,
    tenant           text,
    -- Entra's multi-tenant forms (`organizations`, `common`): the tenant ids (`tid`) accepted.
    allowed_tenants  text[] NOT NULL DEFAULT '{}',
    client_id        text NOT NULL,
    client_secret    bytea NOT NULL,
    key_id           text NOT NULL,
    default_role     text NOT NULL DEFAULT 'none' CHECK (default_role IN ('admin', 'flow_editor', 'flow_executor',
                         'audit_viewer', 'integration_manager', 'analytics_viewer', 'viewer', 'none')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, name),
    -- The composite key lets domains reference a connection of their own company only.
    UNIQUE (company_id, id)
);
CREATE INDEX sso_connections_key_idx ON sso_connections (key_id);

-- A domain a connection claims. It routes sign-ins and auto-registers only
-- once verified (DNS TXT or the operator), and a verified domain belongs to
-- one connection across the platform.
CREATE TABLE sso_domains (
    company_id     uuid NOT NULL,
    connection_id  uuid NOT NULL,
    domain         text NOT NULL CHECK (domain = lower(domain) AND length(domain) BETWEEN 3 AND 253),
    verify_token   text NOT NULL,
    verified_at    timestamptz,
    verified_by    text CHECK (verified_by IN ('dns', 'operator')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, domain),
    UNIQUE (company_id, domain),
    FOREIGN KEY (company_id, connection_id) REFERENCES sso_connections (company_id, id) ON DELETE CASCADE,
    CHECK ((verified_at IS NULL) = (verified_by IS NULL))
);
CREATE UNIQUE INDEX sso_domains_verified_key ON sso_domains (domain) WHERE verified_at IS NOT NULL;

CREATE TABLE sso_settings (
    company_id        uuid PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    require_sso       boolean NOT NULL DEFAULT false,
    -- The one member who may still sign in with a password when SSO is required.
    break_glass_user  uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sso_connections', 'sso_domains', 'sso_settings'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO floq_app USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO floq_app', t);
    END LOOP;
END
$$;

-- Whether another company holds this domain verified: the one fact a company
-- may learn about another's domains, so that it is told the domain is taken.
CREATE FUNCTION floq_sso_domain_taken(p_domain text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM sso_domains
                    WHERE domain = lower(p_domain) AND verified_at IS NOT NULL
                      AND company_id IS DISTINCT FROM floq_current_company())
$$;
REVOKE ALL ON FUNCTION floq_sso_domain_taken(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION floq_sso_domain_taken(text) TO floq_app;

-- A sign-in in flight: single use, short-lived, bound to its connection and
-- (by the SHA-256 of a cookie) to the browser that started it. `link_user`:
-- an explicit link started by that signed-in identity.
CREATE TABLE sso_states (
    state_hash     bytea PRIMARY KEY,
    connection_id  uuid NOT NULL REFERENCES sso_connections (id) ON DELETE CASCADE,
    company_id     uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    browser_hash   bytea NOT NULL,
    nonce          text NOT NULL,
    pkce_verifier  text NOT NULL,
    return_to      text NOT NULL,
    link_user      uuid REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz
);
CREATE INDEX sso_states_expiry_idx ON sso_states (expires_at);
ALTER TABLE sso_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE sso_states FORCE ROW LEVEL SECURITY;

-- An identity at a provider: the provider's `sub` for its issuer, keyed by
-- SHA-256(issuer || '\n' || sub) so the keyed role can find it.
CREATE TABLE sso_identities (
    subject_hash   bytea PRIMARY KEY,
    issuer         text NOT NULL,
    subject        text NOT NULL,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    connection_id  uuid REFERENCES sso_connections (id) ON DELETE SET NULL,
    -- The address the provider last named (it may change; the identity does not).
    email          text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);
CREATE INDEX sso_identities_user_idx ON sso_identities (user_id);
ALTER TABLE sso_identities ENABLE ROW LEVEL SECURITY;
ALTER TABLE sso_identities FORCE ROW LEVEL SECURITY;

-- How a session was opened: a linked sign-in ends the password sessions.
ALTER TABLE sessions ADD COLUMN method text NOT NULL DEFAULT 'password' CHECK (method IN ('password', 'sso'));
-- The company whose connection opened an SSO session: only that company's
-- requirement of single sign-on does it meet (a session opened through another
-- company's provider must not switch into a company that requires its own).
ALTER TABLE sessions ADD COLUMN sso_company_id uuid;

-- The sign-in duty (anonymous): the connection and its verified domains, the
-- state it holds, the identity it looked up, and the password sessions of
-- the identity it links.
CREATE POLICY sso ON sso_connections FOR SELECT TO floq_sso USING (id = floq_lookup_id());
CREATE POLICY sso ON sso_domains FOR SELECT TO floq_sso
    USING (verified_at IS NOT NULL AND (domain = lower(floq_lookup()) OR connection_id = floq_lookup_id()));
CREATE POLICY sso ON sso_states TO floq_sso
    USING (state_hash = floq_lookup_hash()) WITH CHECK (state_hash = floq_lookup_hash());
CREATE POLICY sso ON sso_identities TO floq_sso
    USING (subject_hash = floq_lookup_hash()) WITH CHECK (subject_hash = floq_lookup_hash());
CREATE POLICY sso_link ON sessions TO floq_sso
    USING (user_id = floq_lookup_id() AND method = 'password')
    WITH CHECK (user_id = floq_lookup_id() AND method = 'password');
GRANT SELECT ON sso_connections, sso_domains TO floq_sso;
GRANT SELECT, INSERT ON sso_states TO floq_sso;
GRANT UPDATE (used_at) ON sso_states TO floq_sso;
GRANT SELECT, INSERT ON sso_identities TO floq_sso;
GRANT UPDATE (email, last_login_at, connection_id) ON sso_identities TO floq_sso;
GRANT SELECT ON sessions TO floq_sso;
GRANT UPDATE (revoked_at) ON sessions TO floq_sso;

-- Password sign-in reads whether the identity's companies require SSO.
CREATE POLICY signin_lookup ON sso_settings FOR SELECT TO floq_signin
    USING (company_id IN (SELECT company_id FROM memberships));
GRANT SELECT ON sso_settings TO floq_signin;

-- Retention trims sign-ins that were never finished.
CREATE POLICY retention ON sso_states FOR SELECT TO floq_retention USING (expires_at < now());
CREATE POLICY retention_delete ON sso_states FOR DELETE TO floq_retention USING (expires_at < now());
GRANT SELECT, DELETE ON sso_states TO floq_retention;

-- Key rotation (operator CLI) re-encrypts connections' client secrets too.
CREATE POLICY rotate ON sso_connections TO floq_key_rotation USING (true) WITH CHECK (true);
GRANT SELECT (id, company_id, client_secret, key_id) ON sso_connections TO floq_key_rotation;
GRANT UPDATE (client_secret, key_id) ON sso_connections TO floq_key_rotation;
