-- MCP: a flow an editor opts in is a tool MCP clients may call (docs/mcp.md).
-- One tool per flow; its name is unique in the company, since `tools/call`
-- names the tool and not the flow. The input schema is JSON Schema, checked
-- by the API before it is stored.
CREATE TABLE flow_mcp_tools (
    flow_id       uuid PRIMARY KEY REFERENCES flows (id) ON DELETE CASCADE,
    company_id    uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    tool_name     text NOT NULL CHECK (tool_name ~ '^[A-Za-z0-9_.-]{1,128}$'),
    description   text NOT NULL CHECK (length(description) BETWEEN 1 AND 4000),
    input_schema  jsonb NOT NULL CHECK (jsonb_typeof(input_schema) = 'object'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, tool_name)
);
ALTER TABLE flow_mcp_tools ENABLE ROW LEVEL SECURITY;
ALTER TABLE flow_mcp_tools FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON flow_mcp_tools TO floq_app
    USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company());
GRANT SELECT, INSERT, UPDATE, DELETE ON flow_mcp_tools TO floq_app;

-- Runs an MCP client started say so (`Trigger::Mcp` in shared/src/run.rs).
ALTER TABLE runs DROP CONSTRAINT runs_trigger_check;
ALTER TABLE runs ADD CONSTRAINT runs_trigger_check CHECK (trigger IN ('api', 'webhook', 'cron', 'mcp')) NOT VALID;
ALTER TABLE runs VALIDATE CONSTRAINT runs_trigger_check;
