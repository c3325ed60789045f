-- Webhooks: a flow may be triggered by an unguessable URL. Only the token's
-- hash is stored; the optional signing secret is derived from a server key
-- and a version (never stored), so the API never has to decrypt anything.
CREATE TABLE flow_webhooks (
    flow_id            uuid PRIMARY KEY REFERENCES flows (id) ON DELETE CASCADE,
    company_id         uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    token_hash         bytea NOT NULL UNIQUE,
    signed             boolean NOT NULL DEFAULT false,
    signature_header   text NOT NULL DEFAULT 'x-floq-signature',
    tolerance_seconds  integer NOT NULL DEFAULT 300 CHECK (tolerance_seconds BETWEEN 1 AND 86400),
    secret_version     integer NOT NULL DEFAULT 1,
    created_at         timestamptz NOT NULL DEFAULT now(),
    rotated_at         timestamptz
);
ALTER TABLE flow_webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE flow_webhooks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON flow_webhooks TO floq_app
    USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company());
GRANT SELECT, INSERT, UPDATE, DELETE ON flow_webhooks TO floq_app;
-- Resolving a token happens before any tenant is known.
CREATE POLICY system_lookup ON flow_webhooks FOR SELECT TO floq_system USING (true);
GRANT SELECT ON flow_webhooks TO floq_system;
