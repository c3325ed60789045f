-- A role is one of the values shared::access::Role names (the vocabulary
-- test compares the two). The API never wrote anything else; this makes the
-- database refuse it too, so a bad value cannot hide until sign-in.
ALTER TABLE memberships ADD CONSTRAINT memberships_roles_check CHECK (
    roles <@ ARRAY['admin', 'flow_editor', 'flow_executor', 'audit_viewer',
                   'integration_manager', 'analytics_viewer', 'viewer', 'none']::text[]);
ALTER TABLE account_tokens ADD CONSTRAINT account_tokens_roles_check CHECK (
    roles <@ ARRAY['admin', 'flow_editor', 'flow_executor', 'audit_viewer',
                   'integration_manager', 'analytics_viewer', 'viewer', 'none']::text[]);
