-- Checkpoints of long runs (design §3, invariant 1; docs/runs.md "Checkpoints and resume").
--
-- A run past the running mark writes its completed steps early, as the
-- `run_steps` rows its finish would write (the finish inserts with
-- ON CONFLICT DO NOTHING, and writes a step's audit entry only with the row
-- it inserted, so nothing is written twice). A resumed run reads them back:
-- a branch's port is needed to restore which way it went.
ALTER TABLE run_steps ADD COLUMN port text;

-- A top-level node a run is parked on (a long `delay`, a long retry backoff):
-- when it may go on and, for a backoff, which attempt comes next. Written
-- with the checkpoint that parks the run; rare, so keyed like its steps and
-- deleted with them (no foreign key, as for run_steps: migrations/0004).
CREATE TABLE run_waits (
    run_id      uuid NOT NULL,
    company_id  uuid NOT NULL,
    node_id     text NOT NULL,
    wake_at     timestamptz NOT NULL,
    attempt     integer NOT NULL CHECK (attempt > 0),
    PRIMARY KEY (run_id, node_id)
);
ALTER TABLE run_waits ENABLE ROW LEVEL SECURITY;
ALTER TABLE run_waits FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON run_waits TO floq_app
    USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company());
GRANT SELECT, INSERT, UPDATE, DELETE ON run_waits TO floq_app;
