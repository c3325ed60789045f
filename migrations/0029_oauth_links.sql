-- OAuth2 integration links (issue 16): the tokens an `oauth2` credential
-- holds once connected, and the authorization requests in flight.
--
-- oauth_links: one row per connected credential. Access and refresh tokens
-- are AES-256-GCM ciphertexts bound to floq/v1/<company>/oauth_links/<column>/<credential id>
-- (shared/src/crypto.rs), so neither opens in another row or column.
-- `generation` grows with every write of the tokens: a refresh stores its
-- result only if the generation is still the one it refreshed from (a stale
-- writer changes nothing). `refresh_holder`/`refresh_until` are the refresh
-- lease: the worker that holds it is the only one calling the provider for
-- this credential; it holds no transaction while it does, and the others
-- wait for the next generation and read it.
CREATE TABLE oauth_links (
    credential_id   uuid PRIMARY KEY REFERENCES credentials (id) ON DELETE CASCADE,
    company_id      uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    provider        text NOT NULL,
    access_token    bytea NOT NULL,
    refresh_token   bytea,
    key_id          text NOT NULL,
    expires_at      timestamptz,
    scopes          text[] NOT NULL DEFAULT '{}',
    needs_reconnect boolean NOT NULL DEFAULT false,
    generation      bigint NOT NULL DEFAULT 1,
    refresh_holder  uuid,
    refresh_until   timestamptz,
    connected_at    timestamptz NOT NULL DEFAULT now(),
    refreshed_at    timestamptz,
    CHECK ((refresh_holder IS NULL) = (refresh_until IS NULL))
);
CREATE INDEX oauth_links_company_idx ON oauth_links (company_id);
CREATE INDEX oauth_links_key_idx ON oauth_links (key_id);

-- oauth_states: an authorization request between `authorize` and the
-- callback. Only the SHA-256 of `state` is stored; a row is deleted when
-- the callback spends it (single use) and is refused past `expires_at`.
-- The PKCE verifier is sealed, bound to floq/v1/<company>/oauth_states/code_verifier/<hash hex>.
CREATE TABLE oauth_states (
    state_hash     bytea PRIMARY KEY,
    company_id     uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    credential_id  uuid NOT NULL REFERENCES credentials (id) ON DELETE CASCADE,
    user_id        uuid NOT NULL,
    -- SHA-256 of the `floq_oauth_browser` cookie of the browser that asked:
    -- the callback is finished only in that browser.
    browser_hash   bytea NOT NULL,
    code_verifier  bytea,
    return_to      text,
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_states_company_idx ON oauth_states (company_id, expires_at);
CREATE INDEX oauth_states_credential_idx ON oauth_states (credential_id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['oauth_links', 'oauth_states'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO floq_app USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO floq_app', t);
    END LOOP;
END
$$;

-- The public part of an `oauth2` credential (`{provider, client_id, scopes}`),
-- kept beside its sealed data so the API can build an authorization URL
-- without opening the client secret.
ALTER TABLE credentials ADD COLUMN oauth_client jsonb;

-- Key rotation re-encrypts link tokens as it does credentials: it reads and
-- rewrites the sealed columns, nothing else.
CREATE POLICY rotate ON oauth_links TO floq_key_rotation USING (true) WITH CHECK (true);
GRANT SELECT (credential_id, company_id, access_token, refresh_token, key_id) ON oauth_links TO floq_key_rotation;
GRANT UPDATE (access_token, refresh_token, key_id) ON oauth_links TO floq_key_rotation;
