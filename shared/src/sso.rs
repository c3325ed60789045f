//! Single sign-on in storage: the one home of the statements on
//! `sso_connections`, `sso_domains`, `sso_settings` (a company's, under the
//! tenant policies), `sso_states` and `sso_identities` (the platform's,
//! reached by the keyed `floq_sso` duty). The API seals a connection's
//! client secret before it gets here and speaks OpenID Connect; this module
//! never encrypts, never decrypts and never calls out.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::access::Role;
use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, UserId};
use crate::run::text_enum;

text_enum! {
    /// How a connection finds its provider's endpoints.
    Preset {
        /// OpenID Connect discovery of the issuer.
        Generic => "generic",
        /// Microsoft Entra ID: issuer and endpoints derived from a tenant.
        Entra => "entra",
    }
}

text_enum! {
    /// Who verified a domain.
    VerifiedBy {
        Dns => "dns",
        Operator => "operator",
    }
}

text_enum! {
    /// How a session was opened (`sessions.method`).
    Method {
        Password => "password",
        Sso => "sso",
    }
}

/// The DNS name a company publishes its verification record at.
pub fn txt_name(domain: &str) -> String {
    format!("_floq-verify.{domain}")
}

/// The TXT record's value for a domain's token.
pub fn txt_value(token: &str) -> String {
    format!("floq-verify={token}")
}

/// A claimed e-mail domain as admins see it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Domain {
    pub domain: String,
    pub verified: bool,
    pub verified_by: Option<VerifiedBy>,
    /// Publish a TXT record `txt_value` at `txt_name`, then ask to verify.
    pub txt_name: String,
    pub txt_value: String,
}

#[derive(sqlx::FromRow)]
struct DomainRow {
    connection_id: Uuid,
    domain: String,
    verify_token: String,
    verified_by: Option<VerifiedBy>,
}

impl From<DomainRow> for Domain {
    fn from(r: DomainRow) -> Self {
        Domain {
            txt_name: txt_name(&r.domain),
            txt_value: txt_value(&r.verify_token),
            verified: r.verified_by.is_some(),
            verified_by: r.verified_by,
            domain: r.domain,
        }
    }
}

/// All a read shows of a connection; never its client secret.
#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    pub id: Uuid,
    pub name: String,
    pub preset: Preset,
    pub issuer: String,
    pub tenant: Option<String>,
    pub allowed_tenants: Vec<String>,
    pub client_id: String,
    pub default_role: Role,
    pub email_domains: Vec<Domain>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ConnectionRow {
    id: Uuid,
    name: String,
    preset: Preset,
    issuer: String,
    tenant: Option<String>,
    allowed_tenants: Vec<String>,
    client_id: String,
    default_role: Role,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, name, preset, issuer, tenant, allowed_tenants, client_id, default_role, created_at, updated_at";

/// A connection's settings as the API resolved them (secret sealed by the caller).
pub struct Settings<'a> {
    pub name: &'a str,
    pub preset: Preset,
    pub issuer: &'a str,
    pub tenant: Option<&'a str>,
    pub allowed_tenants: &'a [String],
    pub client_id: &'a str,
    pub default_role: Role,
}

/// The sealed client secret and the key that sealed it.
pub struct SealedSecret {
    pub data: Vec<u8>,
    pub key_id: String,
}

async fn with_domains(
    tx: &mut Tx,
    company_id: CompanyId,
    rows: Vec<ConnectionRow>,
) -> Result<Vec<Connection>, StoreError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let domains: Vec<DomainRow> = sqlx::query_as(
        "SELECT connection_id, domain, verify_token, verified_by FROM sso_domains
          WHERE company_id = $1 AND connection_id = ANY($2) ORDER BY domain",
    )
    .bind(company_id)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut out: Vec<Connection> = rows
        .into_iter()
        .map(|r| Connection {
            id: r.id,
            name: r.name,
            preset: r.preset,
            issuer: r.issuer,
            tenant: r.tenant,
            allowed_tenants: r.allowed_tenants,
            client_id: r.client_id,
            default_role: r.default_role,
            email_domains: vec![],
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect();
    for d in domains {
        if let Some(c) = out.iter_mut().find(|c| c.id == d.connection_id) {
            c.email_domains.push(d.into());
        }
    }
    Ok(out)
}

/// The company's connections, by name.
pub async fn list(tx: &mut Tx, company_id: CompanyId) -> Result<Vec<Connection>, StoreError> {
    let rows: Vec<ConnectionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sso_connections WHERE company_id = $1 ORDER BY name, id LIMIT 1000"
    )))
    .bind(company_id)
    .fetch_all(&mut **tx)
    .await?;
    with_domains(tx, company_id, rows).await
}

