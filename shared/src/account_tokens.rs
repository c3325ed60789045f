//! The mailed links that prove a mailbox, in storage: the one home of the
//! `account_tokens` table's statements. An invitation into a company, or a
//! password reset; only a SHA-256 of a token is kept, and a token is
//! single-use and expires.
//!
//! Every function runs in the caller's transaction as the path's role:
//! invitations are tenant rows (named by company beside row-level
//! security), issuing a reset is the reset duty keyed by the identity, and
//! spending a token is the accounts duty keyed by its hash. This module
//! never opens a transaction and never applies what a link does (the
//! password, the membership, the revocations): the API does, with the other
//! stores, in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;

use crate::access::Role;
use crate::db::{StoreError, Tx};
use crate::email::Email;
use crate::ids::{CompanyId, InvitationId, UserId};
use crate::run::text_enum;
use crate::sessions::token_hash;
use crate::users::{parse_roles, roles_text};

text_enum! {
    /// What a link does once accepted; the `purpose` column's vocabulary.
    Purpose {
        Invitation => "invitation",
        PasswordReset => "password_reset",
    }
}

/// A fresh token: what goes into the mail, and what the table keeps.
fn new_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

pub struct Invitation<'a> {
    pub company_id: CompanyId,
    pub email: &'a Email,
    /// None when no identity has this address yet: accepting creates it.
    pub user_id: Option<UserId>,
    pub roles: &'a [Role],
    pub invited_by: UserId,
    pub ttl: Duration,
}

