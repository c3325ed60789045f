-- Webhook signing secrets of their own. Until now a signed webhook's secret
-- was derived from FLOQ_JWT_SECRET, the flow and secret_version, so rotating
-- the API-key secret changed every webhook's secret. From here on each
-- webhook holds a random secret, sealed like every secret in floq
-- (AES-256-GCM, shared/src/crypto.rs) and bound to its row: the associated
-- data names company, table, column and flow, so a ciphertext copied to
-- another webhook or company does not open. signing_key_id names the sealing
-- key, so `floq-api admin rotate-keys` can find what is left to move.
--
-- Rows from before this migration have no secret yet: SQL cannot compute the
-- value they used (it needs FLOQ_JWT_SECRET), so the API stores it right after
-- migrating (api/src/webhook_secret.rs, `backfill`), once, wherever migrations
-- run. secret_version now matters only to that backfill.
--
-- No new policy or grant: floq_app reaches the columns under the table's
-- tenant policy, and the token lookup (floq_system, SELECT only) reads the
-- one row it finds by token hash. The backfill and key rotation find rows
-- with that same SELECT and write as floq_app, company by company.
ALTER TABLE flow_webhooks
    ADD COLUMN signing_secret bytea,
    ADD COLUMN signing_key_id text,
    ADD CONSTRAINT flow_webhooks_signing_sealed CHECK ((signing_secret IS NULL) = (signing_key_id IS NULL));
CREATE INDEX flow_webhooks_signing_key_idx ON flow_webhooks (signing_key_id);
-- What the backfill looks for at every start: empty once it has run.
CREATE INDEX flow_webhooks_unsealed_idx ON flow_webhooks (company_id, flow_id) WHERE signing_secret IS NULL;
