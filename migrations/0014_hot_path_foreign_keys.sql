-- The run path inserts a run and its outbox row for every accepted request.
-- Their foreign keys cost three referential-integrity checks per run, each a
-- `SELECT … FOR KEY SHARE` on the referenced row: every concurrent commit of
-- one company locked the same `companies` row, so PostgreSQL had to build a
-- MultiXact for it over and over. The references are guaranteed where rows
-- are made instead: the acceptor inserts runs only by joining the caller's
-- flow and its `latest_version` (flow versions are insert-only and flows are
-- soft-deleted), under RLS for the company. Companies are never deleted by
-- the application; a purge must delete their runs and outbox rows explicitly,
-- as retention already does.
ALTER TABLE runs DROP CONSTRAINT runs_company_id_fkey;
ALTER TABLE runs DROP CONSTRAINT runs_flow_id_version_fkey;
ALTER TABLE outbox DROP CONSTRAINT outbox_company_id_fkey;
