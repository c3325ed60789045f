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

-- Audit filters (api/src/routes/audit.rs builds the WHERE from the filters
-- given). Each equality filter has an index whose last column is the id, so
-- "newest first, one page" is a backward range scan that stops at the page.
-- An action prefix (`auth.*`) is a byte-wise range, hence text_pattern_ops.
-- Users' entries carry an actor id, system ones a label (a failed sign-in
-- for a known account both), so the two partial actor indexes cost about one
-- index insert per entry between them. `at` grows with the
-- table's physical order, so a BRIN index (a few pages, next to nothing per
-- insert) serves from/to.
CREATE INDEX audit_log_action_idx ON audit_log (company_id, action text_pattern_ops, id);
CREATE INDEX audit_log_actor_id_idx ON audit_log (company_id, actor_id, id) WHERE actor_id IS NOT NULL;
CREATE INDEX audit_log_actor_label_idx ON audit_log (company_id, actor_label, id) WHERE actor_label IS NOT NULL;
CREATE INDEX audit_log_resource_idx ON audit_log (company_id, resource_type, resource_id, id)
    WHERE resource_type IS NOT NULL;
CREATE INDEX audit_log_at_idx ON audit_log USING brin (at);

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

-- Verification in bounded steps (GET /api/v1/audit/verify, docs/audit.md):
-- at most p_limit seals of the current company from seq p_from (clamped to
-- the chain's anchor, the oldest remaining seal), one range of
-- audit_seals (company_id, seq) plus one primary-key read per entry. The
-- seal just before the range is read too, so the first link is checked
-- against it; a caller that continues from `last_seq + 1` checks every link
-- exactly once. Reasons as in floq_audit_verify (0007).
CREATE FUNCTION floq_audit_verify_range(p_from bigint, p_limit integer,
                                        OUT checked bigint, OUT first_seq bigint, OUT last_seq bigint,
                                        OUT broken_seq bigint, OUT broken_entry bigint, OUT reason text)
LANGUAGE sql STABLE AS $$
    WITH start AS (
        SELECT greatest(coalesce(p_from, min(seq)), min(seq)) AS seq
          FROM audit_seals WHERE company_id = floq_current_company()
    ), span AS (
        SELECT s.* FROM audit_seals s, start
         WHERE s.company_id = floq_current_company() AND s.seq >= start.seq - 1
         ORDER BY s.seq LIMIT p_limit + 1
    ), links AS (
        SELECT s.seq, s.entry_id, s.prev_hash, s.hash, a.id IS NULL AS missing,
               CASE WHEN a.id IS NULL THEN NULL
                    ELSE sha256(s.prev_hash || convert_to(floq_audit_json(a)::text, 'UTF8')) END AS recomputed,
               lag(s.seq) OVER w AS prev_seq, lag(s.hash) OVER w AS prev_stored
          FROM span s
          LEFT JOIN audit_log a ON a.id = s.entry_id
        WINDOW w AS (ORDER BY s.seq)
    ), checked AS (
        SELECT l.* FROM links l, start WHERE l.seq >= start.seq ORDER BY l.seq LIMIT p_limit
    ), broken AS (
        SELECT seq, entry_id,
               CASE WHEN missing THEN 'entry_missing'
                    WHEN recomputed <> hash THEN 'entry_altered'
                    WHEN prev_seq IS NOT NULL AND prev_seq <> seq - 1 THEN 'seal_missing'
                    WHEN prev_seq IS NOT NULL AND prev_stored <> prev_hash THEN 'link_altered'
               END AS reason
          FROM checked
    )
    SELECT (SELECT count(*) FROM checked), (SELECT min(seq) FROM checked), (SELECT max(seq) FROM checked),
           b.seq, b.entry_id, b.reason
      FROM (SELECT 1) one
      LEFT JOIN LATERAL (SELECT * FROM broken WHERE reason IS NOT NULL ORDER BY seq LIMIT 1) b ON true
$$;
GRANT EXECUTE ON FUNCTION floq_audit_verify_range(bigint, integer) TO floq_app;
-- `pending` is the company's entries at or past the sealer's watermark (all
-- below it are sealed): one range of audit_log_xact_idx, the unsealed tail.
-- The watermark is one transaction id, the same for every company.
CREATE POLICY tenant_read ON audit_seal_state FOR SELECT TO floq_app USING (true);
GRANT SELECT ON audit_seal_state TO floq_app;