/// Records an invitation in the caller's tenant transaction, replacing any
/// pending one of this company for the same address. Returns its id and the
/// token to mail.
pub async fn invite(tx: &mut Tx, inv: Invitation<'_>) -> Result<(InvitationId, String), StoreError> {
    sqlx::query(
        "DELETE FROM account_tokens
          WHERE company_id = $1 AND purpose = 'invitation' AND lower(email) = lower($2) AND used_at IS NULL",
    )
    .bind(inv.company_id)
    .bind(inv.email.as_str())
    .execute(&mut **tx)
    .await?;
    let (token, hash) = new_token();
    let id = InvitationId(uuid::Uuid::now_v7());
    sqlx::query(
        "INSERT INTO account_tokens (id, token_hash, purpose, email, user_id, company_id, roles, invited_by, expires_at)
         VALUES ($1, $2, 'invitation', $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
    )
    .bind(id)
    .bind(hash)
    .bind(inv.email.as_str())
    .bind(inv.user_id)
    .bind(inv.company_id)
    .bind(roles_text(inv.roles))
    .bind(inv.invited_by)
    .bind(inv.ttl.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok((id, token))
}

/// A password-reset token for an identity, sent to `email` (its address as
/// stored), unless one was issued in the last minute (so the endpoint cannot
/// be used to flood a mailbox). Returns the token to mail, if any. In the
/// reset duty's transaction keyed by `user_id`.
pub async fn request_reset(
    tx: &mut Tx,
    user_id: UserId,
    email: &str,
    ttl: Duration,
) -> Result<Option<String>, StoreError> {
    // Serialise concurrent requests for one identity (the duty may not lock its row).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    let recent: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM account_tokens WHERE user_id = $1 AND purpose = 'password_reset'
                          AND used_at IS NULL AND created_at > now() - interval '1 minute')",
    )
    .bind(user_id)
    .fetch_one(&mut **tx)
    .await?;
    if recent {
        return Ok(None);
    }
    let (token, hash) = new_token();
    sqlx::query(
        "INSERT INTO account_tokens (id, token_hash, purpose, email, user_id, expires_at)
         VALUES ($1, $2, 'password_reset', $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(hash)
    .bind(email)
    .bind(user_id)
    .bind(ttl.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(Some(token))
}

/// Whether the token with this hash is live (known, unused, unexpired).
pub async fn is_live(tx: &mut Tx, hash: &[u8]) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM account_tokens WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now())",
    )
    .bind(hash)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A token just spent, and what it was for.
#[derive(Debug)]
pub struct Spent {
    pub purpose: Purpose,
    /// The address the link was sent to.
    pub email: String,
    /// The identity it is bound to; None for an invitation of an address no identity had.
    pub user_id: Option<UserId>,
    /// An invitation's company.
    pub company_id: Option<CompanyId>,
    /// An invitation's roles (none for a reset).
    pub roles: Vec<Role>,
    pub invited_by: Option<UserId>,
}

type SpentRow = (
    String,
    String,
    Option<UserId>,
    Option<CompanyId>,
    Option<Vec<String>>,
    Option<UserId>,
);

/// Spends the token with this hash: None when it is unknown, used or expired
/// (one answer for all three). Marking it used first makes it single-use
/// even under concurrent accepts.
pub async fn spend(tx: &mut Tx, hash: &[u8]) -> Result<Option<Spent>, StoreError> {
    let row: Option<SpentRow> = sqlx::query_as(
        "UPDATE account_tokens SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
          RETURNING purpose, email, user_id, company_id, roles, invited_by",
    )
    .bind(hash)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((purpose, email, user_id, company_id, roles, invited_by)) = row else {
        return Ok(None);
    };
    // The CHECK constraint lists the purposes; a row outside it is a failed read, not a panic.
    let purpose = purpose
        .parse::<Purpose>()
        .map_err(|_| StoreError::corrupt(format!("unknown account token purpose `{purpose}`")))?;
    Ok(Some(Spent {
        purpose,
        email,
        user_id,
        company_id,
        roles: parse_roles(roles.unwrap_or_default())?,
        invited_by,
    }))
}

/// Spends every pending reset of the identity: one proof, one password.
pub async fn spend_resets(tx: &mut Tx, user_id: UserId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE account_tokens SET used_at = now()
          WHERE user_id = $1 AND purpose = 'password_reset' AND used_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A company's invitation not yet accepted.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    pub id: InvitationId,
    pub email: String,
    pub roles: Vec<Role>,
    pub invited_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: InvitationId,
    email: String,
    roles: Vec<String>,
    invited_by: Option<UserId>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl TryFrom<PendingRow> for Pending {
    type Error = StoreError;
    fn try_from(r: PendingRow) -> Result<Self, StoreError> {
        Ok(Pending {
            id: r.id,
            email: r.email,
            roles: parse_roles(r.roles)?,
            invited_by: r.invited_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
        })
    }
}

const PENDING_COLUMNS: &str = "id, email, roles, invited_by, created_at, expires_at";

/// Newest first by (v7) id, below `before`: one range of `account_tokens_invitation_idx`.
pub async fn pending(
    tx: &mut Tx,
    company_id: CompanyId,
    before: InvitationId,
    limit: i64,
) -> Result<Vec<Pending>, StoreError> {
    let rows: Vec<PendingRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PENDING_COLUMNS} FROM account_tokens
          WHERE company_id = $1 AND purpose = 'invitation' AND used_at IS NULL AND id < $2 AND expires_at > now()
          ORDER BY id DESC LIMIT $3"
    )))
    .bind(company_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter().map(Pending::try_from).collect()
}

/// Withdraws a pending invitation of the company; None if there is none.
pub async fn withdraw(tx: &mut Tx, company_id: CompanyId, id: InvitationId) -> Result<Option<Pending>, StoreError> {
    let row: Option<PendingRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM account_tokens WHERE company_id = $1 AND id = $2 AND purpose = 'invitation' AND used_at IS NULL
         RETURNING {PENDING_COLUMNS}"
    )))
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(Pending::try_from).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(ha, token_hash(&a));
        assert_ne!(ha, a.as_bytes());
    }

    #[test]
    fn purposes_round_trip() {
        for p in Purpose::ALL {
            assert_eq!(p.as_str().parse::<Purpose>(), Ok(*p));
        }
    }
}
