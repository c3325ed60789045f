-- 0001 granted floq_app and floq_system to the migrating user but swallowed
-- any failure, so an install whose user could not be granted them migrated
-- "successfully" and then failed on every tenant transaction. Applied
-- migrations cannot change, so this one grants again and fails loudly,
-- naming the fix, when the connecting user still cannot SET ROLE to both.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['floq_app', 'floq_system'] LOOP
        IF NOT pg_has_role(current_user, role_name, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', role_name, current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'floq: the database user % is not a member of role % and cannot grant it to itself', current_user, role_name
                    USING HINT = format('As a superuser: GRANT %I TO %I; then migrate again.', role_name, current_user);
            END;
        END IF;
    END LOOP;
END
$$;
