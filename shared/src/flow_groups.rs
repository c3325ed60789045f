//! Flow groups, folders of flows whose grants their flows inherit: the one
//! home of the `flow_groups` table's statements. Every statement runs in the
//! caller's tenant transaction and names the company explicitly. It never
//! writes grants (see [`crate::access`]) nor flows (deleting a group leaves
//! its flows outside any group, by the schema's `ON DELETE SET NULL`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::Viewer;
use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowGroupId};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct FlowGroup {
    pub id: FlowGroupId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// One page of the groups `viewer` may see, by name (unique per company),
/// then id, after `(name, id)`.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    viewer: Viewer,
    after: (&str, FlowGroupId),
    limit: i64,
) -> Result<Vec<FlowGroup>, StoreError> {
    sqlx::query_as(
        "SELECT id, name, created_at FROM flow_groups
          WHERE company_id = $1 AND (name, id) > ($2, $3)
            AND ($4 OR floq_access($5, 'flow_group', id, NULL) >= 1)
          ORDER BY name, id LIMIT $6",
    )
    .bind(company_id)
    .bind(after.0)
    .bind(after.1)
    .bind(viewer.admin)
    .bind(viewer.user_id)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Creates a group; `None` when the company has one by that name.
pub async fn create(tx: &mut Tx, company_id: CompanyId, name: &str) -> Result<Option<FlowGroup>, StoreError> {
    sqlx::query_as(
        "INSERT INTO flow_groups (id, company_id, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
         RETURNING id, name, created_at",
    )
    .bind(FlowGroupId(uuid::Uuid::now_v7()))
    .bind(company_id)
    .bind(name)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn find(tx: &mut Tx, company_id: CompanyId, id: FlowGroupId) -> Result<Option<FlowGroup>, StoreError> {
    sqlx::query_as("SELECT id, name, created_at FROM flow_groups WHERE company_id = $1 AND id = $2")
        .bind(company_id)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// Whether another of the company's groups than `id` has this name.
pub async fn name_taken(tx: &mut Tx, company_id: CompanyId, name: &str, id: FlowGroupId) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM flow_groups WHERE company_id = $1 AND name = $2 AND id <> $3)")
        .bind(company_id)
        .bind(name)
        .bind(id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// Renames a group, answering it as it is now; `None` if the company has no such group.
pub async fn rename(
    tx: &mut Tx,
    company_id: CompanyId,
    id: FlowGroupId,
    name: &str,
) -> Result<Option<FlowGroup>, StoreError> {
    sqlx::query_as("UPDATE flow_groups SET name = $3 WHERE company_id = $1 AND id = $2 RETURNING id, name, created_at")
        .bind(company_id)
        .bind(id)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

pub async fn delete(tx: &mut Tx, company_id: CompanyId, id: FlowGroupId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM flow_groups WHERE company_id = $1 AND id = $2")
        .bind(company_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
