-- Identities are platform-wide; only the mailbox owner controls one.
--
-- A company may create a brand-new identity (with a password it chose); that
-- identity is the company's alone until someone proves the mailbox, after
-- which no company owns it. Existing identities join another company only by
-- an invitation mailed to them and accepted; the same mailed, single-use link
-- resets a password.

ALTER TABLE users
    ADD COLUMN created_by_company uuid REFERENCES companies (id) ON DELETE SET NULL,
    ADD COLUMN email_verified_at timestamptz;

-- Backfill: an identity with exactly one membership was made for that
-- company; one with several (or none) belongs to no company.
UPDATE users u SET created_by_company = m.company_id
  FROM (SELECT user_id, min(company_id::text)::uuid AS company_id
          FROM memberships GROUP BY user_id HAVING count(*) = 1) m
 WHERE m.user_id = u.id;

-- A company may change only an identity it owns; before, any company the
-- user belonged to could rewrite their name or password hash.
DROP POLICY member_update ON users;
CREATE POLICY owner_update ON users FOR UPDATE TO floq_app
    USING (created_by_company = floq_current_company() AND email_verified_at IS NULL)
    WITH CHECK (created_by_company = floq_current_company() AND email_verified_at IS NULL);

-- Accepting a link happens before any company is known: floq_system sets the
-- owner's password and creates the identity an invitation named.
CREATE POLICY system_account ON users FOR UPDATE TO floq_system USING (true) WITH CHECK (true);
CREATE POLICY system_create ON users FOR INSERT TO floq_system WITH CHECK (true);
GRANT INSERT, UPDATE ON users TO floq_system;

-- Mailed links: invitations (company, roles) and password resets. Only a
-- SHA-256 of the token is kept; a token is single-use (used_at) and expires.
CREATE TABLE account_tokens (
    id          uuid PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    purpose     text NOT NULL CHECK (purpose IN ('invitation', 'password_reset')),
    email       text NOT NULL,
    -- NULL for an invitation to an address no identity has yet.
    user_id     uuid REFERENCES users (id) ON DELETE CASCADE,
    company_id  uuid REFERENCES companies (id) ON DELETE CASCADE,
    roles       text[],
    invited_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    CHECK ((purpose = 'invitation') = (company_id IS NOT NULL AND roles IS NOT NULL))
);
CREATE INDEX account_tokens_company_idx ON account_tokens (company_id) WHERE company_id IS NOT NULL;
CREATE INDEX account_tokens_email_idx ON account_tokens (lower(email));
ALTER TABLE account_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE account_tokens FORCE ROW LEVEL SECURITY;
-- A company sees and creates its own invitations; resets have no company and
-- are reached only as floq_system (by token hash).
CREATE POLICY tenant ON account_tokens TO floq_app
    USING (company_id = floq_current_company()) WITH CHECK (company_id = floq_current_company());
CREATE POLICY system_tokens ON account_tokens TO floq_system USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON account_tokens TO floq_app, floq_system;

-- Sign-in throttling: buckets per account-and-client (`pair:`) and per client
-- (`ip:`); the count decays with time, so it is fractional. Old keys
-- (`email:`) are gone with the scheme that made them.
DELETE FROM login_attempts;
ALTER TABLE login_attempts ALTER COLUMN failures TYPE double precision;
