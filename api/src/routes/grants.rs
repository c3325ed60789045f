//! `/api/v1/grants`: who (a user or a group) may view, execute or edit which
//! flow, flow group, integration or secret KV value. Admin only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;
use validator::Validate;

use crate::audit;
use crate::authz::{AccessManage, Authorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, Page, ValidJson};
use crate::openapi::{ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::db;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
}

#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct Grant {
    id: Uuid,
    subject_type: String,
    subject_id: Uuid,
    entity_type: String,
    entity_id: Uuid,
    level: String,
    created_at: DateTime<Utc>,
}

const GRANT_COLUMNS: &str = "id, subject_type, subject_id, entity_type, entity_id, level, created_at";

fn one_of(value: &str, allowed: &[&str]) -> Result<(), validator::ValidationError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(validator::ValidationError::new("one_of")
            .with_message(format!("must be one of: {}", allowed.join(", ")).into()))
    }
}

fn subject_type(v: &str) -> Result<(), validator::ValidationError> {
    one_of(v, &["user", "group"])
}

fn entity_type(v: &str) -> Result<(), validator::ValidationError> {
    one_of(v, &["flow", "flow_group", "integration", "secret"])
}

fn level(v: &str) -> Result<(), validator::ValidationError> {
    one_of(v, &["view", "execute", "edit"])
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateGrant {
    /// `user` or `group`.
    #[validate(custom(function = "subject_type"))]
    subject_type: String,
    subject_id: Uuid,
    /// `flow`, `flow_group`, `integration` or `secret`.
    #[validate(custom(function = "entity_type"))]
    entity_type: String,
    entity_id: Uuid,
    /// `view`, `execute` or `edit` (each includes the ones before it).
    #[validate(custom(function = "level"))]
    level: String,
}

page!(GrantPage, Grant);

// Newest first by (v7) id; served by `grants (company_id, id)`.
#[utoipa::path(get, operation_id = "grants_list", path = "/api/v1/grants", tag = "grants", params(PageParams),
    security(("api_key" = ["access:manage"]), ("session" = ["access:manage"])),
    responses((status = 200, description = "The company's grants, newest first", body = GrantPage)))]
async fn list(
    State(state): State<AppState>,
    auth: Authorized<AccessManage>,
    page: Page<Uuid>,
) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let grants: Vec<Grant> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE company_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
    )))
    .bind(company_id)
    .bind(page.after)
    .bind(page.limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(page.answer(grants, |g| g.id)))
}

/// Gives a user or group a level of access to an entity.
#[utoipa::path(post, operation_id = "grants_create", path = "/api/v1/grants", tag = "grants", request_body = CreateGrant,
    security(("api_key" = ["access:manage"]), ("session" = ["access:manage"])),
    responses((status = 201, description = "Created", body = Grant),
        (status = 404, description = "The subject or entity is not the company's", body = ErrorBody),
        (status = 409, description = "The subject already has a grant on the entity", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<AccessManage>,
    ValidJson(body): ValidJson<CreateGrant>,
) -> ApiResult<(StatusCode, Json<Grant>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    // Both ends must exist in this company (RLS hides every other company's rows).
    let subject_sql = match body.subject_type.as_str() {
        "user" => "SELECT EXISTS (SELECT 1 FROM memberships WHERE user_id = $1)",
        _ => "SELECT EXISTS (SELECT 1 FROM groups WHERE id = $1)",
    };
    let entity_sql = match body.entity_type.as_str() {
        "flow" => "SELECT EXISTS (SELECT 1 FROM flows WHERE id = $1 AND deleted_at IS NULL)",
        "flow_group" => "SELECT EXISTS (SELECT 1 FROM flow_groups WHERE id = $1)",
        "secret" => "SELECT EXISTS (SELECT 1 FROM kv WHERE id = $1 AND secret IS NOT NULL)",
        _ => "SELECT EXISTS (SELECT 1 FROM credentials WHERE id = $1)",
    };
    for (sql, id, what) in [
        (subject_sql, body.subject_id, "subject"),
        (entity_sql, body.entity_id, "entity"),
    ] {
        let exists: bool = sqlx::query_scalar(sql).bind(id).fetch_one(&mut *tx).await?;
        if !exists {
            return Err(ApiError::not_found(what));
        }
    }
    let grant: Option<Grant> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO grants (id, company_id, subject_type, subject_id, entity_type, entity_id, level)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING {GRANT_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(company_id)
    .bind(&body.subject_type)
    .bind(body.subject_id)
    .bind(&body.entity_type)
    .bind(body.entity_id)
    .bind(&body.level)
    .fetch_optional(&mut *tx)
    .await?;
    let grant = grant.ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "exists", "this grant exists already"))?;
    let entry = auth.principal.audit("grant.create", "grant", grant.id);
    audit::record(&mut tx, &[entry.change(None::<&Grant>, Some(&grant))]).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

#[utoipa::path(delete, operation_id = "grants_remove", path = "/api/v1/grants/{grant_id}", tag = "grants", params(("grant_id" = Uuid, Path)),
    security(("api_key" = ["access:manage"]), ("session" = ["access:manage"])),
    responses((status = 204, description = "Removed")))]
async fn remove(State(state): State<AppState>, auth: Authorized<AccessManage>, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let removed: Grant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM grants WHERE id = $1 RETURNING {GRANT_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("grant"))?;
    let entry = auth.principal.audit("grant.delete", "grant", id);
    audit::record(&mut tx, &[entry.change(Some(&removed), None::<&Grant>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
