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
