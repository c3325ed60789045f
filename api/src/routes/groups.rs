//! `/api/v1/groups`: groups of members, the other subject a grant can name.
//! Admin only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
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
use floq_shared::groups::{self, Group, Joined};
use floq_shared::ids::{CompanyId, GroupId, UserId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(add_member, remove_member))
}

#[derive(ToSchema)]
#[schema(as = Group)]
#[allow(dead_code)] // documentation of `groups::Group`, which the store returns
struct GroupDoc {
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

page!(GroupPage, GroupDoc);

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
    let after = (page.after.0.as_str(), GroupId(page.after.1));
    let groups = groups::page(&mut tx, CompanyId(company_id), after, page.limit).await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(groups, |g| ByName(g.name.clone(), g.id.as_uuid()))))
}

#[utoipa::path(post, operation_id = "groups_create", path = "/api/v1/groups", tag = "groups", request_body = CreateGroup,
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 201, description = "Created", body = GroupDoc),
        (status = 409, description = "The name is taken (`name_taken`)", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    ValidJson(body): ValidJson<CreateGroup>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let group = groups::create(&mut tx, CompanyId(company_id), body.name.trim()).await?;
    let group =
        group.ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "name_taken", "a group with this name exists"))?;
    let entry = auth.principal.audit("group.create", "group", group.id);
    audit::record(&mut tx, &[entry.change(None::<&Group>, Some(&group))]).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

fn ids(raw: &(String, String)) -> ApiResult<(GroupId, UserId)> {
    match (Uuid::parse_str(&raw.0), Uuid::parse_str(&raw.1)) {
        (Ok(g), Ok(u)) => Ok((GroupId(g), UserId(u))),
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
    match groups::add_member(&mut tx, CompanyId(company_id), group_id, user_id).await? {
        Joined::Missing => return Err(ApiError::not_found("group or user")),
        Joined::Already => {}
        Joined::Added => {
            let entry = auth.principal.audit("group.member_add", "group", group_id);
            let member = json!({"group_id": group_id, "user_id": user_id});
            audit::record(&mut tx, &[entry.change(None::<&Value>, Some(&member))]).await?;
        }
    }
    db::commit(tx).await?;
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
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.as_uuid()).await?;
    if !groups::remove_member(&mut tx, company_id, group_id, user_id).await? {
        return Err(ApiError::not_found("group member"));
    }
    let entry = auth.principal.audit("group.member_remove", "group", group_id);
    let member = json!({"group_id": group_id, "user_id": user_id});
    audit::record(&mut tx, &[entry.change(Some(&member), None::<&Value>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
