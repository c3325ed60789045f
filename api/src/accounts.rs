//! Platform-wide identities and the mailed links that prove a mailbox: an
//! invitation into a company, and a password reset. This module owns the
//! `account_tokens` table and the identity-level writes to `users`.
//!
//! Only the mailbox owner controls an identity. A company may create a
//! brand-new one (it then owns it until the mailbox is proven); any other
//! identity joins a company only by accepting an invitation. Accepting any
//! link proves the mailbox: the password becomes the owner's, every session
//! and API key made before (perhaps with a password a company chose) dies,
//! and no company owns the identity any more.
//!
//! Only a SHA-256 of a token is stored; a token is single-use and expires.

use floq_shared::db::StoreError;
use std::time::Duration;

use rand::RngCore;
use uuid::Uuid;

use crate::session::token_hash;
use floq_shared::db;

/// What a link does once accepted; the `purpose` column's vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Invitation,
    PasswordReset,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Invitation => "invitation",
            Purpose::PasswordReset => "password_reset",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "invitation" => Some(Purpose::Invitation),
            "password_reset" => Some(Purpose::PasswordReset),
            _ => None,
        }
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

/// The link a mail carries; the page behind it posts the token to `/api/v1/auth/accept`.
pub fn link(public_url: &str, token: &str) -> String {
    format!("{public_url}/accept?token={token}")
}

/// A new platform identity. `owner`: the company that created it (and alone
/// may set its password until its mailbox is proven); None when the mailbox
/// owner created it by accepting a link.
pub struct NewIdentity<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: Option<&'a str>,
    pub owner: Option<Uuid>,
}

pub async fn create_identity(tx: &mut db::Tx, new: NewIdentity<'_>) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, email, name, password_hash, created_by_company) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(new.email.trim())
        .bind(new.name.trim())
        .bind(new.password_hash)
        .bind(new.owner)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

pub async fn find_by_email(tx: &mut db::Tx, email: &str) -> Result<Option<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email.trim())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

pub struct Invitation<'a> {
    pub company_id: Uuid,
    pub email: &'a str,
    /// None when no identity has this address yet: accepting creates it.
    pub user_id: Option<Uuid>,
    pub roles: &'a [String],
    pub invited_by: Uuid,
    pub ttl: Duration,
}

/// Records an invitation in the caller's tenant transaction, replacing any
/// pending one of this company for the same address. Returns (id, token).
pub async fn invite(tx: &mut db::Tx, inv: Invitation<'_>) -> Result<(Uuid, String), StoreError> {
    sqlx::query(
        "DELETE FROM account_tokens WHERE purpose = 'invitation' AND lower(email) = lower($1) AND used_at IS NULL",
    )
    .bind(inv.email)
    .execute(&mut **tx)
    .await?;
    let (token, hash) = new_token();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO account_tokens (id, token_hash, purpose, email, user_id, company_id, roles, invited_by, expires_at)
         VALUES ($1, $2, 'invitation', $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
    )
    .bind(id)
    .bind(hash)
    .bind(inv.email)
    .bind(inv.user_id)
    .bind(inv.company_id)
    .bind(inv.roles)
    .bind(inv.invited_by)
    .bind(inv.ttl.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok((id, token))
}

/// A password-reset token for an identity, unless one was issued in the last
/// minute (so the endpoint cannot be used to flood a mailbox). Returns the
/// token to mail, if any.
pub async fn request_reset(
    pool: &sqlx::PgPool,
    user_id: Uuid,
    email: &str,
    ttl: Duration,
) -> Result<Option<String>, StoreError> {
    let mut tx = db::lookup_tx(pool, db::Duty::ResetIssue, db::Lookup::Id(user_id)).await?;
    // Serialise concurrent requests for one identity (the duty may not lock its row).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let recent: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM account_tokens WHERE user_id = $1 AND purpose = 'password_reset'
                          AND used_at IS NULL AND created_at > now() - interval '1 minute')",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    if recent {
        tx.commit().await?;
        return Ok(None);
    }
    let (token, hash) = new_token();
    sqlx::query(
        "INSERT INTO account_tokens (id, token_hash, purpose, email, user_id, expires_at)
         VALUES ($1, $2, 'password_reset', $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(Uuid::now_v7())
    .bind(hash)
    .bind(email)
    .bind(user_id)
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(token))
}

/// Whether a token is live (known, unused, unexpired): checked before the
/// costly password hash, so random tokens cost the server one lookup each.
pub async fn is_live(pool: &sqlx::PgPool, token: &str) -> Result<bool, StoreError> {
    let hash = token_hash(token);
    let mut tx = db::lookup_tx(pool, db::Duty::Accounts, db::Lookup::Hash(&hash)).await?;
    let live = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM account_tokens WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now())",
    )
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(live)
}

