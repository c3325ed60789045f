//! `/api/v1/flow-groups`: folders of flows; a flow inherits its group's grants.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;
use validator::Validate;

use crate::access::{self, Level};
use crate::audit;
use crate::auth::Principal;
use crate::authz::{Authorized, FlowEdit, FlowRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ByName, Id, Page, ValidJson};
use crate::openapi::{ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::access::{Entity, Viewer};
use floq_shared::db;
use floq_shared::flow_groups::{self, FlowGroup};
use floq_shared::ids::{CompanyId, FlowGroupId, UserId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
}

#[derive(ToSchema)]
#[schema(as = FlowGroup)]
#[allow(dead_code)] // documentation of `flow_groups::FlowGroup`, which the store returns
struct FlowGroupDoc {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FlowGroupBody)]
struct Body {
    /// 1 to 200 characters, unique in the company.
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    name: String,
}

fn name_taken() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "name_taken", "a flow group with this name exists")
}

page!(FlowGroupPage, FlowGroupDoc);

// By name (unique per company), then id; served by `flow_groups (company_id, name)`.
#[utoipa::path(get, operation_id = "flow_groups_list", path = "/api/v1/flow-groups", tag = "flow-groups", params(PageParams),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "The flow groups the caller may see, by name", body = FlowGroupPage)))]
async fn list(State(state): State<AppState>, auth: Authorized<FlowRead>, page: Page<ByName>) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let after = (page.after.0.as_str(), FlowGroupId(page.after.1));
    let groups = flow_groups::page(
        &mut tx,
        CompanyId(company_id),
        viewer(&auth.principal),
        after,
        page.limit,
    )
    .await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(groups, |g| ByName(g.name.clone(), g.id.as_uuid()))))
}

/// Creates a flow group; its creator gets `edit` on it.
#[utoipa::path(post, operation_id = "flow_groups_create", path = "/api/v1/flow-groups", tag = "flow-groups", request_body = Body,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 201, description = "Created", body = FlowGroupDoc),
        (status = 409, description = "The name is taken (`name_taken`)", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    ValidJson(body): ValidJson<Body>,
) -> ApiResult<(StatusCode, Json<FlowGroup>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let group = flow_groups::create(&mut tx, CompanyId(company_id), body.name.trim())
        .await?
        .ok_or_else(name_taken)?;
    let entry = auth.principal.audit("flow_group.create", "flow_group", group.id);
    audit::record(&mut tx, &[entry.change(None::<&FlowGroup>, Some(&group))]).await?;
    access::grant_creator(&mut tx, &auth.principal, "flow_group", group.id.as_uuid()).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

fn viewer(principal: &Principal) -> Viewer {
    Viewer {
        user_id: UserId(principal.user_id),
        admin: principal.is_admin(),
    }
}

async fn fetch(tx: &mut db::Tx, principal: &Principal, id: Uuid) -> ApiResult<FlowGroup> {
    flow_groups::find(tx, CompanyId(principal.company_id), FlowGroupId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("flow group"))
}

#[utoipa::path(get, operation_id = "flow_groups_show", path = "/api/v1/flow-groups/{flow_group_id}", tag = "flow-groups",
    params(("flow_group_id" = Uuid, Path)),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "The flow group", body = FlowGroupDoc)))]
async fn show(State(state): State<AppState>, auth: Authorized<FlowRead>, Id(id): Id) -> ApiResult<Json<FlowGroup>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow_group(&mut tx, &auth.principal, id, Level::View).await?;
    let group = fetch(&mut tx, &auth.principal, id).await?;
    db::commit(tx).await?;
    Ok(Json(group))
}

/// Renames a flow group.
#[utoipa::path(put, operation_id = "flow_groups_update", path = "/api/v1/flow-groups/{flow_group_id}", tag = "flow-groups",
    params(("flow_group_id" = Uuid, Path)), request_body = Body,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 200, description = "Renamed", body = FlowGroupDoc),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody),
        (status = 409, description = "The name is taken (`name_taken`)", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
    ValidJson(body): ValidJson<Body>,
) -> ApiResult<Json<FlowGroup>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow_group(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, &auth.principal, id).await?;
    let company_id = CompanyId(auth.principal.company_id);
    if flow_groups::name_taken(&mut tx, company_id, body.name.trim(), FlowGroupId(id)).await? {
        return Err(name_taken());
    }
    let group = flow_groups::rename(&mut tx, company_id, FlowGroupId(id), body.name.trim())
        .await?
        .ok_or_else(|| ApiError::not_found("flow group"))?;
    let entry = auth.principal.audit("flow_group.update", "flow_group", id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&group))]).await?;
    db::commit(tx).await?;
    Ok(Json(group))
}

/// The group's flows stay, outside any group; grants on the group go with it.
#[utoipa::path(delete, operation_id = "flow_groups_remove", path = "/api/v1/flow-groups/{flow_group_id}", tag = "flow-groups",
    params(("flow_group_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow_group(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, &auth.principal, id).await?;
    let company_id = CompanyId(auth.principal.company_id);
    floq_shared::access::revoke_all(&mut tx, company_id, Entity::FlowGroup, id).await?;
    flow_groups::delete(&mut tx, company_id, FlowGroupId(id)).await?;
    let entry = auth.principal.audit("flow_group.delete", "flow_group", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&FlowGroup>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
