//! API keys in storage, the one home of the `api_keys` table's statements: a
//! key's row (its id is the signed token's `kid`), the authority it carries
//! (its owner's current roles, never more), listing and revoking. Signing
//! the token is the API's (`api/src/auth.rs`); only the row lives here.
//!
//! Keys are tenant rows: every function runs in the caller's tenant
//! transaction and names the company explicitly beside row-level security.
//! This module never opens a transaction and never decides who may revoke
//! whose key: the caller says ([`Owner`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::Role;
use crate::db::{StoreError, Tx};
use crate::ids::{ApiKeyId, CompanyId, UserId};
use crate::users::parse_roles;

/// A key as its company sees it (never its token).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Key {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, user_id, name, scopes, created_at, expires_at, revoked_at";

pub struct NewKey<'a> {
    pub id: ApiKeyId,
    pub company_id: CompanyId,
    pub user_id: UserId,
    pub name: &'a str,
    pub scopes: &'a [String],
    pub expires_at: DateTime<Utc>,
}

pub async fn insert(tx: &mut Tx, key: NewKey<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, company_id, user_id, name, scopes, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key.id)
    .bind(key.company_id)
    .bind(key.user_id)
    .bind(key.name)
    .bind(key.scopes)
    .bind(key.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The roles a presented key acts with: None unless the key exists, is live,
/// belongs to `user_id`, and its owner is still a member of the company.
pub async fn authority(
    tx: &mut Tx,
    company_id: CompanyId,
    key_id: ApiKeyId,
    user_id: UserId,
) -> Result<Option<Vec<Role>>, StoreError> {
    let roles: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT m.roles FROM api_keys k
           JOIN memberships m ON m.company_id = k.company_id AND m.user_id = k.user_id
          WHERE k.company_id = $1 AND k.id = $2 AND k.user_id = $3
            AND k.revoked_at IS NULL AND k.expires_at > now()",
    )
    .bind(company_id)
    .bind(key_id)
    .bind(user_id)
    .fetch_optional(&mut **tx)
    .await?;
    roles.map(parse_roles).transpose()
}

/// Whose keys a caller reaches: every key of the company (an admin), or only its own.
#[derive(Clone, Copy, Debug)]
pub enum Owner {
    Anyone,
    Only(UserId),
}

/// Newest first by (v7) id, below `before`: one range of `api_keys (company_id,
/// id)`, or of `api_keys (company_id, user_id, id)` for one owner's keys.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    owner: Owner,
    before: ApiKeyId,
    limit: i64,
) -> Result<Vec<Key>, StoreError> {
    let sql = match owner {
        Owner::Anyone => {
            format!("SELECT {COLUMNS} FROM api_keys WHERE company_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3")
        }
        Owner::Only(_) => format!(
            "SELECT {COLUMNS} FROM api_keys WHERE company_id = $1 AND id < $2 AND user_id = $4
              ORDER BY id DESC LIMIT $3"
        ),
    };
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(company_id)
        .bind(before)
        .bind(limit);
    match owner {
        Owner::Anyone => query,
        Owner::Only(user_id) => query.bind(user_id),
    }
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Revokes a live key `owner` reaches; None if there is none.
pub async fn revoke(
    tx: &mut Tx,
    company_id: CompanyId,
    key_id: ApiKeyId,
    owner: Owner,
) -> Result<Option<Key>, StoreError> {
    let only = match owner {
        Owner::Anyone => None,
        Owner::Only(user_id) => Some(user_id),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoked_at = now()
          WHERE company_id = $1 AND id = $2 AND revoked_at IS NULL AND ($3::uuid IS NULL OR user_id = $3)
         RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(key_id)
    .bind(only)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Revokes every live key of one identity in the company; returns how many.
pub async fn revoke_all_of(tx: &mut Tx, company_id: CompanyId, user_id: UserId) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE company_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(company_id)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// What PostgreSQL announces on every update or delete of `api_keys` or
/// `memberships` (migration 0003), so caches of a key's authority can drop it.
const CHANGED: &str = "floq_auth_changed";

/// A connection listening for changes to keys and memberships.
pub struct Changes(sqlx::postgres::PgListener);

impl Changes {
    pub async fn listen(pool: &crate::db::Pool) -> Result<Self, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        // A lost connection must surface: notifications sent meanwhile are gone.
        listener.eager_reconnect(false);
        listener.listen(CHANGED).await?;
        Ok(Self(listener))
    }

    /// Waits for the next change; an error once the connection is lost.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        match self.0.try_recv().await? {
            Some(_) => Ok(()),
            None => Err(StoreError::closed()),
        }
    }
}
