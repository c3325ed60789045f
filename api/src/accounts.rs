//! Platform-wide identities and the mailed links that prove a mailbox: an
//! invitation into a company, and a password reset. This module applies what
//! a link does; the statements live in the stores (`floq_shared::users`,
//! `account_tokens`, `sessions`, `api_keys`), each called in the one
//! transaction opened here.
//!
//! Only the mailbox owner controls an identity. A company may create a
//! brand-new one (it then owns it until the mailbox is proven); any other
//! identity joins a company only by accepting an invitation. Accepting any
//! link proves the mailbox: the password becomes the owner's, every session
//! and API key made before (perhaps with a password a company chose) dies,
//! and no company owns the identity any more.

use std::time::Duration;

use floq_shared::db::{self, StoreError};
use floq_shared::email::Email;
use floq_shared::ids::{CompanyId, UserId};
use floq_shared::{account_tokens, api_keys, sessions, users};
use uuid::Uuid;

use crate::session::token_hash;

pub use floq_shared::account_tokens::{Invitation, Pending, Purpose};

/// The link a mail carries; the page behind it posts the token to `/api/v1/auth/accept`.
pub fn link(public_url: &str, token: &str) -> String {
    format!("{public_url}/accept?token={token}")
}

/// A password-reset token for an identity (sent to `email`, its address as
/// stored), unless one was issued in the last minute. Returns the token to
/// mail, if any.
pub async fn request_reset(
    pool: &db::Pool,
    user_id: Uuid,
    email: &str,
    ttl: Duration,
) -> Result<Option<String>, StoreError> {
    let mut tx = db::lookup_tx(pool, db::Duty::ResetIssue, db::Lookup::Id(user_id)).await?;
    let token = account_tokens::request_reset(&mut tx, UserId(user_id), email, ttl).await?;
    db::commit(tx).await?;
    Ok(token)
}

/// Whether a token is live (known, unused, unexpired): checked before the
/// costly password hash, so random tokens cost the server one lookup each.
pub async fn is_live(pool: &db::Pool, token: &str) -> Result<bool, StoreError> {
    let hash = token_hash(token);
    let mut tx = db::lookup_tx(pool, db::Duty::Accounts, db::Lookup::Hash(&hash)).await?;
    let live = account_tokens::is_live(&mut tx, &hash).await?;
    db::commit(tx).await?;
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

/// Spends a token and applies it, all in one transaction: None when the token
/// is unknown, used or expired (one answer for all three).
pub async fn accept(pool: &db::Pool, token: &str, password_hash: String) -> Result<Option<Accepted>, StoreError> {
    let hash = token_hash(token);
    let mut tx = db::lookup_tx(pool, db::Duty::Accounts, db::Lookup::Hash(&hash)).await?;
    let Some(spent) = account_tokens::spend(&mut tx, &hash).await? else {
        return Ok(None);
    };
    // From here the transaction sees the identity the token names, and only it.
    db::set_lookup(&mut tx, db::Lookup::Email(&spent.email)).await?;
    let user_id = match spent.user_id {
        // The link went to the address it names: it must still be that identity's.
        Some(id) => {
            if !users::has_address(&mut tx, id, &spent.email).await? {
                return Ok(None);
            }
            id
        }
        None => {
            // Only invitations name no identity, and their address passed the rule when invited.
            let email =
                Email::parse(&spent.email).map_err(|e| StoreError::corrupt(format!("invitation address: {e}")))?;
            match users::by_email(&mut tx, &email).await? {
                Some(identity) => identity.id,
                None => {
                    let new = users::NewIdentity {
                        email: &email,
                        name: "",
                        password_hash: None,
                        owner: None,
                    };
                    users::create(&mut tx, new).await?
                }
            }
        }
    };
    db::set_lookup(&mut tx, db::Lookup::Id(user_id.as_uuid())).await?;
    // The mailbox is proven: the owner's password replaces any a company set,
    // and no company owns the identity any more.
    users::prove_mailbox(&mut tx, user_id, &password_hash).await?;
    let sessions_revoked = sessions::revoke_all_of(&mut tx, user_id).await?;
    account_tokens::spend_resets(&mut tx, user_id).await?;
    let mut companies = users::companies_joined(&mut tx, user_id).await?;

    // API keys and memberships are tenant rows: written as floq_app, one
    // company at a time, rather than widening the accounts duty's reach.
    let mut keys_revoked = 0;
    for company in &companies {
        db::become_tenant(&mut tx, company.as_uuid()).await?;
        keys_revoked += api_keys::revoke_all_of(&mut tx, *company, user_id).await?;
    }
    if let (Purpose::Invitation, Some(company)) = (spent.purpose, spent.company_id) {
        db::become_tenant(&mut tx, company.as_uuid()).await?;
        if users::join(&mut tx, company, user_id, &spent.roles).await? {
            companies.push(company);
        }
    }
    db::commit(tx).await?;
    Ok(Some(Accepted {
        purpose: spent.purpose,
        user_id: user_id.as_uuid(),
        company_id: spent.company_id.map(CompanyId::as_uuid),
        invited_by: spent.invited_by.map(UserId::as_uuid),
        companies: companies.into_iter().map(CompanyId::as_uuid).collect(),
        sessions_revoked,
        keys_revoked,
    }))
}
