-- Audit log: append-only entries, sealed into a per-company hash chain after
-- the fact, and per-company retention settings.
--
-- Writers only ever INSERT (floq_app for its own company, floq_system for
-- batched and platform-level entries); nobody but retention deletes. Writers
-- never touch a chain head: one sealer (the scheduler leader) appends
-- audit_seals rows in order. Entry ids come from a sequence and can commit out
-- of order, so the sealer seals by transaction id: every transaction older
-- than its snapshot's xmin has finished, so no older entry can still appear.

CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The nil uuid holds platform-level entries that belong to no company
    -- (a failed login for an unknown address, cross-tenant scheduler duties).
    company_id     uuid NOT NULL,
    at             timestamptz NOT NULL,
    xact           bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    actor_type     text NOT NULL CHECK (actor_type IN ('user', 'system', 'anonymous')),
    actor_id       uuid,
    actor_label    text,
    via            text CHECK (via IN ('session', 'api_key')),
    via_id         uuid,
    client_ip      text,
    request_id     text,
    action         text NOT NULL,
    resource_type  text,
    resource_id    text,
    outcome        text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    details        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_company_idx ON audit_log (company_id, id);
CREATE INDEX audit_log_xact_idx ON audit_log (xact);

-- The one serialization of an entry: what the chain hashes, the API returns
-- and the sink writes. jsonb's text form is canonical (keys sorted, no
-- insignificant whitespace); the timestamp is rendered in UTC so the session
-- time zone cannot change a hash.
CREATE FUNCTION floq_audit_json(a audit_log) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id,
        'company_id', a.company_id,
        'at', to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'actor', jsonb_build_object('type', a.actor_type, 'id', a.actor_id, 'label', a.actor_label,
                                    'via', a.via, 'via_id', a.via_id),
        'client_ip', a.client_ip,
        'request_id', a.request_id,
        'action', a.action,
        'resource', jsonb_build_object('type', a.resource_type, 'id', a.resource_id),
        'outcome', a.outcome,
        'details', a.details)
$$;

CREATE TABLE audit_seals (
    entry_id    bigint PRIMARY KEY,
    company_id  uuid NOT NULL,
    seq         bigint NOT NULL,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL,
    UNIQUE (company_id, seq)
);

CREATE TABLE audit_chain_heads (
    company_id  uuid PRIMARY KEY,
    seq         bigint NOT NULL,
    hash        bytea NOT NULL
);

-- Every entry whose transaction id is below this has been sealed.
CREATE TABLE audit_seal_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    watermark  bigint NOT NULL
);
INSERT INTO audit_seal_state (watermark) VALUES (0);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_seals ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_seals FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_seal_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_seal_state FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_read ON audit_log FOR SELECT TO floq_app USING (company_id = floq_current_company());
CREATE POLICY tenant_append ON audit_log FOR INSERT TO floq_app WITH CHECK (company_id = floq_current_company());
GRANT SELECT, INSERT ON audit_log TO floq_app;
CREATE POLICY tenant_read ON audit_seals FOR SELECT TO floq_app USING (company_id = floq_current_company());
GRANT SELECT ON audit_seals TO floq_app;

-- floq_system: batched appends and the sealer. DELETE is for retention alone.
CREATE POLICY system_all ON audit_log TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, DELETE ON audit_log TO floq_system;
CREATE POLICY system_all ON audit_seals TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, DELETE ON audit_seals TO floq_system;
CREATE POLICY system_all ON audit_chain_heads TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO floq_system;
CREATE POLICY system_all ON audit_seal_state TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, UPDATE ON audit_seal_state TO floq_system;

-- Recomputes a company's chain in one pass and returns its first broken link:
-- an entry changed or deleted, a seal changed, a seal missing from the sequence.
-- The oldest remaining seal is the anchor (retention removes the ones before it).
CREATE FUNCTION floq_audit_verify(OUT checked bigint, OUT broken_seq bigint, OUT broken_entry bigint,
                                  OUT reason text)
LANGUAGE sql STABLE AS $$
    WITH links AS (
        SELECT s.seq, s.entry_id, s.prev_hash, s.hash, a.id IS NULL AS missing,
               CASE WHEN a.id IS NULL THEN NULL
                    ELSE sha256(s.prev_hash || convert_to(floq_audit_json(a)::text, 'UTF8')) END AS recomputed,
               lag(s.seq) OVER w AS prev_seq, lag(s.hash) OVER w AS prev_stored
          FROM audit_seals s
          LEFT JOIN audit_log a ON a.id = s.entry_id
         WHERE s.company_id = floq_current_company()
        WINDOW w AS (ORDER BY s.seq)
    ), broken AS (
        SELECT seq, entry_id,
               CASE WHEN missing THEN 'entry_missing'
                    WHEN recomputed <> hash THEN 'entry_altered'
                    WHEN prev_seq IS NOT NULL AND prev_seq <> seq - 1 THEN 'seal_missing'
                    WHEN prev_seq IS NOT NULL AND prev_stored <> prev_hash THEN 'link_altered'
               END AS reason
          FROM links
    )
    SELECT (SELECT count(*) FROM links),
           b.seq, b.entry_id, b.reason
      FROM (SELECT 1) one
      LEFT JOIN LATERAL (SELECT * FROM broken WHERE reason IS NOT NULL ORDER BY seq LIMIT 1) b ON true
$$;
GRANT EXECUTE ON FUNCTION floq_audit_verify() TO floq_app;

CREATE TABLE company_settings (
    company_id          uuid PRIMARY KEY REFERENCES companies (id) ON DELETE CASCADE,
    audit_max_age_days  integer NOT NULL,
    audit_max_entries   bigint NOT NULL,
    runs_max_age_days   integer NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE company_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE company_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON company_settings TO floq_app
    USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company());
GRANT SELECT, INSERT, UPDATE ON company_settings TO floq_app;
CREATE POLICY system_read ON company_settings FOR SELECT TO floq_system USING (true);
GRANT SELECT ON company_settings TO floq_system;
