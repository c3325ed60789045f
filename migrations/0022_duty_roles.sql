-- Least privilege: every cross-tenant duty gets a role of its own with the
-- narrowest policies, replacing floq_system, which had USING (true) on runs,
-- steps, credentials, KV, sessions and the audit log and served every duty
-- (the unauthenticated webhook, cookie and sign-in paths included).
--
-- The lookup roles behind unauthenticated paths are keyed: they see only the
-- rows matching the value the transaction looked up (`floq.lookup`, set by
-- `shared::db::lookup_tx`): a token's SHA-256 (hex), an id or an e-mail
-- address. That bounds what a faulty statement (one missing its WHERE, say)
-- can reach; it is not a wall against injected SQL, which could set another
-- key: every statement binds its values (sqlx). Writes are granted per column,
-- so even a keyed row can change only in the columns its duty changes. None
-- of these roles can read runs, steps, credentials or KV at all: no GRANT.
--
-- | role                 | duty                                   | keyed by          |
-- | floq_outbox          | outbox sweep                           |                   |
-- | floq_audit_writer    | batched audit appends                  |                   |
-- | floq_sealer          | sealing the audit chain                |                   |
-- | floq_retention       | audit retention and dead-row trimming  |                   |
-- | floq_cron            | finding due schedules                  |                   |
-- | floq_webhook_lookup  | a webhook by its token                 | token hash        |
-- | floq_session_lookup  | a session by its cookie (or its id)    | token hash / id   |
-- | floq_signin          | an identity for sign-in, enrolment     | e-mail / user id  |
-- | floq_session_issue   | a session for a signed-in identity     | user id           |
-- | floq_reset_issue     | a password-reset link for an identity  | user id           |
-- | floq_accounts        | spending a mailed link                 | token hash, then the identity |
-- | floq_key_rotation    | re-encrypting secrets (operator CLI)   |                   |
-- | floq_operator        | identity repair (operator CLI)         |                   |
--
-- Tenant work (retention of runs included) stays floq_app's under the tenant
-- policies. Roles are cluster-wide; their policies live in each database.

DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['floq_outbox', 'floq_audit_writer', 'floq_sealer', 'floq_retention',
                                     'floq_cron', 'floq_webhook_lookup', 'floq_session_lookup', 'floq_signin',
                                     'floq_session_issue', 'floq_reset_issue',
                                     'floq_accounts', 'floq_key_rotation', 'floq_operator'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', role_name);
            EXCEPTION WHEN unique_violation OR duplicate_object THEN
                NULL; -- a concurrent migration of another database made it
            END;
        END IF;
        IF NOT pg_has_role(current_user, role_name, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', role_name, current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'floq: the database user % is not a member of role % and cannot grant it to itself', current_user, role_name
                    USING HINT = format('As a superuser: GRANT %I TO %I; then migrate again.', role_name, current_user);
            END;
        END IF;
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', role_name);
    END LOOP;
END
$$;

-- What a keyed transaction looked up, read three ways. A value of another
-- form reads as NULL, which matches nothing.
CREATE FUNCTION floq_lookup() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT NULLIF(current_setting('floq.lookup', true), '')
$$;
CREATE FUNCTION floq_lookup_hash() RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN floq_lookup() ~ '^[0-9a-f]{64}$' THEN decode(floq_lookup(), 'hex') END
$$;
CREATE FUNCTION floq_lookup_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN floq_lookup() ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                THEN floq_lookup()::uuid END
$$;
GRANT EXECUTE ON FUNCTION floq_lookup(), floq_lookup_hash(), floq_lookup_id()
    TO floq_webhook_lookup, floq_session_lookup, floq_signin, floq_session_issue, floq_reset_issue, floq_accounts;

-- floq_system keeps existing (other databases of the cluster may still use
-- it) but loses every policy and privilege here.
DROP POLICY system_sweep ON outbox;
DROP POLICY system_lookup ON users;
DROP POLICY system_account ON users;
DROP POLICY system_create ON users;
DROP POLICY system_sessions ON sessions;
DROP POLICY system_attempts ON login_attempts;
DROP POLICY system_lookup ON memberships;
DROP POLICY system_lookup ON companies;
DROP POLICY system_all ON audit_log;
DROP POLICY system_all ON audit_seals;
DROP POLICY system_all ON audit_chain_heads;
DROP POLICY system_all ON audit_seal_state;
DROP POLICY system_read ON company_settings;
DROP POLICY system_rotate ON credentials;
DROP POLICY system_rotate ON kv;
DROP POLICY system_retention ON runs;
DROP POLICY system_retention ON run_steps;
DROP POLICY system_retention ON idempotency_keys;
DROP POLICY system_lookup ON flow_webhooks;
DROP POLICY system_due ON schedules;
DROP POLICY system_tokens ON account_tokens;
DROP POLICY system_claim ON webhook_signatures;
DROP POLICY system_trim ON webhook_signatures;
DROP POLICY system_trim_read ON webhook_signatures;
DROP POLICY system_trim ON schedule_fires;
DROP POLICY system_trim_read ON schedule_fires;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM floq_system;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM floq_system;

-- Outbox sweep: publishes and deletes any company's pending messages, and
-- tells each company which of its runs it had to publish; nothing else.
CREATE POLICY outbox_sweep ON outbox TO floq_outbox USING (true) WITH CHECK (true);
CREATE POLICY outbox_sweep_audit ON audit_log FOR INSERT TO floq_outbox
    WITH CHECK (action = 'job.outbox_sweep' AND actor_type = 'system' AND actor_label = 'scheduler' AND actor_id IS NULL);
GRANT SELECT, UPDATE, DELETE ON outbox TO floq_outbox;
GRANT INSERT ON audit_log TO floq_outbox;

-- Audit writer: appends entries of many companies (and of none) in one commit; reads nothing.
CREATE POLICY audit_append ON audit_log FOR INSERT TO floq_audit_writer WITH CHECK (true);
GRANT INSERT ON audit_log TO floq_audit_writer;
GRANT USAGE ON SEQUENCE audit_log_id_seq TO floq_audit_writer;

-- Sealer: reads entries and extends each company's hash chain.
CREATE POLICY seal_read ON audit_log FOR SELECT TO floq_sealer USING (true);
CREATE POLICY seal ON audit_seals TO floq_sealer USING (true) WITH CHECK (true);
CREATE POLICY seal ON audit_chain_heads TO floq_sealer USING (true) WITH CHECK (true);
CREATE POLICY seal ON audit_seal_state TO floq_sealer USING (true) WITH CHECK (true);
GRANT SELECT ON audit_log TO floq_sealer;
GRANT SELECT, INSERT ON audit_seals TO floq_sealer;
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO floq_sealer;
GRANT SELECT, UPDATE ON audit_seal_state TO floq_sealer;

-- Retention: each company's settings, old audit entries with their seals, and
-- rows that are dead on their own clock. Runs are trimmed as the tenant.
CREATE POLICY retention_read ON companies FOR SELECT TO floq_retention USING (true);
CREATE POLICY retention_read ON company_settings FOR SELECT TO floq_retention USING (true);
CREATE POLICY retention ON audit_log FOR SELECT TO floq_retention USING (true);
CREATE POLICY retention_delete ON audit_log FOR DELETE TO floq_retention USING (true);
CREATE POLICY retention ON audit_seals FOR SELECT TO floq_retention USING (true);
CREATE POLICY retention_delete ON audit_seals FOR DELETE TO floq_retention USING (true);
CREATE POLICY retention_read ON audit_chain_heads FOR SELECT TO floq_retention USING (true);
CREATE POLICY retention ON idempotency_keys FOR SELECT TO floq_retention USING (created_at < now() - interval '24 hours');
CREATE POLICY retention_delete ON idempotency_keys FOR DELETE TO floq_retention USING (created_at < now() - interval '24 hours');
CREATE POLICY retention ON webhook_signatures FOR SELECT TO floq_retention USING (expires_at < now());
CREATE POLICY retention_delete ON webhook_signatures FOR DELETE TO floq_retention USING (expires_at < now());
CREATE POLICY retention ON schedule_fires FOR SELECT TO floq_retention USING (fired_at < now() - interval '1 day');
CREATE POLICY retention_delete ON schedule_fires FOR DELETE TO floq_retention USING (fired_at < now() - interval '1 day');
CREATE POLICY retention ON sessions FOR SELECT TO floq_retention USING (expires_at < now());
CREATE POLICY retention_delete ON sessions FOR DELETE TO floq_retention USING (expires_at < now());
CREATE POLICY retention ON login_attempts FOR SELECT TO floq_retention USING (locked_until IS NULL OR locked_until < now());
CREATE POLICY retention_delete ON login_attempts FOR DELETE TO floq_retention USING (locked_until IS NULL OR locked_until < now());
GRANT SELECT ON companies, company_settings, audit_chain_heads TO floq_retention;
GRANT SELECT, DELETE ON audit_log, audit_seals, idempotency_keys, webhook_signatures, schedule_fires, sessions,
    login_attempts TO floq_retention;

-- Cron: which schedules are due, and of which company; firing is tenant work.
CREATE POLICY cron_due ON schedules FOR SELECT TO floq_cron USING (enabled);
GRANT SELECT ON schedules TO floq_cron;

-- Webhook lookup (anonymous): the one webhook whose token it holds, and a
-- signature claim for that webhook only.
CREATE POLICY webhook_lookup ON flow_webhooks FOR SELECT TO floq_webhook_lookup USING (token_hash = floq_lookup_hash());
CREATE POLICY claim ON webhook_signatures FOR INSERT TO floq_webhook_lookup
    WITH CHECK (EXISTS (SELECT 1 FROM flow_webhooks w
                         WHERE w.flow_id = webhook_signatures.flow_id
                           AND w.company_id = webhook_signatures.company_id));
GRANT SELECT ON flow_webhooks TO floq_webhook_lookup;
GRANT INSERT ON webhook_signatures TO floq_webhook_lookup;

-- Session lookup (anonymous cookie check; logout and company switch by id):
-- the one session, and its user's memberships.
-- A session may only be revoked or moved (the columns granted), never given
-- another user. One moved to a company its user does not belong to is dead:
-- the lookup joins the membership and finds none.
CREATE POLICY session_lookup ON sessions TO floq_session_lookup
    USING (token_hash = floq_lookup_hash() OR id = floq_lookup_id())
    WITH CHECK (token_hash = floq_lookup_hash() OR id = floq_lookup_id());
CREATE POLICY session_lookup ON memberships FOR SELECT TO floq_session_lookup
    USING (user_id IN (SELECT user_id FROM sessions));
GRANT SELECT ON sessions TO floq_session_lookup;
GRANT UPDATE (revoked_at, company_id) ON sessions TO floq_session_lookup;
GRANT SELECT ON memberships TO floq_session_lookup;

-- Sign-in (anonymous) and enrolment, read only: the identity with the e-mail
-- address (or id) looked up, its memberships and companies; and the sign-in
-- failure counters, whose keys are hashes (api/src/throttle.rs).
CREATE POLICY signin_lookup ON users FOR SELECT TO floq_signin
    USING (lower(email) = lower(floq_lookup()) OR id = floq_lookup_id());
CREATE POLICY signin_lookup ON memberships FOR SELECT TO floq_signin USING (user_id IN (SELECT id FROM users));
CREATE POLICY signin_lookup ON companies FOR SELECT TO floq_signin USING (id IN (SELECT company_id FROM memberships));
CREATE POLICY throttle ON login_attempts TO floq_signin USING (true) WITH CHECK (true);
GRANT SELECT ON users, memberships, companies TO floq_signin;
GRANT SELECT, INSERT, UPDATE, DELETE ON login_attempts TO floq_signin;

-- Issuing a session, only after the password was checked: for the identity
-- looked up by id, in a company it belongs to.
CREATE POLICY session_issue ON memberships FOR SELECT TO floq_session_issue USING (user_id = floq_lookup_id());
CREATE POLICY session_issue ON sessions FOR INSERT TO floq_session_issue
    WITH CHECK (user_id = floq_lookup_id()
                AND company_id IN (SELECT m.company_id FROM memberships m WHERE m.user_id = sessions.user_id));
GRANT SELECT ON memberships TO floq_session_issue;
GRANT INSERT ON sessions TO floq_session_issue;

-- Issuing a password-reset link for the identity looked up by id.
CREATE POLICY reset_issue ON account_tokens FOR SELECT TO floq_reset_issue
    USING (purpose = 'password_reset' AND user_id = floq_lookup_id());
CREATE POLICY reset_issue_insert ON account_tokens FOR INSERT TO floq_reset_issue
    WITH CHECK (purpose = 'password_reset' AND company_id IS NULL AND user_id = floq_lookup_id());
GRANT SELECT, INSERT ON account_tokens TO floq_reset_issue;

-- Accepting a mailed link (anonymous): the token it holds, then the identity
-- that token names (by e-mail to find or create it, then by id): its
-- password, its sessions, its other reset links, its memberships. Tenant rows
-- (API keys, the new membership) are written as floq_app.
CREATE POLICY accept ON account_tokens TO floq_accounts
    USING (token_hash = floq_lookup_hash() OR user_id = floq_lookup_id())
    WITH CHECK (token_hash = floq_lookup_hash() OR user_id = floq_lookup_id());
CREATE POLICY accept ON users FOR SELECT TO floq_accounts
    USING (id = floq_lookup_id() OR lower(email) = lower(floq_lookup()));
CREATE POLICY accept_create ON users FOR INSERT TO floq_accounts WITH CHECK (lower(email) = lower(floq_lookup()));
CREATE POLICY accept_update ON users FOR UPDATE TO floq_accounts
    USING (id = floq_lookup_id()) WITH CHECK (id = floq_lookup_id());
CREATE POLICY accept ON sessions TO floq_accounts
    USING (user_id = floq_lookup_id()) WITH CHECK (user_id = floq_lookup_id());
CREATE POLICY accept ON memberships FOR SELECT TO floq_accounts USING (user_id = floq_lookup_id());
GRANT SELECT ON account_tokens TO floq_accounts;
GRANT UPDATE (used_at) ON account_tokens TO floq_accounts;
GRANT SELECT, INSERT ON users TO floq_accounts;
GRANT UPDATE (password_hash, email_verified_at) ON users TO floq_accounts;
GRANT SELECT ON sessions TO floq_accounts;
GRANT UPDATE (revoked_at) ON sessions TO floq_accounts;
GRANT SELECT ON memberships TO floq_accounts;

-- Key rotation (operator CLI): re-encrypts every company's secrets and audits each.
CREATE POLICY rotate ON credentials TO floq_key_rotation USING (true) WITH CHECK (true);
CREATE POLICY rotate ON kv TO floq_key_rotation USING (true) WITH CHECK (true);
CREATE POLICY rotate_find ON flow_webhooks FOR SELECT TO floq_key_rotation USING (true);
CREATE POLICY rotate_audit ON audit_log FOR INSERT TO floq_key_rotation WITH CHECK (true);
GRANT SELECT, UPDATE ON credentials, kv TO floq_key_rotation;
GRANT SELECT (company_id, flow_id, signing_key_id, signing_secret) ON flow_webhooks TO floq_key_rotation;
GRANT INSERT ON audit_log TO floq_key_rotation;
GRANT USAGE ON SEQUENCE audit_log_id_seq TO floq_key_rotation;

-- Operator CLI: finds an identity across companies, sets its password, ends its sessions.
CREATE POLICY operator ON users TO floq_operator USING (true) WITH CHECK (true);
CREATE POLICY operator ON sessions TO floq_operator USING (true) WITH CHECK (true);
CREATE POLICY operator ON memberships FOR SELECT TO floq_operator USING (true);
CREATE POLICY operator ON companies FOR SELECT TO floq_operator USING (true);
CREATE POLICY operator_audit ON audit_log FOR INSERT TO floq_operator WITH CHECK (true);
GRANT SELECT ON users, sessions TO floq_operator;
GRANT UPDATE (password_hash) ON users TO floq_operator;
GRANT UPDATE (revoked_at) ON sessions TO floq_operator;
GRANT SELECT ON memberships, companies TO floq_operator;
GRANT INSERT ON audit_log TO floq_operator;
GRANT USAGE ON SEQUENCE audit_log_id_seq TO floq_operator;
