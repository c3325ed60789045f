-- Entity-level access: flow groups, and grants of view / execute / edit on a
-- flow, a flow group or an integration to a user or a group.

CREATE TABLE flow_groups (
    id          uuid PRIMARY KEY,
    company_id  uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, name)
);

ALTER TABLE flows ADD COLUMN group_id uuid REFERENCES flow_groups (id) ON DELETE SET NULL;

CREATE TABLE grants (
    id            uuid PRIMARY KEY,
    company_id    uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    subject_type  text NOT NULL CHECK (subject_type IN ('user', 'group')),
    subject_id    uuid NOT NULL,
    entity_type   text NOT NULL CHECK (entity_type IN ('flow', 'flow_group', 'integration')),
    entity_id     uuid NOT NULL,
    level         text NOT NULL CHECK (level IN ('view', 'execute', 'edit')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company_id, subject_type, subject_id, entity_type, entity_id, level)
);
CREATE INDEX grants_entity_idx ON grants (company_id, entity_type, entity_id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['flow_groups', 'grants'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO floq_app USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO floq_app', t);
    END LOOP;
END
$$;

-- The strongest level (1 view, 2 execute, 3 edit; 0 none) a user holds on an
-- entity, directly or through a group, and for flows also through their flow
-- group. Runs as the caller, so RLS confines it to the current company.
CREATE FUNCTION floq_access(p_user uuid, p_entity_type text, p_entity uuid, p_flow_group uuid)
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(max(CASE g.level WHEN 'view' THEN 1 WHEN 'execute' THEN 2 ELSE 3 END), 0)
      FROM grants g
     WHERE ((g.entity_type = p_entity_type AND g.entity_id = p_entity)
            OR (p_flow_group IS NOT NULL AND g.entity_type = 'flow_group' AND g.entity_id = p_flow_group))
       AND ((g.subject_type = 'user' AND g.subject_id = p_user)
            OR (g.subject_type = 'group'
                AND g.subject_id IN (SELECT gm.group_id FROM group_members gm WHERE gm.user_id = p_user)))
$$;
GRANT EXECUTE ON FUNCTION floq_access(uuid, text, uuid, uuid) TO floq_app;
