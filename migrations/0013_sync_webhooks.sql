-- Synchronous webhooks. `wait_seconds`: how long a call waits for its run by
-- default (0 = answer 202 at once). `allow_wait`: whether callers may choose
-- with `?wait=` (off: `wait` is an ordinary query parameter of the caller's).
-- Both are capped by FLOQ_WEBHOOK_MAX_WAIT_SECONDS at request time.
ALTER TABLE flow_webhooks
    ADD COLUMN wait_seconds integer NOT NULL DEFAULT 0 CHECK (wait_seconds BETWEEN 0 AND 3600),
    ADD COLUMN allow_wait boolean NOT NULL DEFAULT true;
