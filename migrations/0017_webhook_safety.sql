-- Webhook safety.
--
-- Replay: a signed webhook call is accepted once. Each accepted signature is
-- remembered (as a hash of its MAC) until it can no longer verify, so the
-- same signed request sent again, to this replica or any other, is refused.
-- Keyed by the flow, not the webhook row: disabling and re-enabling a webhook
-- yields the same signing secret, so its old claims must survive that.
CREATE TABLE webhook_signatures (
    flow_id         uuid NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    company_id      uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    signature_hash  bytea NOT NULL CHECK (length(signature_hash) = 32),
    -- When the signature's timestamp falls out of the webhook's tolerance (plus clock skew).
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (flow_id, signature_hash)
);
CREATE INDEX webhook_signatures_expiry_idx ON webhook_signatures (expires_at);
ALTER TABLE webhook_signatures ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_signatures FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON webhook_signatures TO floq_app
    USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company());
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_signatures TO floq_app;
-- The claim happens in the token lookup's transaction, before a tenant is set:
-- floq_system may only claim for an existing webhook, under its own company.
CREATE POLICY system_claim ON webhook_signatures FOR INSERT TO floq_system
    WITH CHECK (EXISTS (SELECT 1 FROM flow_webhooks w
                         WHERE w.flow_id = webhook_signatures.flow_id
                           AND w.company_id = webhook_signatures.company_id));
-- Retention may forget only claims that have expired.
CREATE POLICY system_trim ON webhook_signatures FOR DELETE TO floq_system USING (expires_at < now());
CREATE POLICY system_trim_read ON webhook_signatures FOR SELECT TO floq_system USING (expires_at < now());
GRANT INSERT, SELECT, DELETE ON webhook_signatures TO floq_system;

-- Redirects: a `respond` node may send `Location` (or `Link`) only to a
-- relative, same-origin target or to one of these origins
-- (`scheme://host[:port]`, normalized by the API).
ALTER TABLE flow_webhooks
    ADD COLUMN redirect_origins text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(redirect_origins) <= 20);
