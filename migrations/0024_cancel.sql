-- Cancelling runs (POST /api/v1/runs/{id}/cancel).
--
-- A queued run becomes `cancelled` at once; a running one records when its
-- cancel was asked, so that a redelivered message of it finishes it as
-- cancelled instead of running it again. Interrupted nodes end as step
-- status `cancelled`.
ALTER TABLE runs ADD COLUMN cancel_requested_at timestamptz;

ALTER TABLE run_steps DROP CONSTRAINT run_steps_status_check;
ALTER TABLE run_steps ADD CONSTRAINT run_steps_status_check
    CHECK (status IN ('succeeded', 'failed', 'skipped', 'cancelled')) NOT VALID;
ALTER TABLE run_steps VALIDATE CONSTRAINT run_steps_status_check;

-- Workers refuse fresh deliveries of recently cancelled runs without reading
-- the runs table (the hot path reads nothing); one that reconnects reloads
-- the ids it may have missed from here. The table holds run ids and times
-- only, nothing a tenant could read, and is reached only through the two
-- functions below (no role has privileges on it), so no worker needs a
-- cross-tenant reach into `runs`. Rows older than a day are pruned as new
-- ones arrive: a worker keeps ids that long (see worker/src/control.rs).
CREATE TABLE run_cancels (
    run_id uuid PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_cancels_at_idx ON run_cancels (at);
REVOKE ALL ON run_cancels FROM PUBLIC;

CREATE FUNCTION floq_note_cancel(p_run uuid) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    DELETE FROM run_cancels WHERE at < now() - interval '1 day';
    INSERT INTO run_cancels (run_id) VALUES (p_run) ON CONFLICT (run_id) DO NOTHING;
$$;

CREATE FUNCTION floq_recent_cancels(p_since timestamptz, p_limit integer) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT run_id FROM run_cancels WHERE at >= p_since ORDER BY at DESC LIMIT p_limit;
$$;

REVOKE ALL ON FUNCTION floq_note_cancel(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION floq_recent_cancels(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION floq_note_cancel(uuid) TO floq_app;
GRANT EXECUTE ON FUNCTION floq_recent_cancels(timestamptz, integer) TO floq_app;
