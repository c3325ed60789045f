//! Browser sessions in storage, the one home of the `sessions` table: created
//! at sign-in, looked up by the cookie's token (PostgreSQL keeps only its
//! SHA-256, so any replica can serve it and a database leak yields no usable
//! session), revoked, moved between companies, and trimmed by the scheduler.
//! The cookie itself is the API's (`api/src/session.rs`).

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Role;
use crate::db::{self, StoreError};
use crate::ids::UserId;
use crate::users::parse_roles;

/// The SHA-256 kept of a session's (or a mailed link's) token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// How long a session row outlives its expiry: a cookie presented within
/// this still answers (and audits) `auth.session_expired` once instead of
/// an unknown session. Revoked sessions expire on schedule too, so this
/// bounds them as well.
pub const KEEP_AFTER_EXPIRY: Duration = Duration::days(1);

/// Deletes up to `limit` sessions past [`KEEP_AFTER_EXPIRY`], oldest first
/// (one range of `sessions_expiry_idx`); returns how many went. Runs as
/// the retention duty, in the caller's transaction.
pub async fn delete_expired(tx: &mut db::Tx, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM sessions WHERE id = ANY(ARRAY(
            SELECT id FROM sessions WHERE expires_at < now() - make_interval(secs => $1)
             ORDER BY expires_at LIMIT $2))",
    )
    .bind(KEEP_AFTER_EXPIRY.num_seconds() as f64)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// A live session with the caller's roles in its active company.
pub struct Live {
    pub id: Uuid,
    pub user_id: Uuid,
    pub company_id: Uuid,
    pub roles: Vec<Role>,
}

/// 32 random bytes as hex: a session's (or a sign-in state's) token.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Opens a session; `method` says how the identity proved itself (a linked
/// SSO sign-in ends the password sessions, and only those).
pub async fn create(
    pool: &PgPool,
    user_id: Uuid,
    company_id: Uuid,
    expires_at: DateTime<Utc>,
    method: crate::sso::Method,
) -> Result<(Uuid, String), StoreError> {
    let token = random_token();
    let id = Uuid::now_v7();
    // A duty of its own, which may only open a session for this identity in one of its companies.
    let mut tx = db::lookup_tx(pool, db::Duty::SessionIssue, db::Lookup::Id(user_id)).await?;
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, user_id, company_id, expires_at, method, sso_company_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(token_hash(&token))
    .bind(user_id)
    .bind(company_id)
    .bind(expires_at)
    .bind(method)
    // An SSO session starts in the company whose connection opened it.
    .bind((method == crate::sso::Method::Sso).then_some(company_id))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((id, token))
}

/// id, user, company, roles (none once the membership is gone), still live.
type SessionRow = (Uuid, Uuid, Uuid, Option<Vec<String>>, bool);

pub enum Lookup {
    Live(Live),
    /// Expired just now: reported once, then the session counts as revoked.
    Expired {
        id: Uuid,
        user_id: Uuid,
        company_id: Uuid,
    },
    Unknown,
}

/// The session behind a token, if it is live and its user still belongs to its company.
pub async fn lookup(pool: &PgPool, token: &str) -> Result<Lookup, StoreError> {
    let hash = token_hash(token);
    let mut tx = db::lookup_tx(pool, db::Duty::SessionLookup, db::Lookup::Hash(&hash)).await?;
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT s.id, s.user_id, s.company_id, m.roles, s.expires_at > now() FROM sessions s
           LEFT JOIN memberships m ON m.company_id = s.company_id AND m.user_id = s.user_id
          WHERE s.token_hash = $1 AND s.revoked_at IS NULL",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let found = match row {
        None => Lookup::Unknown,
        Some((id, user_id, company_id, Some(roles), true)) => Lookup::Live(Live {
            id,
            user_id,
            company_id,
            roles: parse_roles(roles)?,
        }),
        Some((_, _, _, None, true)) => Lookup::Unknown,
        Some((id, user_id, company_id, _, false)) => {
            // Retire it so concurrent requests with the same cookie report the expiry once.
            let first = sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if first {
                Lookup::Expired {
                    id,
                    user_id,
                    company_id,
                }
            } else {
                Lookup::Unknown
            }
        }
    };
    tx.commit().await?;
    Ok(found)
}

pub async fn revoke(pool: &PgPool, session_id: Uuid) -> Result<(), StoreError> {
    let mut tx = db::lookup_tx(pool, db::Duty::SessionLookup, db::Lookup::Id(session_id)).await?;
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1")
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.map_err(StoreError::from)
}

/// Ends every live session of an identity, in the caller's transaction (a
/// duty that may: accepting a link, the operator setting a password);
/// returns how many ended.
pub async fn revoke_all_of(tx: &mut db::Tx, user_id: UserId) -> Result<u64, StoreError> {
    let done = sqlx::query("UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

/// How a session was opened, and for an SSO session the company whose connection opened it.
pub async fn opened_by(
    pool: &PgPool,
    session_id: Uuid,
) -> Result<Option<(crate::sso::Method, Option<Uuid>)>, StoreError> {
    let mut tx = db::lookup_tx(pool, db::Duty::SessionLookup, db::Lookup::Id(session_id)).await?;
    let opened = sqlx::query_as("SELECT method, sso_company_id FROM sessions WHERE id = $1")
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(opened)
}

/// Moves a session to another company; false if the user is not a member there.
pub async fn switch_company(
    pool: &PgPool,
    session_id: Uuid,
    user_id: Uuid,
    company_id: Uuid,
) -> Result<bool, StoreError> {
    let mut tx = db::lookup_tx(pool, db::Duty::SessionLookup, db::Lookup::Id(session_id)).await?;
    let moved = sqlx::query(
        "UPDATE sessions SET company_id = $3
          WHERE id = $1 AND EXISTS (SELECT 1 FROM memberships WHERE user_id = $2 AND company_id = $3)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(company_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    tx.commit().await?;
    Ok(moved)
}
