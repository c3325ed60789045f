-- Whether a worker's lease is current. A repeated message of a run that a
-- live worker still holds (its broker channel died under it and the run goes
-- on there) is not run a second time; should that worker die, its lease
-- lapses and the reaper resumes the run. Worker ids only: nothing of a
-- tenant is read or told.
CREATE FUNCTION floq_lease_alive(p_worker uuid, p_lease interval) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT EXISTS (SELECT 1 FROM workers WHERE id = p_worker AND heartbeat_at >= now() - p_lease)
$$;
REVOKE ALL ON FUNCTION floq_lease_alive(uuid, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION floq_lease_alive(uuid, interval) TO floq_app;
