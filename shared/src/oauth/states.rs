//! The `oauth_states` table's statements: authorization requests between
//! `authorize` and the callback, by the SHA-256 of their `state`
//! (migration 0029). Single use: [`take`] deletes the row it answers.

use std::time::Duration;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, CredentialId, UserId};

pub struct NewState<'a> {
    pub hash: &'a [u8],
    pub credential_id: CredentialId,
    pub user_id: UserId,
    /// The SHA-256 of the asking browser's binding cookie.
    pub browser_hash: &'a [u8],
    /// The PKCE verifier, sealed by the caller.
    pub code_verifier: Option<Vec<u8>>,
    pub return_to: Option<&'a str>,
    pub ttl: Duration,
}

/// Stores a request (and forgets the company's expired ones).
pub async fn create(tx: &mut Tx, company_id: CompanyId, new: NewState<'_>) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM oauth_states WHERE company_id = $1 AND expires_at < now()")
        .bind(company_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO oauth_states (state_hash, company_id, credential_id, user_id, code_verifier, return_to, expires_at,
                                   browser_hash)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8)",
    )
    .bind(new.hash)
    .bind(company_id)
    .bind(new.credential_id)
    .bind(new.user_id)
    .bind(new.code_verifier)
    .bind(new.return_to)
    .bind(new.ttl.as_secs_f64())
    .bind(new.browser_hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct State {
    pub credential_id: CredentialId,
    pub user_id: UserId,
    pub browser_hash: Vec<u8>,
    pub code_verifier: Option<Vec<u8>>,
    pub return_to: Option<String>,
    /// Whether it was spent before its expiry.
    pub live: bool,
}

/// Spends a request: deletes it and answers it, live or expired; `None` if
/// the company has no such request (never made, or spent already).
pub async fn take(tx: &mut Tx, company_id: CompanyId, hash: &[u8]) -> Result<Option<State>, StoreError> {
    sqlx::query_as(
        "DELETE FROM oauth_states WHERE company_id = $1 AND state_hash = $2
         RETURNING credential_id, user_id, browser_hash, code_verifier, return_to, expires_at > now() AS live",
    )
    .bind(company_id)
    .bind(hash)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}
