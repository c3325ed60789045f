-- API replicas cache verified keys; any change to keys or memberships tells
-- every replica to drop its cache, whoever made the change (API, CLI, SQL).
CREATE FUNCTION floq_notify_auth_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('floq_auth_changed', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION floq_notify_auth_changed();
CREATE TRIGGER memberships_changed AFTER UPDATE OR DELETE ON memberships
    FOR EACH STATEMENT EXECUTE FUNCTION floq_notify_auth_changed();
