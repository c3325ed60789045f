-- What a flow may reach is fixed when it is saved and checked again when it
-- runs, against the user who deployed the version (not whoever edits later):
-- credentials, sub-flows and secret KV values.

ALTER TABLE flow_versions ADD COLUMN deployed_by uuid;

-- Secret KV values get an id so they can be granted like credentials.
ALTER TABLE kv ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE kv ADD CONSTRAINT kv_id_key UNIQUE (id);

ALTER TABLE grants DROP CONSTRAINT grants_entity_type_check;
ALTER TABLE grants ADD CONSTRAINT grants_entity_type_check
    CHECK (entity_type IN ('flow', 'flow_group', 'integration', 'secret'));

-- Whether a member of the current company may use an entity in a flow: an
-- admin may use everything of the company; anyone else needs `execute` (or
-- `edit`) on it, directly, through a group or through its flow group. A user
-- no longer a member may use nothing, whatever grants are left behind.
CREATE FUNCTION floq_may_use(p_user uuid, p_entity_type text, p_entity uuid, p_flow_group uuid)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM memberships m
         WHERE m.user_id = p_user AND m.company_id = floq_current_company()
           AND ('admin' = ANY (m.roles) OR floq_access(p_user, p_entity_type, p_entity, p_flow_group) >= 2)
    )
$$;
GRANT EXECUTE ON FUNCTION floq_may_use(uuid, text, uuid, uuid) TO floq_app;

-- Destination binding: the origins a credential or secret value may be sent
-- to (empty: anywhere the egress policy allows). Masking cannot catch a
-- remote server that transforms a secret; only refusing to send it can.
ALTER TABLE credentials ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}';
ALTER TABLE kv ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}';
