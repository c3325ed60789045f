//! `/api/v1/grants`: who (a user or a group) may view, execute or edit which
//! flow, flow group, integration or secret KV value. Admin only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;
use validator::Validate;

use crate::audit;
use crate::authz::{AccessManage, Authorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, Page, ValidJson};
use crate::openapi::{ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::access::{self, Entity, Grant, Level, NewGrant, Subject};
use floq_shared::db;
use floq_shared::ids::{CompanyId, GrantId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
}

#[derive(ToSchema)]
#[schema(as = Grant)]
#[allow(dead_code)] // documentation of `access::Grant`, which the store returns
struct GrantDoc {
    id: Uuid,
    subject_type: String,
    subject_id: Uuid,
    entity_type: String,
    entity_id: Uuid,
    level: String,
    created_at: DateTime<Utc>,
}

fn one_of<T: FromStr>(
    value: &str,
    allowed: &[T],
    text: fn(&T) -> &'static str,
) -> Result<(), validator::ValidationError> {
    if value.parse::<T>().is_ok() {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(text).collect();
        Err(validator::ValidationError::new("one_of")
            .with_message(format!("must be one of: {}", names.join(", ")).into()))
    }
}

fn subject_type(v: &str) -> Result<(), validator::ValidationError> {
    one_of(v, Subject::ALL, |s| s.as_str())
}

fn entity_type(v: &str) -> Result<(), validator::ValidationError> {
    one_of(v, Entity::ALL, |e| e.as_str())
}

fn level(v: &str) -> Result<(), validator::ValidationError> {
    one_of(v, Level::ALL, |l| l.as_str())
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

impl CreateGrant {
    /// The grant a validated body asks for.
    fn parsed(&self) -> ApiResult<NewGrant> {
        Ok(NewGrant {
            subject_type: self.subject_type.parse().map_err(ApiError::internal)?,
            subject_id: self.subject_id,
            entity_type: self.entity_type.parse().map_err(ApiError::internal)?,
            entity_id: self.entity_id,
            level: self.level.parse().map_err(ApiError::internal)?,
        })
    }
}

page!(GrantPage, GrantDoc);

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
    let grants = access::page(&mut tx, CompanyId(company_id), GrantId(page.after), page.limit).await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(grants, |g| g.id.as_uuid())))
}

/// Gives a user or group a level of access to an entity.
#[utoipa::path(post, operation_id = "grants_create", path = "/api/v1/grants", tag = "grants", request_body = CreateGrant,
    security(("api_key" = ["access:manage"]), ("session" = ["access:manage"])),
    responses((status = 201, description = "Created", body = GrantDoc),
        (status = 404, description = "The subject or entity is not the company's", body = ErrorBody),
        (status = 409, description = "The subject already has a grant on the entity", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<AccessManage>,
    ValidJson(body): ValidJson<CreateGrant>,
) -> ApiResult<(StatusCode, Json<Grant>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let grant = body.parsed()?;
    let company = CompanyId(company_id);
    if !access::subject_exists(&mut tx, company, grant.subject_type, grant.subject_id).await? {
        return Err(ApiError::not_found("subject"));
    }
    if !access::entity_exists(&mut tx, company, grant.entity_type, grant.entity_id).await? {
        return Err(ApiError::not_found("entity"));
    }
    let grant = access::create(&mut tx, company, grant).await?;
    let grant = grant.ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "exists", "this grant exists already"))?;
    let entry = auth.principal.audit("grant.create", "grant", grant.id);
    audit::record(&mut tx, &[entry.change(None::<&Grant>, Some(&grant))]).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

#[utoipa::path(delete, operation_id = "grants_remove", path = "/api/v1/grants/{grant_id}", tag = "grants", params(("grant_id" = Uuid, Path)),
    security(("api_key" = ["access:manage"]), ("session" = ["access:manage"])),
    responses((status = 204, description = "Removed")))]
async fn remove(State(state): State<AppState>, auth: Authorized<AccessManage>, Id(id): Id) -> ApiResult<StatusCode> {
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.as_uuid()).await?;
    let removed = access::delete(&mut tx, company_id, GrantId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("grant"))?;
    let entry = auth.principal.audit("grant.delete", "grant", id);
    audit::record(&mut tx, &[entry.change(Some(&removed), None::<&Grant>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
