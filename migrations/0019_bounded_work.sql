-- Bounded work per request and per retention batch.
--
-- Lists: every list endpoint reads one page as one range of an index in the
-- list's keyset order (api/src/extract.rs `Page`), so a page costs the same
-- however deep the caller pages. Lists by name use the existing
-- UNIQUE (company_id, name) constraints and kv's primary key.
CREATE INDEX grants_company_id_idx ON grants (company_id, id);
CREATE INDEX api_keys_company_id_idx ON api_keys (company_id, id);
CREATE INDEX api_keys_user_id_idx ON api_keys (company_id, user_id, id);
DROP INDEX api_keys_company_idx; -- a prefix of both above
CREATE INDEX schedules_flow_id_idx ON schedules (company_id, flow_id, id);
DROP INDEX schedules_flow_idx; -- a prefix of the one above
CREATE INDEX memberships_joined_idx ON memberships (company_id, created_at, user_id);
CREATE INDEX account_tokens_invitation_idx ON account_tokens (company_id, id)
    WHERE purpose = 'invitation' AND used_at IS NULL;

-- Trimming what would otherwise grow forever (scheduler/src/retention.rs):
-- each batch is the oldest rows of one of these indexes.
CREATE INDEX sessions_expiry_idx ON sessions (expires_at);
CREATE INDEX login_attempts_age_idx ON login_attempts (updated_at);
CREATE INDEX schedule_fires_age_idx ON schedule_fires (fired_at);
-- A fire record only keys its tick while the tick can still be fired; the
-- scheduler may read and delete only records a day past that
-- (scheduler/src/cron_fire.rs `FIRE_RECORD_KEEP`).
CREATE POLICY system_trim ON schedule_fires FOR DELETE TO floq_system USING (fired_at < now() - interval '1 day');
CREATE POLICY system_trim_read ON schedule_fires FOR SELECT TO floq_system USING (fired_at < now() - interval '1 day');
GRANT SELECT, DELETE ON schedule_fires TO floq_system;
