-- Storage tuned for the run path (measured with tests/src/bin/bench.rs).
--
-- Finishing a run rewrites its row; with free space left on the page the
-- update is HOT (no index writes), since status and outcome are not indexed.
ALTER TABLE runs SET (fillfactor = 70);

-- Steps are written only by the worker's outcome writer, in the same
-- transaction and statement batch that finishes their run, and only for runs
-- that update actually finished; the per-row foreign-key check (one extra
-- query per step) bought nothing but cost. Deleting a run deletes its steps
-- explicitly (retention).
ALTER TABLE run_steps DROP CONSTRAINT run_steps_run_id_fkey;
