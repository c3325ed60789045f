-- Synchronous webhooks: how long a call waits for its run by default (0 =
-- answer 202 at once). A caller's `?wait=` overrides it; both are capped by
-- FLOQ_WEBHOOK_MAX_WAIT_SECONDS at request time.
ALTER TABLE flow_webhooks
    ADD COLUMN wait_seconds integer NOT NULL DEFAULT 0 CHECK (wait_seconds BETWEEN 0 AND 3600);
