//! Groups of members (the other subject a grant can name) and their members:
//! the one home of the `groups` and `group_members` tables' statements. Every
//! statement runs in the caller's tenant transaction and names the company
//! explicitly. It never writes grants (see [`crate::access`]) nor memberships.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, GroupId, UserId};

/// A group with its members.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub members: Vec<UserId>,
    pub created_at: DateTime<Utc>,
}

/// One page by name (unique per company), then id, after `(name, id)`. The
/// page is cut before members are gathered, so only its groups are joined.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    after: (&str, GroupId),
    limit: i64,
) -> Result<Vec<Group>, StoreError> {
    sqlx::query_as(
        "SELECT g.id, g.name, g.created_at,
                COALESCE(array_agg(gm.user_id) FILTER (WHERE gm.user_id IS NOT NULL), '{}') AS members
           FROM (SELECT id, name, created_at FROM groups
                  WHERE company_id = $1 AND (name, id) > ($2, $3) ORDER BY name, id LIMIT $4) g
           LEFT JOIN group_members gm ON gm.company_id = $1 AND gm.group_id = g.id
          GROUP BY g.id, g.name, g.created_at ORDER BY g.name, g.id",
    )
    .bind(company_id)
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Creates an empty group; `None` when the company has one by that name.
pub async fn create(tx: &mut Tx, company_id: CompanyId, name: &str) -> Result<Option<Group>, StoreError> {
    sqlx::query_as(
        "INSERT INTO groups (id, company_id, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
         RETURNING id, name, created_at, '{}'::uuid[] AS members",
    )
    .bind(GroupId(uuid::Uuid::now_v7()))
    .bind(company_id)
    .bind(name)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// What adding a member did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    Added,
    /// A member already: nothing changed.
    Already,
    /// The company has no such group, or the user is not its member.
    Missing,
}

pub async fn add_member(
    tx: &mut Tx,
    company_id: CompanyId,
    group_id: GroupId,
    user_id: UserId,
) -> Result<Joined, StoreError> {
    // Both must be this company's: the group, and the user as a member.
    let added = sqlx::query(
        "INSERT INTO group_members (company_id, group_id, user_id)
         SELECT $1, g.id, m.user_id FROM groups g, memberships m
          WHERE g.company_id = $1 AND g.id = $2 AND m.company_id = $1 AND m.user_id = $3
         ON CONFLICT DO NOTHING",
    )
    .bind(company_id)
    .bind(group_id)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    if added.rows_affected() == 1 {
        return Ok(Joined::Added);
    }
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM group_members WHERE company_id = $1 AND group_id = $2 AND user_id = $3)",
    )
    .bind(company_id)
    .bind(group_id)
    .bind(user_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(if exists { Joined::Already } else { Joined::Missing })
}

/// Whether the user was a member (and no longer is).
pub async fn remove_member(
    tx: &mut Tx,
    company_id: CompanyId,
    group_id: GroupId,
    user_id: UserId,
) -> Result<bool, StoreError> {
    let removed = sqlx::query("DELETE FROM group_members WHERE company_id = $1 AND group_id = $2 AND user_id = $3")
        .bind(company_id)
        .bind(group_id)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(removed.rows_affected() == 1)
}
