-- Idempotent API triggers: the same Idempotency-Key for the same flow within
-- 24 hours maps to the run it first created.
CREATE TABLE idempotency_keys (
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    flow_id     uuid NOT NULL,
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    run_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, flow_id, key)
);
CREATE INDEX idempotency_keys_age_idx ON idempotency_keys (created_at);
ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON idempotency_keys TO floq_app
    USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company());
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO floq_app;
-- Retention forgets keys past their window.
CREATE POLICY system_retention ON idempotency_keys FOR ALL TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, DELETE ON idempotency_keys TO floq_system;
