-- Live run updates (`GET /api/v1/runs/events`): a run last changed status at
-- the latest of its accept, start and finish times. This index makes "a
-- company's runs changed after (t, id), oldest first" one range scan, so each
-- poll of an event stream reads only what changed.
--
-- Its cost is on the run path: every run's insert and each status update
-- (the columns it covers change) also write this index, and those updates
-- can no longer be HOT. Measure with the benchmark (README) when changing it.
CREATE INDEX runs_changed_idx ON runs (company_id, (GREATEST(queued_at, started_at, finished_at)), id);
