-- Cron schedules of deployed flows. A fire is a row keyed by (schedule, tick):
-- whichever scheduler instance gets there first creates the run, any second
-- attempt (another replica, a leader fail-over) is a no-op.
CREATE TABLE schedules (
    id             uuid PRIMARY KEY,
    company_id     uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    flow_id        uuid NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    cron           text NOT NULL,
    timezone       text NOT NULL,
    enabled        boolean NOT NULL DEFAULT true,
    misfire        text NOT NULL DEFAULT 'skip' CHECK (misfire IN ('skip', 'fire_once')),
    next_fire_at   timestamptz,
    last_tick      timestamptz,
    last_fired_at  timestamptz,
    last_drift_ms  bigint,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE enabled;
CREATE INDEX schedules_flow_idx ON schedules (company_id, flow_id);

CREATE TABLE schedule_fires (
    schedule_id  uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    company_id   uuid NOT NULL,
    tick         timestamptz NOT NULL,
    run_id       uuid,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, tick)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['schedules', 'schedule_fires'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO floq_app USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO floq_app', t);
    END LOOP;
END
$$;
-- Finding due schedules is the scheduler's one cross-tenant read here; firing runs under each tenant.
CREATE POLICY system_due ON schedules FOR SELECT TO floq_system USING (true);
GRANT SELECT ON schedules TO floq_system;
