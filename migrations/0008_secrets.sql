-- Secrets: credentials (integrations) and the per-company KV store.
--
-- Secret material is stored only as AES-256-GCM ciphertext (shared/src/crypto.rs)
-- whose associated data names company, table, column and row, so a value
-- copied to another row or company does not decrypt. key_id says which key
-- sealed each value, so rotation can find what is left to move.

CREATE TABLE credentials (
    id          uuid PRIMARY KEY,
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    type        text NOT NULL CHECK (type IN ('http_bearer', 'http_basic', 'http_header', 'api_key_query',
                                              'postgres', 'smtp', 'oauth2')),
    data        bytea NOT NULL,
    key_id      text NOT NULL,
    -- What reads may show: the field names and a masked hint, never the values.
    fields      text[] NOT NULL,
    hint        text NOT NULL,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, name)
);
CREATE INDEX credentials_key_idx ON credentials (key_id);

CREATE TABLE kv (
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    key         text NOT NULL CHECK (key ~ '^[A-Za-z0-9_.-]{1,128}$'),
    -- Exactly one of: a plain JSON value, or an encrypted secret.
    value       jsonb,
    secret      bytea,
    key_id      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, key),
    CHECK ((value IS NULL) <> (secret IS NULL)),
    CHECK ((secret IS NULL) = (key_id IS NULL))
);
CREATE INDEX kv_key_idx ON kv (key_id) WHERE key_id IS NOT NULL;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['credentials', 'kv'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO floq_app USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO floq_app', t);
        -- Key rotation re-encrypts every company's values, and only that.
        EXECUTE format('CREATE POLICY system_rotate ON %I TO floq_system USING (true) WITH CHECK (true)', t);
        EXECUTE format('GRANT SELECT, UPDATE ON %I TO floq_system', t);
    END LOOP;
END
$$;
