-- Retention: the scheduler deletes each company's runs past their age
-- (never queued or running ones), as floq_system, in small batches.
CREATE POLICY system_retention ON runs FOR ALL TO floq_system USING (true) WITH CHECK (true);
CREATE POLICY system_retention ON run_steps FOR ALL TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, DELETE ON runs, run_steps TO floq_system;