pub async fn find(tx: &mut Tx, company_id: CompanyId, id: Uuid) -> Result<Option<Connection>, StoreError> {
    let rows: Vec<ConnectionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sso_connections WHERE company_id = $1 AND id = $2"
    )))
    .bind(company_id)
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(with_domains(tx, company_id, rows).await?.pop())
}

/// Whether another connection of the company has this name.
pub async fn name_taken(
    tx: &mut Tx,
    company_id: CompanyId,
    name: &str,
    except: Option<Uuid>,
) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sso_connections WHERE company_id = $1 AND name = $2 AND id IS DISTINCT FROM $3)",
    )
    .bind(company_id)
    .bind(name)
    .bind(except)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn create(
    tx: &mut Tx,
    company_id: CompanyId,
    id: Uuid,
    s: Settings<'_>,
    secret: SealedSecret,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sso_connections (id, company_id, name, preset, issuer, tenant, allowed_tenants, client_id,
                                      client_secret, key_id, default_role)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(company_id)
    .bind(s.name)
    .bind(s.preset)
    .bind(s.issuer)
    .bind(s.tenant)
    .bind(s.allowed_tenants)
    .bind(s.client_id)
    .bind(secret.data)
    .bind(secret.key_id)
    .bind(s.default_role)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn update(
    tx: &mut Tx,
    company_id: CompanyId,
    id: Uuid,
    s: Settings<'_>,
    secret: Option<SealedSecret>,
) -> Result<(), StoreError> {
    let (data, key_id) = match secret {
        Some(s) => (Some(s.data), Some(s.key_id)),
        None => (None, None),
    };
    sqlx::query(
        "UPDATE sso_connections SET name = $3, preset = $4, issuer = $5, tenant = $6, allowed_tenants = $7,
                client_id = $8, default_role = $9, client_secret = coalesce($10, client_secret),
                key_id = coalesce($11, key_id), updated_at = now()
          WHERE company_id = $1 AND id = $2",
    )
    .bind(company_id)
    .bind(id)
    .bind(s.name)
    .bind(s.preset)
    .bind(s.issuer)
    .bind(s.tenant)
    .bind(s.allowed_tenants)
    .bind(s.client_id)
    .bind(s.default_role)
    .bind(data)
    .bind(key_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn delete(tx: &mut Tx, company_id: CompanyId, id: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sso_connections WHERE company_id = $1 AND id = $2")
        .bind(company_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes the connection claim exactly `domains` (lower case): domains it
/// keeps keep their token and verification, new ones get a fresh token.
pub async fn set_domains(tx: &mut Tx, company_id: CompanyId, id: Uuid, domains: &[String]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sso_domains WHERE company_id = $1 AND connection_id = $2 AND NOT (domain = ANY($3))")
        .bind(company_id)
        .bind(id)
        .bind(domains)
        .execute(&mut **tx)
        .await?;
    for domain in domains {
        sqlx::query(
            "INSERT INTO sso_domains (company_id, connection_id, domain, verify_token) VALUES ($1, $2, $3, $4)
             ON CONFLICT (connection_id, domain) DO NOTHING",
        )
        .bind(company_id)
        .bind(id)
        .bind(domain)
        .bind(crate::sessions::random_token())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Whether another company holds this domain verified.
pub async fn domain_taken(tx: &mut Tx, domain: &str) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT floq_sso_domain_taken($1)")
        .bind(domain)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// The company's claim on a domain: its connection and verification token.
pub async fn claim(
    tx: &mut Tx,
    company_id: CompanyId,
    domain: &str,
) -> Result<Option<(Uuid, String, bool)>, StoreError> {
    sqlx::query_as(
        "SELECT connection_id, verify_token, verified_at IS NOT NULL FROM sso_domains WHERE company_id = $1 AND domain = $2",
    )
    .bind(company_id)
    .bind(domain)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Marks the company's claim on `domain` verified. A conflict if another
/// company verified it first (the platform-wide unique index).
pub async fn mark_verified(
    tx: &mut Tx,
    company_id: CompanyId,
    domain: &str,
    by: VerifiedBy,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE sso_domains SET verified_at = now(), verified_by = $3
          WHERE company_id = $1 AND domain = $2 AND verified_at IS NULL",
    )
    .bind(company_id)
    .bind(domain)
    .bind(by)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the company requires SSO, and its break-glass member.
#[derive(Clone, Debug, Default, Serialize, sqlx::FromRow)]
pub struct Policy {
    pub require_sso: bool,
    pub break_glass_user_id: Option<UserId>,
}

pub async fn policy(tx: &mut Tx, company_id: CompanyId) -> Result<Policy, StoreError> {
    let found: Option<Policy> = sqlx::query_as(
        "SELECT require_sso, break_glass_user AS break_glass_user_id FROM sso_settings WHERE company_id = $1",
    )
    .bind(company_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(found.unwrap_or_default())
}

pub async fn save_policy(tx: &mut Tx, company_id: CompanyId, p: &Policy) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sso_settings (company_id, require_sso, break_glass_user) VALUES ($1, $2, $3)
         ON CONFLICT (company_id) DO UPDATE SET require_sso = $2, break_glass_user = $3, updated_at = now()",
    )
    .bind(company_id)
    .bind(p.require_sso)
    .bind(p.break_glass_user_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The companies of the identity looked up (sign-in duty) where a password
/// may not open a session: SSO is required and it is not the break-glass member.
pub async fn password_barred(tx: &mut Tx, user_id: UserId) -> Result<Vec<CompanyId>, StoreError> {
    sqlx::query_scalar(
        "SELECT m.company_id FROM memberships m JOIN sso_settings s ON s.company_id = m.company_id
          WHERE m.user_id = $1 AND s.require_sso AND s.break_glass_user IS DISTINCT FROM m.user_id",
    )
    .bind(user_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

// ---- The sign-in duty (floq_sso), keyed. ----

/// What signing in needs of a connection, its sealed secret included.
#[derive(Clone, sqlx::FromRow)]
pub struct SignInConnection {
    pub id: Uuid,
    pub company_id: CompanyId,
    pub preset: Preset,
    pub issuer: String,
    pub tenant: Option<String>,
    pub allowed_tenants: Vec<String>,
    pub client_id: String,
    pub client_secret: Vec<u8>,
    pub default_role: Role,
}

/// The connection looked up by id.
pub async fn connection(tx: &mut Tx, id: Uuid) -> Result<Option<SignInConnection>, StoreError> {
    sqlx::query_as(
        "SELECT id, company_id, preset, issuer, tenant, allowed_tenants, client_id, client_secret, default_role
           FROM sso_connections WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// The verified domains of the connection looked up by id.
pub async fn verified_domains(tx: &mut Tx, id: Uuid) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT domain FROM sso_domains WHERE connection_id = $1 AND verified_at IS NOT NULL")
        .bind(id)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// The connection that holds the domain looked up, verified.
pub async fn connection_for_domain(tx: &mut Tx, domain: &str) -> Result<Option<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT connection_id FROM sso_domains WHERE domain = lower($1) AND verified_at IS NOT NULL")
        .bind(domain)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// A sign-in in flight.
pub struct NewState<'a> {
    pub state_hash: &'a [u8],
    pub connection_id: Uuid,
    pub company_id: CompanyId,
    pub browser_hash: &'a [u8],
    pub nonce: &'a str,
    pub pkce_verifier: &'a str,
    pub return_to: &'a str,
    pub link_user: Option<UserId>,
    pub ttl: std::time::Duration,
}

pub async fn insert_state(tx: &mut Tx, s: NewState<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sso_states (state_hash, connection_id, company_id, browser_hash, nonce, pkce_verifier,
                                 return_to, link_user, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))",
    )
    .bind(s.state_hash)
    .bind(s.connection_id)
    .bind(s.company_id)
    .bind(s.browser_hash)
    .bind(s.nonce)
    .bind(s.pkce_verifier)
    .bind(s.return_to)
    .bind(s.link_user)
    .bind(s.ttl.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A state spent by the callback.
#[derive(sqlx::FromRow)]
pub struct State {
    pub connection_id: Uuid,
    pub company_id: CompanyId,
    pub browser_hash: Vec<u8>,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    pub link_user: Option<UserId>,
    pub expired: bool,
    /// Spent before: this is a replay (its company is told).
    pub replayed: bool,
}

/// Spends the state looked up: only the first caller gets it unspent.
pub async fn take_state(tx: &mut Tx, state_hash: &[u8]) -> Result<Option<State>, StoreError> {
    sqlx::query_as(
        "WITH old AS (SELECT state_hash, used_at IS NOT NULL AS replayed FROM sso_states
                       WHERE state_hash = $1 FOR UPDATE)
         UPDATE sso_states s SET used_at = coalesce(s.used_at, now()) FROM old
          WHERE s.state_hash = old.state_hash
         RETURNING s.connection_id, s.company_id, s.browser_hash, s.nonce, s.pkce_verifier, s.return_to,
                   s.link_user, s.expires_at < now() AS expired, old.replayed",
    )
    .bind(state_hash)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// The key an identity is looked up by.
pub fn subject_hash(issuer: &str, subject: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(issuer.as_bytes());
    h.update(b"\n");
    h.update(subject.as_bytes());
    h.finalize().to_vec()
}

/// The identity looked up: its user and the address the provider last named.
pub async fn identity(tx: &mut Tx, subject_hash: &[u8]) -> Result<Option<(UserId, String)>, StoreError> {
    sqlx::query_as("SELECT user_id, email FROM sso_identities WHERE subject_hash = $1")
        .bind(subject_hash)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

pub struct NewIdentity<'a> {
    pub subject_hash: &'a [u8],
    pub issuer: &'a str,
    pub subject: &'a str,
    pub user_id: UserId,
    pub connection_id: Uuid,
    pub email: &'a str,
}

/// Binds the provider's subject to a user; false if another bound it first.
pub async fn insert_identity(tx: &mut Tx, n: NewIdentity<'_>) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO sso_identities (subject_hash, issuer, subject, user_id, connection_id, email)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(n.subject_hash)
    .bind(n.issuer)
    .bind(n.subject)
    .bind(n.user_id)
    .bind(n.connection_id)
    .bind(n.email)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn touch_identity(
    tx: &mut Tx,
    subject_hash: &[u8],
    email: &str,
    connection_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sso_identities SET email = $2, connection_id = $3, last_login_at = now() WHERE subject_hash = $1",
    )
    .bind(subject_hash)
    .bind(email)
    .bind(connection_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends the password sessions of the identity looked up by id; how many ended.
pub async fn end_password_sessions(tx: &mut Tx, user_id: UserId) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND method = 'password' AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// A connection whose client secret an older key sealed (key rotation's duty).
#[derive(sqlx::FromRow)]
pub struct StaleSecret {
    pub id: Uuid,
    pub company_id: CompanyId,
    pub client_secret: Vec<u8>,
}

/// Up to `limit` connections not sealed by `primary_key_id`, locked, skipping `skipped`.
pub async fn stale_secrets(
    tx: &mut Tx,
    primary_key_id: &str,
    skipped: &[Uuid],
    limit: i64,
) -> Result<Vec<StaleSecret>, StoreError> {
    sqlx::query_as(
        "SELECT id, company_id, client_secret FROM sso_connections
          WHERE key_id <> $1 AND NOT (id = ANY($2)) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(primary_key_id)
    .bind(skipped)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Key rotation: stores a connection's client secret sealed anew by `key_id`.
pub async fn reseal_secret(tx: &mut Tx, id: Uuid, sealed: &[u8], key_id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE sso_connections SET client_secret = $2, key_id = $3 WHERE id = $1")
        .bind(id)
        .bind(sealed)
        .bind(key_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes up to `limit` states past their expiry (the retention duty).
pub async fn delete_expired_states(tx: &mut Tx, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM sso_states WHERE state_hash = ANY(ARRAY(
            SELECT state_hash FROM sso_states WHERE expires_at < now() ORDER BY expires_at LIMIT $1))",
    )
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
