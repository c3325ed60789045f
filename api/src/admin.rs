//! Administrative commands run from the CLI (`floq-api admin …`).

use chrono::Utc;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{Keys, issue_key};
use floq_shared::{Config, db};

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
            let id = Uuid::now_v7();
            sqlx::query("INSERT INTO users (id, email, created_by_company) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(email)
                .bind(company_id)
                .execute(&mut *tx)
                .await?;
            id
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
    let (key_id, api_key) = issue_key(&mut tx, &keys, company_id, user_id, "bootstrap", &scopes, expires_at).await?;
    tx.commit().await?;
    Ok(Bootstrapped {
        company_id,
        user_id,
        key_id,
        api_key,
    })
}

/// Looks a user up by e-mail across companies, as `floq_system` (whose policy
/// allows exactly this read).
async fn existing_user_id(pool: &PgPool, email: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = db::system_tx(pool).await?;
    let id = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
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
    let (key_id, api_key) = issue_key(
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
