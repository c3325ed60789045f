//! The `oauth_links` table's statements: a connected credential's sealed
//! tokens, its expiry and scopes, and the refresh lease (migration 0029).
//! Every statement runs in the caller's tenant transaction and names the
//! company. It never encrypts or decrypts.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, CredentialId};

/// What a read of an `oauth2` credential shows of its link; never a token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct Status {
    pub connected: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub needs_reconnect: bool,
}

/// The links of `ids` that exist, by credential.
pub async fn statuses(
    tx: &mut Tx,
    company_id: CompanyId,
    ids: &[CredentialId],
) -> Result<HashMap<CredentialId, Status>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        credential_id: CredentialId,
        expires_at: Option<DateTime<Utc>>,
        scopes: Vec<String>,
        needs_reconnect: bool,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT credential_id, expires_at, scopes, needs_reconnect FROM oauth_links
          WHERE company_id = $1 AND credential_id = ANY($2)",
    )
    .bind(company_id)
    .bind(ids.iter().map(|i| i.as_uuid()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let status = Status {
                connected: true,
                expires_at: r.expires_at,
                scopes: r.scopes,
                needs_reconnect: r.needs_reconnect,
            };
            (r.credential_id, status)
        })
        .collect())
}

/// Sealed tokens to store.
pub struct SealedTokens {
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub key_id: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
}

/// Stores what a completed connect received, replacing any earlier link
/// (and its lease: a refresh in flight will find a new generation).
pub async fn connect(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    provider: &str,
    tokens: SealedTokens,
) -> Result<Status, StoreError> {
    sqlx::query_as(
        "INSERT INTO oauth_links (credential_id, company_id, provider, access_token, refresh_token, key_id,
                                  expires_at, scopes)
         VALUES ($2, $1, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (credential_id) DO UPDATE SET
             provider = EXCLUDED.provider, access_token = EXCLUDED.access_token,
             refresh_token = EXCLUDED.refresh_token, key_id = EXCLUDED.key_id,
             expires_at = EXCLUDED.expires_at, scopes = EXCLUDED.scopes, needs_reconnect = false,
             generation = oauth_links.generation + 1, refresh_holder = NULL, refresh_until = NULL,
             connected_at = now(), refreshed_at = NULL
         RETURNING true AS connected, expires_at, scopes, needs_reconnect",
    )
    .bind(company_id)
    .bind(id)
    .bind(provider)
    .bind(tokens.access_token)
    .bind(tokens.refresh_token)
    .bind(tokens.key_id)
    .bind(tokens.expires_at)
    .bind(tokens.scopes)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A link as the worker reads it before using or refreshing it.
#[derive(Debug, sqlx::FromRow)]
pub struct Link {
    pub provider: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub needs_reconnect: bool,
    pub generation: i64,
    /// Whether another refresh holds a live lease.
    pub leased: bool,
    /// The database's clock, which every expiry and lease is measured by.
    pub now: DateTime<Utc>,
}

pub async fn find(tx: &mut Tx, company_id: CompanyId, id: CredentialId) -> Result<Option<Link>, StoreError> {
    sqlx::query_as(
        "SELECT provider, access_token, refresh_token, expires_at, needs_reconnect, generation,
                COALESCE(refresh_until > now(), false) AS leased, now() AS now
           FROM oauth_links WHERE company_id = $1 AND credential_id = $2",
    )
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Takes the refresh lease for `holder` if the link is still at
/// `generation` and no live lease is held; whether it was taken.
pub async fn take_lease(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    holder: Uuid,
    generation: i64,
    lease: Duration,
) -> Result<bool, StoreError> {
    let taken = sqlx::query(
        "UPDATE oauth_links SET refresh_holder = $3, refresh_until = now() + make_interval(secs => $5)
          WHERE company_id = $1 AND credential_id = $2 AND generation = $4 AND NOT needs_reconnect
            AND (refresh_until IS NULL OR refresh_until <= now())",
    )
    .bind(company_id)
    .bind(id)
    .bind(holder)
    .bind(generation)
    .bind(lease.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Stores a refresh's result in one statement (access token, rotated
/// refresh token, expiry, next generation) and releases the lease; only if
/// `holder` still holds it at `generation`. `false`: a stale writer, nothing changed.
pub async fn store_refreshed(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    holder: Uuid,
    generation: i64,
    tokens: SealedTokens,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE oauth_links SET access_token = $5, refresh_token = COALESCE($6, refresh_token), key_id = $7,
                expires_at = $8, scopes = CASE WHEN cardinality($9::text[]) = 0 THEN scopes ELSE $9 END,
                generation = generation + 1, refresh_holder = NULL, refresh_until = NULL, refreshed_at = now()
          WHERE company_id = $1 AND credential_id = $2 AND refresh_holder = $3 AND generation = $4
         RETURNING generation",
    )
    .bind(company_id)
    .bind(id)
    .bind(holder)
    .bind(generation)
    .bind(tokens.access_token)
    .bind(tokens.refresh_token)
    .bind(tokens.key_id)
    .bind(tokens.expires_at)
    .bind(tokens.scopes)
    .fetch_optional(&mut **tx)
    .await?)
}

/// The provider refused the refresh token: the link needs a new connect.
/// Releases the lease; only if `holder` still holds it at `generation`.
pub async fn mark_needs_reconnect(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    holder: Uuid,
    generation: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE oauth_links SET needs_reconnect = true, generation = generation + 1,
                refresh_holder = NULL, refresh_until = NULL
          WHERE company_id = $1 AND credential_id = $2 AND refresh_holder = $3 AND generation = $4",
    )
    .bind(company_id)
    .bind(id)
    .bind(holder)
    .bind(generation)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up after a refresh that failed for a passing reason.
pub async fn release(tx: &mut Tx, company_id: CompanyId, id: CredentialId, holder: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE oauth_links SET refresh_holder = NULL, refresh_until = NULL
          WHERE company_id = $1 AND credential_id = $2 AND refresh_holder = $3",
    )
    .bind(company_id)
    .bind(id)
    .bind(holder)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A link whose tokens are still sealed by a key other than the primary one.
#[derive(Debug, sqlx::FromRow)]
pub struct Stale {
    pub credential_id: CredentialId,
    pub company_id: CompanyId,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
}

/// Key rotation: up to `limit` links of any company not sealed by
/// `primary_key_id` (leaving out `skipped`, which no key opens), locked for
/// resealing; rows another rotation (or a refresh storing its result) holds are passed over.
pub async fn stale(
    tx: &mut Tx,
    primary_key_id: &str,
    skipped: &[CredentialId],
    limit: i64,
) -> Result<Vec<Stale>, StoreError> {
    sqlx::query_as(
        "SELECT credential_id, company_id, access_token, refresh_token FROM oauth_links
          WHERE key_id <> $1 AND NOT (credential_id = ANY($2))
          ORDER BY credential_id LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(primary_key_id)
    .bind(skipped)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Key rotation: stores a link's tokens sealed anew by `key_id` (the same
/// tokens: the generation does not move, so a refresh in flight still stores its result).
pub async fn reseal(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    access_token: &[u8],
    refresh_token: Option<&[u8]>,
    key_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE oauth_links SET access_token = $3, refresh_token = $4, key_id = $5
          WHERE company_id = $1 AND credential_id = $2",
    )
    .bind(company_id)
    .bind(id)
    .bind(access_token)
    .bind(refresh_token)
    .bind(key_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
