//! Identities and where they belong: the one home of the statements on
//! `users` (platform-wide identities), `memberships` (an identity's roles in
//! one company) and `companies`. Lookups by address go through [`by_email`]
//! alone, with an [`Email`], so every path compares addresses the same way.
//!
//! Every function runs in the caller's transaction, opened for the path's
//! role exactly: tenant work (`db::tenant_tx`) names the company explicitly
//! beside row-level security; the cross-tenant duties (sign-in, accepting a
//! link, the operator CLI) see only what their policies admit. This module
//! never opens a transaction, never decides who may call it, and never
//! writes an identity's password except as told ([`prove_mailbox`],
//! [`set_password`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::Role;
use crate::db::{StoreError, Tx};
use crate::email::Email;
use crate::ids::{CompanyId, UserId};

/// Roles as the `text[]` columns hold them.
pub(crate) fn roles_text(roles: &[Role]) -> Vec<&'static str> {
    roles.iter().map(|r| r.as_str()).collect()
}

/// Roles read back; the CHECK constraint lists the same values, so a row
/// outside them is a failed read, not a panic.
pub(crate) fn parse_roles(raw: Vec<String>) -> Result<Vec<Role>, StoreError> {
    raw.iter()
        .map(|r| {
            r.parse::<Role>()
                .map_err(|_| StoreError::corrupt(format!("unknown role `{r}`")))
        })
        .collect()
}

/// An identity found by its address.
#[derive(sqlx::FromRow)]
pub struct Identity {
    pub id: UserId,
    /// The address as stored: where mail goes, never the spelling a request used.
    pub email: String,
    pub password_hash: Option<String>,
}

/// The identity with this address (compared case-insensitively), if any.
pub async fn by_email(tx: &mut Tx, email: &Email) -> Result<Option<Identity>, StoreError> {
    sqlx::query_as("SELECT id, email, password_hash FROM users WHERE lower(email) = lower($1)")
        .bind(email.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// A new platform identity. `owner`: the company that created it (and alone
/// may set its password until its mailbox is proven); None when the mailbox
/// owner created it by accepting a link.
pub struct NewIdentity<'a> {
    pub email: &'a Email,
    pub name: &'a str,
    pub password_hash: Option<&'a str>,
    pub owner: Option<CompanyId>,
}

pub async fn create(tx: &mut Tx, new: NewIdentity<'_>) -> Result<UserId, StoreError> {
    let id = UserId(uuid::Uuid::now_v7());
    sqlx::query("INSERT INTO users (id, email, name, password_hash, created_by_company) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(new.email.as_str())
        .bind(new.name.trim())
        .bind(new.password_hash)
        .bind(new.owner)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// Whether the identity still has this address (a link bound to it was sent there).
pub async fn has_address(tx: &mut Tx, user_id: UserId, email: &str) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND lower(email) = lower($2))")
        .bind(user_id)
        .bind(email)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// The mailbox is proven: its owner's password replaces any a company set.
pub async fn prove_mailbox(tx: &mut Tx, user_id: UserId, password_hash: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET password_hash = $2, email_verified_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(password_hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Replaces an identity's password (the operator's repair).
pub async fn set_password(tx: &mut Tx, user_id: UserId, password_hash: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(user_id)
        .bind(password_hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What an identity shows of itself.
#[derive(sqlx::FromRow)]
pub struct Profile {
    pub email: String,
    pub name: String,
}

pub async fn profile(tx: &mut Tx, user_id: UserId) -> Result<Profile, StoreError> {
    sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// The identity's companies, oldest membership first (a fresh session starts in the first).
pub async fn companies_joined(tx: &mut Tx, user_id: UserId) -> Result<Vec<CompanyId>, StoreError> {
    sqlx::query_scalar("SELECT company_id FROM memberships WHERE user_id = $1 ORDER BY created_at")
        .bind(user_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// One of an identity's companies, with its roles there.
pub struct Membership {
    pub company_id: CompanyId,
    pub company_name: String,
    pub roles: Vec<Role>,
}

/// Every company of the identity with its name and roles, oldest membership first.
pub async fn memberships_of(tx: &mut Tx, user_id: UserId) -> Result<Vec<Membership>, StoreError> {
    let rows: Vec<(CompanyId, String, Vec<String>)> = sqlx::query_as(
        "SELECT c.id, c.name, m.roles FROM memberships m JOIN companies c ON c.id = m.company_id
          WHERE m.user_id = $1 ORDER BY m.created_at",
    )
    .bind(user_id)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|(company_id, company_name, roles)| {
            Ok(Membership {
                company_id,
                company_name,
                roles: parse_roles(roles)?,
            })
        })
        .collect()
}

/// A member of a company as its admins see them.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub joined_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    id: UserId,
    email: String,
    name: String,
    roles: Vec<String>,
    joined_at: DateTime<Utc>,
}

impl TryFrom<MemberRow> for Member {
    type Error = StoreError;
    fn try_from(r: MemberRow) -> Result<Self, StoreError> {
        Ok(Member {
            id: r.id,
            email: r.email,
            name: r.name,
            roles: parse_roles(r.roles)?,
            joined_at: r.joined_at,
        })
    }
}

const MEMBER_SELECT: &str = "SELECT u.id, u.email, u.name, m.roles, m.created_at AS joined_at
                               FROM memberships m JOIN users u ON u.id = m.user_id";

/// Newest member first, by when they joined, then user id, after `(joined_at,
/// id)`: a user's id tells when the identity was made, not when it joined this
/// company. One range of `memberships (company_id, created_at, user_id)`.
pub async fn members_page(
    tx: &mut Tx,
    company_id: CompanyId,
    after: (DateTime<Utc>, UserId),
    limit: i64,
) -> Result<Vec<Member>, StoreError> {
    let rows: Vec<MemberRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{MEMBER_SELECT} WHERE m.company_id = $1 AND (m.created_at, m.user_id) < ($2, $3)
          ORDER BY m.created_at DESC, m.user_id DESC LIMIT $4"
    )))
    .bind(company_id)
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter().map(Member::try_from).collect()
}

pub async fn member(tx: &mut Tx, company_id: CompanyId, user_id: UserId) -> Result<Option<Member>, StoreError> {
    let row: Option<MemberRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{MEMBER_SELECT} WHERE m.company_id = $1 AND u.id = $2"
    )))
    .bind(company_id)
    .bind(user_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(Member::try_from).transpose()
}

/// Whether the identity belongs to the company already.
pub async fn is_member(tx: &mut Tx, company_id: CompanyId, user_id: UserId) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM memberships WHERE company_id = $1 AND user_id = $2)")
        .bind(company_id)
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// Makes the identity a member; a conflict if it is one already.
pub async fn add_member(tx: &mut Tx, company_id: CompanyId, user_id: UserId, roles: &[Role]) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2, $3)")
        .bind(company_id)
        .bind(user_id)
        .bind(roles_text(roles))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes the identity a member unless it is one already; true if it joined now.
