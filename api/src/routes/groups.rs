//! `/api/v1/groups`: groups of members, the other subject a grant can name.
//! Admin only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::audit;
use crate::authz::{Authorized, UserManage};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ByName, Page, ValidJson};
use crate::openapi::{ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::db;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(add_member, remove_member))
}

#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct Group {
    id: Uuid,
    name: String,
    members: Vec<Uuid>,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    name: String,
}

page!(GroupPage, Group);

// By name (unique per company), then id; served by `groups (company_id, name)`.
// The page is cut before members are gathered, so only its groups are joined.
#[utoipa::path(get, operation_id = "groups_list", path = "/api/v1/groups", tag = "groups", params(PageParams),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 200, description = "The company's groups with their members, by name", body = GroupPage)))]
async fn list(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    page: Page<ByName>,
) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let groups: Vec<Group> = sqlx::query_as(
        "SELECT g.id, g.name, g.created_at,
                COALESCE(array_agg(gm.user_id) FILTER (WHERE gm.user_id IS NOT NULL), '{}') AS members
           FROM (SELECT id, name, created_at FROM groups
                  WHERE company_id = $1 AND (name, id) > ($2, $3) ORDER BY name, id LIMIT $4) g
           LEFT JOIN group_members gm ON gm.group_id = g.id
          GROUP BY g.id, g.name, g.created_at ORDER BY g.name, g.id",
    )
    .bind(company_id)
    .bind(&page.after.0)
    .bind(page.after.1)
    .bind(page.limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(page.answer(groups, |g| ByName(g.name.clone(), g.id))))
}

#[utoipa::path(post, operation_id = "groups_create", path = "/api/v1/groups", tag = "groups", request_body = CreateGroup,
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 201, description = "Created", body = Group),
        (status = 409, description = "The name is taken (`name_taken`)", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    ValidJson(body): ValidJson<CreateGroup>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let group: Option<Group> = sqlx::query_as(
        "INSERT INTO groups (id, company_id, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
         RETURNING id, name, created_at, '{}'::uuid[] AS members",
    )
    .bind(Uuid::now_v7())
    .bind(company_id)
    .bind(body.name.trim())
    .fetch_optional(&mut *tx)
    .await?;
    let group =
        group.ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "name_taken", "a group with this name exists"))?;
    let entry = auth.principal.audit("group.create", "group", group.id);
    audit::record(&mut tx, &[entry.change(None::<&Group>, Some(&group))]).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(group)))
}

fn ids(raw: &(String, String)) -> ApiResult<(Uuid, Uuid)> {
    match (Uuid::parse_str(&raw.0), Uuid::parse_str(&raw.1)) {
        (Ok(g), Ok(u)) => Ok((g, u)),
        _ => Err(ApiError::not_found("group member")),
    }
}

/// Adds a member of the company to the group (again: a no-op).
#[utoipa::path(post, operation_id = "groups_add_member", path = "/api/v1/groups/{group_id}/members/{user_id}", tag = "groups",
    params(("group_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 204, description = "A member")))]
async fn add_member(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    Path(raw): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (group_id, user_id) = ids(&raw)?;
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    // Both must be this company's: the group under RLS, the user as a member.
    let added = sqlx::query(
        "INSERT INTO group_members (company_id, group_id, user_id)
         SELECT $1, g.id, m.user_id FROM groups g, memberships m WHERE g.id = $2 AND m.user_id = $3
         ON CONFLICT DO NOTHING",
    )
    .bind(company_id)
    .bind(group_id)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    if added.rows_affected() == 0 {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM group_members WHERE group_id = $1 AND user_id = $2)")
                .bind(group_id)
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Err(ApiError::not_found("group or user"));
        }
    } else {
        let entry = auth.principal.audit("group.member_add", "group", group_id);
        let member = json!({"group_id": group_id, "user_id": user_id});
        audit::record(&mut tx, &[entry.change(None::<&Value>, Some(&member))]).await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, operation_id = "groups_remove_member", path = "/api/v1/groups/{group_id}/members/{user_id}", tag = "groups",
    params(("group_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 204, description = "No longer a member")))]
async fn remove_member(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    Path(raw): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (group_id, user_id) = ids(&raw)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let removed = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind(group_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(ApiError::not_found("group member"));
    }
    let entry = auth.principal.audit("group.member_remove", "group", group_id);
    let member = json!({"group_id": group_id, "user_id": user_id});
    audit::record(&mut tx, &[entry.change(Some(&member), None::<&Value>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
