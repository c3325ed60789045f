-- What started a run was free text; it is now the `Trigger` vocabulary in
-- shared/src/run.rs, and a test holds the two equal.
ALTER TABLE runs ADD CONSTRAINT runs_trigger_check CHECK (trigger IN ('api', 'webhook', 'cron')) NOT VALID;
ALTER TABLE runs VALIDATE CONSTRAINT runs_trigger_check;
