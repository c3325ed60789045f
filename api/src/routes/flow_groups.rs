//! `/api/v1/flow-groups`: folders of flows; a flow inherits its group's grants.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;
use validator::Validate;

use crate::access::{self, Level};
use crate::audit;
use crate::authz::{Authorized, FlowEdit, FlowRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ByName, Id, Page, ValidJson};
use crate::state::AppState;
use floq_shared::db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/flow-groups", get(list).post(create))
        .route("/api/v1/flow-groups/{id}", get(show).put(update).delete(remove))
}

#[derive(Serialize, sqlx::FromRow)]
struct FlowGroup {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Body {
    #[validate(length(min = 1, max = 200))]
    name: String,
}

fn name_taken() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "name_taken", "a flow group with this name exists")
}

/// By name (unique per company), then id; served by `flow_groups (company_id, name)`.
async fn list(State(state): State<AppState>, auth: Authorized<FlowRead>, page: Page<ByName>) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let groups: Vec<FlowGroup> = sqlx::query_as(
        "SELECT id, name, created_at FROM flow_groups
          WHERE company_id = $1 AND (name, id) > ($2, $3)
            AND ($4 OR floq_access($5, 'flow_group', id, NULL) >= 1)
          ORDER BY name, id LIMIT $6",
    )
    .bind(company_id)
    .bind(&page.after.0)
    .bind(page.after.1)
    .bind(auth.principal.is_admin())
    .bind(auth.principal.user_id)
    .bind(page.limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(page.answer(groups, |g| ByName(g.name.clone(), g.id))))
}

async fn create(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    ValidJson(body): ValidJson<Body>,
) -> ApiResult<(StatusCode, Json<FlowGroup>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let group: FlowGroup = sqlx::query_as(
        "INSERT INTO flow_groups (id, company_id, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
         RETURNING id, name, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(company_id)
    .bind(body.name.trim())
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(name_taken)?;
    let entry = auth.principal.audit("flow_group.create", "flow_group", group.id);
    audit::record(&mut tx, &[entry.change(None::<&FlowGroup>, Some(&group))]).await?;
    access::grant_creator(&mut tx, &auth.principal, "flow_group", group.id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(group)))
}

async fn fetch(tx: &mut db::Tx, id: Uuid) -> ApiResult<FlowGroup> {
    sqlx::query_as("SELECT id, name, created_at FROM flow_groups WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ApiError::not_found("flow group"))
}

async fn show(State(state): State<AppState>, auth: Authorized<FlowRead>, Id(id): Id) -> ApiResult<Json<FlowGroup>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow_group(&mut tx, &auth.principal, id, Level::View).await?;
    let group = fetch(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(group))
}

async fn update(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
    ValidJson(body): ValidJson<Body>,
) -> ApiResult<Json<FlowGroup>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow_group(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, id).await?;
    let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM flow_groups WHERE name = $1 AND id <> $2)")
        .bind(body.name.trim())
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if taken {
        return Err(name_taken());
    }
    sqlx::query("UPDATE flow_groups SET name = $2 WHERE id = $1")
        .bind(id)
        .bind(body.name.trim())
        .execute(&mut *tx)
        .await?;
    let group = fetch(&mut tx, id).await?;
    let entry = auth.principal.audit("flow_group.update", "flow_group", id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&group))]).await?;
    tx.commit().await?;
    Ok(Json(group))
}

/// The group's flows stay, outside any group; grants on the group go with it.
async fn remove(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow_group(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, id).await?;
    sqlx::query("DELETE FROM grants WHERE entity_type = 'flow_group' AND entity_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM flow_groups WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entry = auth.principal.audit("flow_group.delete", "flow_group", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&FlowGroup>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
