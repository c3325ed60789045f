-- Retry and replay, worker leases and the reaper (issue #15).
--
-- `retry_of`: the run a retry (or replay) was started from. `worker_id`: the
-- worker that holds a run past its running mark (or that took it over after
-- a redelivery); its lease is that worker's heartbeat. `requeued_at`: when
-- the reaper last published the run again, so a run it requeued is not
-- requeued again every tick, and is found again if that message is lost too.
--
-- None of the new columns changes when a run finishes, and the new indexes
-- cover only rows where they are set (long runs, retries, reaped runs), so
-- finishing a run stays a HOT update (migration 0004).
ALTER TABLE runs ADD COLUMN retry_of uuid, ADD COLUMN worker_id uuid, ADD COLUMN requeued_at timestamptz;
CREATE INDEX runs_retry_of_idx ON runs (company_id, retry_of) WHERE retry_of IS NOT NULL;
CREATE INDEX runs_worker_idx ON runs (worker_id) WHERE worker_id IS NOT NULL;
CREATE INDEX runs_requeued_idx ON runs (requeued_at) WHERE requeued_at IS NOT NULL;

-- One row per worker process: its lease. Cross-tenant and without tenant
-- data; tenant roles have no grant on it at all.
CREATE TABLE workers (
    id           uuid PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    hostname     text NOT NULL DEFAULT ''
);
ALTER TABLE workers ENABLE ROW LEVEL SECURITY;
ALTER TABLE workers FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['floq_lease', 'floq_reaper'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', role_name);
            EXCEPTION WHEN unique_violation OR duplicate_object THEN
                NULL; -- a concurrent migration of another database made it
            END;
        END IF;
        IF NOT pg_has_role(current_user, role_name, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', role_name, current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'floq: the database user % is not a member of role % and cannot grant it to itself', current_user, role_name
                    USING HINT = format('As a superuser: GRANT %I TO %I; then migrate again.', role_name, current_user);
            END;
        END IF;
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', role_name);
    END LOOP;
END
$$;

-- Lease: a worker writes its own heartbeat row; nothing else.
CREATE POLICY lease ON workers TO floq_lease USING (true) WITH CHECK (true);
GRANT SELECT, INSERT ON workers TO floq_lease;
GRANT UPDATE (heartbeat_at) ON workers TO floq_lease;

-- Reaper: reads leases, forgets long-dead workers that hold no run, and
-- finds lost runs only through the two functions below (ids, no contents);
-- acting on a run is tenant work as floq_app.
CREATE POLICY reaper ON workers TO floq_reaper USING (true);
GRANT SELECT, DELETE ON workers TO floq_reaper;

-- Runs `running` on a worker whose heartbeat is older than `p_lease`.
CREATE FUNCTION floq_lost_running(p_lease interval, p_limit integer)
RETURNS TABLE (company_id uuid, run_id uuid, worker_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT r.company_id, r.id, r.worker_id
      FROM workers w JOIN runs r ON r.worker_id = w.id
     WHERE w.heartbeat_at < now() - p_lease AND r.status = 'running'
     ORDER BY r.id
     LIMIT p_limit
$$;

-- Runs still `queued` whose message should have reached a worker long ago:
-- among the next `p_limit` runs by id after `p_after` up to `p_upper` (ids
-- are UUID v7, so that is a primary-key range of runs accepted in a time
-- window; the caller moves the window forward), those without an outbox row
-- (their message was published); and runs the reaper requeued before
-- `p_requeued_before` that are still queued. `scanned_to` is the last id the
-- range covered (the next call's `p_after`).
CREATE FUNCTION floq_lost_queued(p_after uuid, p_upper uuid, p_limit integer, p_requeued_before timestamptz,
                                 OUT scanned_to uuid, OUT company_ids uuid[], OUT run_ids uuid[])
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public AS $$
BEGIN
    SELECT s.id INTO scanned_to
      FROM (SELECT id FROM runs WHERE id > p_after AND id <= p_upper ORDER BY id LIMIT p_limit) s
     ORDER BY s.id DESC LIMIT 1;
    SELECT coalesce(array_agg(l.company_id), '{}'), coalesce(array_agg(l.id), '{}') INTO company_ids, run_ids
      FROM (SELECT r.company_id, r.id
              FROM runs r
             WHERE r.id > p_after AND r.id <= coalesce(scanned_to, p_after)
               AND r.status = 'queued' AND r.requeued_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.run_id = r.id)
            UNION
            SELECT r.company_id, r.id
              FROM runs r
             WHERE r.requeued_at < p_requeued_before AND r.status = 'queued'
             LIMIT p_limit) l;
END
$$;

REVOKE ALL ON FUNCTION floq_lost_running(interval, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION floq_lost_queued(uuid, uuid, integer, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION floq_lost_running(interval, integer) TO floq_reaper;
GRANT EXECUTE ON FUNCTION floq_lost_queued(uuid, uuid, integer, timestamptz) TO floq_reaper;

-- The running mark records which worker holds the run (its lease).
CREATE FUNCTION floq_mark_running(p_ids uuid[], p_at timestamptz[], p_worker uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        UPDATE runs SET status = 'running', started_at = p_at[i], worker_id = p_worker
         WHERE id = p_ids[i] AND status = 'queued';
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION floq_mark_running(uuid[], timestamptz[], uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION floq_mark_running(uuid[], timestamptz[], uuid) TO floq_app;
