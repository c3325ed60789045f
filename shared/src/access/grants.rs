//! The `grants` table's statements, every reading of `floq_access()` (what a
//! user holds on an entity), and whether a grant's subject or entity exists
//! in the company. Every statement runs in the caller's tenant transaction
//! and names the company explicitly beside row-level security. It never
//! decides what a reach means (that is [`super::decide`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Entity, Level, Reach, Subject};
use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, CredentialId, FlowGroupId, FlowId, GrantId, UserId};

/// A grant as the company's admins see it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Grant {
    pub id: GrantId,
    pub subject_type: Subject,
    /// A user's or a group's id, as `subject_type` says.
    pub subject_id: Uuid,
    pub entity_type: Entity,
    pub entity_id: Uuid,
    pub level: Level,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, subject_type, subject_id, entity_type, entity_id, level, created_at";

/// Who is asking, for listings that show only what the caller may see.
#[derive(Clone, Copy, Debug)]
pub struct Viewer {
    pub user_id: UserId,
    /// Admins see everything of their company.
    pub admin: bool,
}

/// SQL predicate over a `flows` row aliased `f`, true when user `user` may see
/// it (admins pass `admin` true); the arguments are the statement's
/// placeholders. For flow listings, which other stores own.
pub fn visible_flow_sql(admin: &str, user: &str) -> String {
    format!("({admin} OR floq_access({user}, 'flow', f.id, f.group_id) >= 1)")
}

