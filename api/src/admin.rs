//! Administrative commands run from the CLI (`floq-api admin …`).

use chrono::{DateTime, Utc};
use floq_shared::db::StoreError;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

use crate::auth::{self, Keys, MAX_KEY_TTL_SECS, MIN_KEY_TTL_SECS, SCOPES};
use crate::{accounts, audit, password};
use floq_shared::audit::{Actor, Entry, PLATFORM};
use floq_shared::{Config, db};

/// The actor of every entry an operator command writes.
pub const OPERATOR: &str = "admin-cli";

#[derive(Debug, Serialize)]
pub struct Bootstrapped {
    pub company_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub api_key: String,
}

/// Creates a company, makes `email` its admin (creating the user if new) and
/// issues an API key for them.
pub async fn bootstrap(pool: &PgPool, config: &Config, company: &str, email: &str) -> anyhow::Result<Bootstrapped> {
    let company = company.trim();
    anyhow::ensure!(
        (1..=200).contains(&company.chars().count()),
        "--company must be 1 to 200 characters"
    );
    let email = email.trim();
    anyhow::ensure!(
        email.len() <= 254
            && email
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.')),
        "--email must be an e-mail address"
    );
    let company_id = Uuid::now_v7();
    // Users are global; an existing one simply joins the new company (the
    // operator running this command vouches for it, unlike a company admin).
    let existing = existing_user_id(pool, email).await?;
    let mut tx = db::tenant_tx(pool, company_id).await?;
    sqlx::query("INSERT INTO companies (id, name) VALUES ($1, $2)")
        .bind(company_id)
        .bind(company)
        .execute(&mut *tx)
        .await?;
    let user_id = match existing {
        Some(id) => id,
        None => {
            let new = accounts::NewIdentity {
                email,
                name: "",
                password_hash: None,
                owner: Some(company_id),
            };
            accounts::create_identity(&mut tx, new).await?
        }
    };
    sqlx::query("INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2, ARRAY['admin'])")
        .bind(company_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let keys = Keys::new(config.jwt_secret.expose());
    let expires_at = Utc::now() + config.api_key_ttl;
    let scopes = vec!["api".to_string()];
    let (key_id, api_key) =
        auth::issue_key(&mut tx, &keys, company_id, user_id, "bootstrap", &scopes, expires_at).await?;
    tx.commit().await?;
    Ok(Bootstrapped {
        company_id,
        user_id,
        key_id,
        api_key,
    })
}

/// Looks a user up by e-mail across companies, as the operator duty.
async fn existing_user_id(pool: &PgPool, email: &str) -> Result<Option<Uuid>, StoreError> {
    let mut tx = db::duty_tx(pool, db::Duty::Operator).await?;
    let id = crate::accounts::find_by_email(&mut tx, email).await?;
    tx.commit().await?;
    Ok(id)
}

/// Adds a user with the given roles to a company and issues them a key
/// (used by tests and by operators before the user-management API exists).
pub async fn add_member(
    pool: &PgPool,
    config: &Config,
    company_id: Uuid,
    email: &str,
    roles: &[&str],
) -> anyhow::Result<Bootstrapped> {
    let user_id = Uuid::now_v7();
    let mut tx = db::tenant_tx(pool, company_id).await?;
    sqlx::query("INSERT INTO users (id, email, created_by_company) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(email)
        .bind(company_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2, $3)")
        .bind(company_id)
        .bind(user_id)
        .bind(roles)
        .execute(&mut *tx)
        .await?;
    let keys = Keys::new(config.jwt_secret.expose());
    let scopes = vec!["api".to_string()];
    let (key_id, api_key) = auth::issue_key(
        &mut tx,
        &keys,
        company_id,
        user_id,
        "member",
        &scopes,
        Utc::now() + config.api_key_ttl,
    )
    .await?;
    tx.commit().await?;
    Ok(Bootstrapped {
        company_id,
        user_id,
        key_id,
        api_key,
    })
}

#[derive(Debug, Serialize)]
pub struct IssuedKey {
    pub company_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub api_key: String,
    pub expires_at: DateTime<Utc>,
}

/// Issues a new key to an existing member (`floq-api admin issue-key`): the
/// way back in once the bootstrap key has expired. `company` may be left out
/// when the identity belongs to exactly one company. Audited as
/// `api_key.create` in the key's company and as `user.key_issued` in the
/// identity's other companies (without naming the company, which is not theirs
/// to know).
pub async fn issue_key(
    pool: &PgPool,
    config: &Config,
    email: &str,
    company: Option<Uuid>,
    ttl_seconds: Option<u64>,
    scope: &str,
) -> anyhow::Result<IssuedKey> {
    let scope = scope.trim();
    anyhow::ensure!(SCOPES.contains(&scope), "--scope must be one of: {}", SCOPES.join(", "));
    if let Some(ttl) = ttl_seconds {
        anyhow::ensure!(
            (MIN_KEY_TTL_SECS..=MAX_KEY_TTL_SECS).contains(&ttl),
            "--ttl must be {MIN_KEY_TTL_SECS} to {MAX_KEY_TTL_SECS} seconds"
        );
    }
    let email = email.trim();
    let user_id = existing_user_id(pool, email)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no identity has the e-mail address {email}"))?;
    let companies = companies_of(pool, user_id).await?;
    let company_id = match (company, companies.as_slice()) {
        (Some(id), _) if companies.iter().any(|(c, _)| *c == id) => id,
        (Some(id), _) => anyhow::bail!("{email} is not a member of company {id}"),
        (None, []) => anyhow::bail!("{email} is not a member of any company"),
        (None, [(id, _)]) => *id,
        (None, many) => anyhow::bail!(
            "{email} belongs to {} companies; choose one with --company: {}",
            many.len(),
            many.iter()
                .map(|(id, name)| format!("{id} ({name})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let ttl = ttl_seconds.map(Duration::from_secs).unwrap_or(config.api_key_ttl);
    let expires_at = Utc::now() + ttl;
    let scopes = vec![scope.to_string()];
    let keys = Keys::new(config.jwt_secret.expose());
    let name = OPERATOR;
    let mut tx = db::tenant_tx(pool, company_id).await?;
    let (key_id, api_key) = auth::issue_key(&mut tx, &keys, company_id, user_id, name, &scopes, expires_at).await?;
    let actor = Actor::system(OPERATOR);
    let key = json!({"id": key_id, "user_id": user_id, "name": name, "scopes": scopes, "expires_at": expires_at});
    audit::record(
        &mut tx,
        &[Entry::new(company_id, actor.clone(), "api_key.create")
            .resource("api_key", key_id)
            .change(None::<&serde_json::Value>, Some(&key))],
    )
    .await?;
    // One transaction for every company's entry, switching the tenant as
    // `accounts::accept` does: the key and its record commit together.
    for (other, _) in companies.iter().filter(|(c, _)| *c != company_id) {
        db::set_tenant(&mut tx, *other).await?;
        let entry = Entry::new(*other, actor.clone(), "user.key_issued")
            .resource("user", user_id)
            .details(json!({"scopes": scopes, "expires_at": expires_at}));
        audit::record(&mut tx, &[entry]).await?;
    }
    tx.commit().await?;
    Ok(IssuedKey {
        company_id,
        user_id,
        key_id,
        api_key,
        expires_at,
    })
}

/// The outcome of `floq-api admin set-password`.
#[derive(Debug, Serialize)]
pub struct PasswordSet {
    pub user_id: Uuid,
    pub companies: Vec<Uuid>,
    pub sessions_revoked: u64,
}

/// Sets an identity's password (`floq-api admin set-password`) by the rule and
/// hash the API uses, and ends its sessions so a browser signed in with the
/// old password is out. API keys stay: the operator may have just issued one.
/// Audited as `auth.password_set` in every company of the identity (the
/// platform's log when it belongs to none).
pub async fn set_password(pool: &PgPool, email: &str, new_password: String) -> anyhow::Result<PasswordSet> {
    let length = new_password.chars().count();
    anyhow::ensure!(
        (password::MIN_LENGTH..=password::MAX_LENGTH).contains(&length),
        "passwords are {} to {} characters",
        password::MIN_LENGTH,
        password::MAX_LENGTH
    );
    let email = email.trim();
    let user_id = existing_user_id(pool, email)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no identity has the e-mail address {email}"))?;
    let hash = password::hash(new_password).await?;
    let mut tx = db::duty_tx(pool, db::Duty::Operator).await?;
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(user_id)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    let sessions_revoked =
        sqlx::query("UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let companies: Vec<Uuid> =
        sqlx::query_scalar("SELECT company_id FROM memberships WHERE user_id = $1 ORDER BY company_id")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
    let owners = if companies.is_empty() {
        vec![PLATFORM]
    } else {
        companies.clone()
    };
    let actor = Actor::system(OPERATOR);
    let entries: Vec<Entry> = owners
        .iter()
        .map(|c| {
            Entry::new(*c, actor.clone(), "auth.password_set")
                .resource("user", user_id)
                .details(json!({"sessions_revoked": sessions_revoked}))
        })
        .collect();
    audit::record(&mut tx, &entries).await?;
    tx.commit().await?;
    Ok(PasswordSet {
        user_id,
        companies,
        sessions_revoked,
    })
}

/// The companies an identity belongs to, with their names, as the operator duty.
async fn companies_of(pool: &PgPool, user_id: Uuid) -> Result<Vec<(Uuid, String)>, StoreError> {
    let mut tx = db::duty_tx(pool, db::Duty::Operator).await?;
    let rows = sqlx::query_as(
        "SELECT c.id, c.name FROM memberships m JOIN companies c ON c.id = m.company_id
          WHERE m.user_id = $1 ORDER BY c.id",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}