pub async fn join(tx: &mut Tx, company_id: CompanyId, user_id: UserId, roles: &[Role]) -> Result<bool, StoreError> {
    let added =
        sqlx::query("INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(company_id)
            .bind(user_id)
            .bind(roles_text(roles))
            .execute(&mut **tx)
            .await?;
    Ok(added.rows_affected() == 1)
}

/// Locks the company's admin memberships (until the transaction ends) and
/// tells whether `user_id` is the only admin, so two demotions cannot both
/// pass the check.
pub async fn is_last_admin(tx: &mut Tx, company_id: CompanyId, user_id: UserId) -> Result<bool, StoreError> {
    let admins: Vec<UserId> =
        sqlx::query_scalar("SELECT user_id FROM memberships WHERE company_id = $1 AND 'admin' = ANY(roles) FOR UPDATE")
            .bind(company_id)
            .fetch_all(&mut **tx)
            .await?;
    Ok(admins == [user_id])
}

pub async fn set_roles(tx: &mut Tx, company_id: CompanyId, user_id: UserId, roles: &[Role]) -> Result<(), StoreError> {
    sqlx::query("UPDATE memberships SET roles = $3 WHERE company_id = $1 AND user_id = $2")
        .bind(company_id)
        .bind(user_id)
        .bind(roles_text(roles))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends the membership; the identity and its other companies stay.
pub async fn remove_member(tx: &mut Tx, company_id: CompanyId, user_id: UserId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM memberships WHERE company_id = $1 AND user_id = $2")
        .bind(company_id)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn create_company(tx: &mut Tx, company_id: CompanyId, name: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO companies (id, name) VALUES ($1, $2)")
        .bind(company_id)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn company_name(tx: &mut Tx, company_id: CompanyId) -> Result<String, StoreError> {
    sqlx::query_scalar("SELECT name FROM companies WHERE id = $1")
        .bind(company_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_column_text() {
        let text: Vec<String> = roles_text(Role::ALL).into_iter().map(String::from).collect();
        assert_eq!(parse_roles(text).unwrap(), Role::ALL);
        assert!(parse_roles(vec!["owner".into()]).is_err());
    }
}