/// One page of the company's grants, newest first, before `before` (a v7 id).
pub async fn page(tx: &mut Tx, company_id: CompanyId, before: GrantId, limit: i64) -> Result<Vec<Grant>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM grants WHERE company_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
    )))
    .bind(company_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A grant to give.
#[derive(Clone, Copy, Debug)]
pub struct NewGrant {
    pub subject_type: Subject,
    pub subject_id: Uuid,
    pub entity_type: Entity,
    pub entity_id: Uuid,
    pub level: Level,
}

/// Gives a grant; `None` when the very same grant exists already.
pub async fn create(tx: &mut Tx, company_id: CompanyId, grant: NewGrant) -> Result<Option<Grant>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO grants (id, company_id, subject_type, subject_id, entity_type, entity_id, level)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(GrantId(Uuid::now_v7()))
    .bind(company_id)
    .bind(grant.subject_type)
    .bind(grant.subject_id)
    .bind(grant.entity_type)
    .bind(grant.entity_id)
    .bind(grant.level)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Removes a grant, answering what it was; `None` if the company has no such grant.
pub async fn delete(tx: &mut Tx, company_id: CompanyId, id: GrantId) -> Result<Option<Grant>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM grants WHERE company_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Gives the creator of an entity `edit` on it; the new grant's id, or `None`
/// if they held it already.
pub async fn grant_creator(
    tx: &mut Tx,
    company_id: CompanyId,
    user_id: UserId,
    entity_type: Entity,
    entity_id: Uuid,
) -> Result<Option<GrantId>, StoreError> {
    let id = GrantId(Uuid::now_v7());
    let created = sqlx::query(
        "INSERT INTO grants (id, company_id, subject_type, subject_id, entity_type, entity_id, level)
         VALUES ($1, $2, 'user', $3, $4, $5, 'edit') ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(company_id)
    .bind(user_id)
    .bind(entity_type)
    .bind(entity_id)
    .execute(&mut **tx)
    .await?;
    Ok((created.rows_affected() == 1).then_some(id))
}

/// Removes every grant on an entity that is being deleted, in the deleting transaction.
pub async fn revoke_all(
    tx: &mut Tx,
    company_id: CompanyId,
    entity_type: Entity,
    entity_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM grants WHERE company_id = $1 AND entity_type = $2 AND entity_id = $3")
        .bind(company_id)
        .bind(entity_type)
        .bind(entity_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// [`revoke_all`] in the transaction's own tenant, for callers that do not
/// yet pass the company (the tenant transaction's company, which row-level
/// security enforces anyway, is named in the statement instead).
pub async fn revoke_all_in_tenant(tx: &mut Tx, entity_type: Entity, entity_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM grants WHERE company_id = floq_current_company() AND entity_type = $1 AND entity_id = $2")
        .bind(entity_type)
        .bind(entity_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether a grant's subject is the company's: a member, or one of its groups.
pub async fn subject_exists(tx: &mut Tx, company_id: CompanyId, kind: Subject, id: Uuid) -> Result<bool, StoreError> {
    let sql = match kind {
        Subject::User => "SELECT EXISTS (SELECT 1 FROM memberships WHERE company_id = $1 AND user_id = $2)",
        Subject::Group => "SELECT EXISTS (SELECT 1 FROM groups WHERE company_id = $1 AND id = $2)",
    };
    exists(tx, sql, company_id, id).await
}

/// Whether a grant's entity is the company's: a live flow, a flow group, a
/// credential, or a KV value that is a secret.
pub async fn entity_exists(tx: &mut Tx, company_id: CompanyId, kind: Entity, id: Uuid) -> Result<bool, StoreError> {
    let sql = match kind {
        Entity::Flow => "SELECT EXISTS (SELECT 1 FROM flows WHERE company_id = $1 AND id = $2 AND deleted_at IS NULL)",
        Entity::FlowGroup => "SELECT EXISTS (SELECT 1 FROM flow_groups WHERE company_id = $1 AND id = $2)",
        Entity::Secret => "SELECT EXISTS (SELECT 1 FROM kv WHERE company_id = $1 AND id = $2 AND secret IS NOT NULL)",
        Entity::Integration => "SELECT EXISTS (SELECT 1 FROM credentials WHERE company_id = $1 AND id = $2)",
    };
    exists(tx, sql, company_id, id).await
}

async fn exists(tx: &mut Tx, sql: &'static str, company_id: CompanyId, id: Uuid) -> Result<bool, StoreError> {
    sqlx::query_scalar(sql)
        .bind(company_id)
        .bind(id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// An entity whose reach is asked for.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// A live flow; a grant on its flow group reaches it too.
    Flow(FlowId),
    FlowGroup(FlowGroupId),
    Integration(CredentialId),
    /// A secret KV value by its id. Its existence is the caller's to check:
    /// the reach is always [`Reach::Held`].
    Secret(Uuid),
}

/// What `user_id` holds on `target`, or that the company has no such entity.
pub async fn reach(tx: &mut Tx, company_id: CompanyId, user_id: UserId, target: Target) -> Result<Reach, StoreError> {
    let rank: Option<i32> =
        match target {
            Target::Flow(id) => {
                sqlx::query_scalar(
                    "SELECT floq_access($1, 'flow', id, group_id) FROM flows
                  WHERE company_id = $2 AND id = $3 AND deleted_at IS NULL",
                )
                .bind(user_id)
                .bind(company_id)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
            }
            Target::FlowGroup(id) => {
                sqlx::query_scalar(
                    "SELECT floq_access($1, 'flow_group', id, NULL) FROM flow_groups WHERE company_id = $2 AND id = $3",
                )
                .bind(user_id)
                .bind(company_id)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
            }
            Target::Integration(id) => sqlx::query_scalar(
                "SELECT floq_access($1, 'integration', id, NULL) FROM credentials WHERE company_id = $2 AND id = $3",
            )
            .bind(user_id)
            .bind(company_id)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?,
            // floq_access runs as the caller, so row-level security already keeps it to the company's grants.
            Target::Secret(id) => Some(
                sqlx::query_scalar("SELECT floq_access($1, 'secret', $2, NULL)")
                    .bind(user_id)
                    .bind(id)
                    .fetch_one(&mut **tx)
                    .await?,
            ),
        };
    Ok(match rank {
        None => Reach::Missing,
        Some(rank) => Reach::Held(Level::from_rank(rank)),
    })
}