/// What accepting a link did.
#[derive(Debug)]
pub struct Accepted {
    pub purpose: Purpose,
    pub user_id: Uuid,
    /// The company an invitation added the identity to.
    pub company_id: Option<Uuid>,
    pub invited_by: Option<Uuid>,
    /// Every company the identity belongs to now.
    pub companies: Vec<Uuid>,
    pub sessions_revoked: u64,
    pub keys_revoked: u64,
}

type TokenRow = (
    String,
    String,
    Option<Uuid>,
    Option<Uuid>,
    Option<Vec<String>>,
    Option<Uuid>,
);

/// Spends a token and applies it, all in one transaction: None when the token
/// is unknown, used or expired (one answer for all three).
pub async fn accept(pool: &sqlx::PgPool, token: &str, password_hash: String) -> Result<Option<Accepted>, StoreError> {
    let hash = token_hash(token);
    let mut tx = db::lookup_tx(pool, db::Duty::Accounts, db::Lookup::Hash(&hash)).await?;
    // Spending the token first makes it single-use even under concurrent accepts.
    let row: Option<TokenRow> = sqlx::query_as(
        "UPDATE account_tokens SET used_at = now()
          WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
          RETURNING purpose, email, user_id, company_id, roles, invited_by",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((purpose, email, user_id, company_id, roles, invited_by)) = row else {
        return Ok(None);
    };
    // The CHECK constraint lists the purposes; a row outside it is a failed read, not a panic.
    let purpose = Purpose::parse(&purpose)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown account token purpose `{purpose}`").into()))?;
    // From here the transaction sees the identity the token names, and only it.
    db::set_lookup(&mut tx, db::Lookup::Email(&email)).await?;
    let user_id = match user_id {
        // The link went to the address it names: it must still be that identity's.
        Some(id) => {
            let same: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND lower(email) = lower($2))")
                    .bind(id)
                    .bind(&email)
                    .fetch_one(&mut *tx)
                    .await?;
            if !same {
                return Ok(None);
            }
            id
        }
        None => match find_by_email(&mut tx, &email).await? {
            Some(id) => id,
            None => {
                let new = NewIdentity {
                    email: &email,
                    name: "",
                    password_hash: None,
                    owner: None,
                };
                create_identity(&mut tx, new).await?
            }
        },
    };
    db::set_lookup(&mut tx, db::Lookup::Id(user_id)).await?;
    // The mailbox is proven: the owner's password replaces any a company set,
    // and no company owns the identity any more.
    sqlx::query("UPDATE users SET password_hash = $2, email_verified_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(password_hash)
        .execute(&mut *tx)
        .await?;
    let sessions_revoked =
        sqlx::query("UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    // Other pending resets die with this one: one proof, one password.
    sqlx::query(
        "UPDATE account_tokens SET used_at = now()
          WHERE user_id = $1 AND purpose = 'password_reset' AND used_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    let mut companies: Vec<Uuid> = sqlx::query_scalar("SELECT company_id FROM memberships WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await?;

    // API keys and memberships are tenant rows: written as floq_app, one
    // company at a time, rather than widening the accounts duty's reach.
    let mut keys_revoked = 0;
    for company in &companies {
        db::become_tenant(&mut tx, *company).await?;
        keys_revoked += sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    if let (Purpose::Invitation, Some(company)) = (purpose, company_id) {
        db::become_tenant(&mut tx, company).await?;
        let added = sqlx::query(
            "INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(company)
        .bind(user_id)
        .bind(roles.unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        if added.rows_affected() == 1 {
            companies.push(company);
        }
    }
    tx.commit().await?;
    Ok(Some(Accepted {
        purpose,
        user_id,
        company_id,
        invited_by,
        companies,
        sessions_revoked,
        keys_revoked,
    }))
}

/// A company's invitations not yet accepted, newest first.
#[derive(serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Invitation)]
pub struct Pending {
    pub id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    pub invited_by: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

pub async fn pending(tx: &mut db::Tx, company_id: Uuid, before: Uuid, limit: i64) -> Result<Vec<Pending>, StoreError> {
    // Newest first by (v7) id, below `before`: one range of `account_tokens_invitation_idx`.
    sqlx::query_as(
        "SELECT id, email, roles, invited_by, created_at, expires_at FROM account_tokens
          WHERE company_id = $1 AND purpose = 'invitation' AND used_at IS NULL AND id < $2 AND expires_at > now()
          ORDER BY id DESC LIMIT $3",
    )
    .bind(company_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Withdraws a pending invitation of the transaction's company; false if there is none.
pub async fn withdraw(tx: &mut db::Tx, id: Uuid) -> Result<Option<Pending>, StoreError> {
    sqlx::query_as(
        "DELETE FROM account_tokens WHERE id = $1 AND purpose = 'invitation' AND used_at IS NULL
         RETURNING id, email, roles, invited_by, created_at, expires_at",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
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
        for p in [Purpose::Invitation, Purpose::PasswordReset] {
            assert_eq!(Purpose::parse(p.as_str()), Some(p));
        }
    }
}
