//! `/api/v1/api-keys`: a caller's own keys. Admins see and revoke every key
//! of their company. A token is shown once, at creation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use floq_shared::api_keys::{self, Key, Owner};
use floq_shared::ids::{ApiKeyId, CompanyId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;
use validator::Validate;

use crate::audit;
use crate::auth::{MAX_KEY_TTL_SECS, MIN_KEY_TTL_SECS, Principal, SCOPES, issue_key};
use crate::authz::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, Page, ValidJson};
use crate::openapi::{PageParams, page};
use crate::state::AppState;
use floq_shared::db;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

fn valid_scopes(scopes: &[String]) -> Result<(), validator::ValidationError> {
    if scopes.is_empty() || scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return Err(
            validator::ValidationError::new("scopes").with_message("scopes are one or more of: api, mcp".into())
        );
    }
    Ok(())
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[validate(length(min = 1, max = 100))]
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// One or more of `api` (this REST API) and `mcp`.
    #[validate(custom(function = "valid_scopes"))]
    #[schema(min_items = 1)]
    scopes: Vec<String>,
    /// Lifetime; the configured default (24 h) when absent.
    #[validate(range(min = MIN_KEY_TTL_SECS, max = MAX_KEY_TTL_SECS))]
    #[schema(minimum = 60, maximum = 31_536_000)]
    ttl_seconds: Option<u64>,
}

/// A new key, with its token: shown this once.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct CreatedKey {
    id: Uuid,
    user_id: Uuid,
    name: String,
    scopes: Vec<String>,
    expires_at: DateTime<Utc>,
    /// `Authorization: Bearer <token>`.
    token: String,
}

/// Creates an API key for the caller, in the caller's company.
#[utoipa::path(post, operation_id = "api_keys_create", path = "/api/v1/api-keys", tag = "api-keys", request_body = CreateKey,
    security(("api_key" = []), ("session" = [])),
    responses((status = 201, description = "Created; the token is shown once", body = CreatedKey)))]

async fn create(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ValidJson(body): ValidJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ttl = body
        .ttl_seconds
        .map(Duration::from_secs)
        .unwrap_or(state.config.api_key_ttl);
    let expires_at = Utc::now() + ttl;
    let mut scopes = body.scopes;
    scopes.sort();
    scopes.dedup();
    let mut tx = db::tenant_tx(&state.pool, principal.company_id).await?;
    let (id, token) = issue_key(
        &mut tx,
        &state.keys,
        principal.company_id,
        principal.user_id,
        body.name.trim(),
        &scopes,
        expires_at,
    )
    .await?;
    let key = json!({"id": id, "user_id": principal.user_id, "name": body.name.trim(), "scopes": scopes,
                     "expires_at": expires_at});
    audit::record(
        &mut tx,
        &[principal
            .audit("api_key.create", "api_key", id)
            .change(None::<&Value>, Some(&key))],
    )
    .await?;
    db::commit(tx).await?;
    let mut shown = key;
    shown["token"] = token.into();
    Ok((StatusCode::CREATED, Json(shown)))
}

#[derive(ToSchema)]
#[schema(as = KeyInfo)]
#[allow(dead_code)] // documentation of `api_keys::Key`, which the store returns
struct KeyInfo {
    id: Uuid,
    user_id: Uuid,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

page!(KeyPage, KeyInfo);

// Newest first by (v7) id; served by `api_keys (company_id, id)` for admins
// and `api_keys (company_id, user_id, id)` for everyone else's own keys.
#[utoipa::path(get, operation_id = "api_keys_list", path = "/api/v1/api-keys", tag = "api-keys", params(PageParams),
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "The caller's keys (an admin's: the company's), newest first", body = KeyPage)))]
async fn list(State(state): State<AppState>, Caller(principal): Caller, page: Page<Uuid>) -> ApiResult<Json<Value>> {
    let company_id = principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let keys = api_keys::page(
        &mut tx,
        CompanyId(company_id),
        reach(&principal),
        ApiKeyId(page.after),
        page.limit,
    )
    .await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(keys, |k| k.id.as_uuid())))
}

/// Whose keys the caller sees and revokes: an admin every key of the company.
fn reach(principal: &Principal) -> Owner {
    if principal.is_admin() {
        Owner::Anyone
    } else {
        Owner::Only(UserId(principal.user_id))
    }
}

/// Revokes a key: the caller's own, or (admin) any of the company's.
#[utoipa::path(delete, operation_id = "api_keys_revoke", path = "/api/v1/api-keys/{api_key_id}", tag = "api-keys", params(("api_key_id" = Uuid, Path)),
    security(("api_key" = []), ("session" = [])),
    responses((status = 204, description = "Revoked")))]
async fn revoke(State(state): State<AppState>, Caller(principal): Caller, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, principal.company_id).await?;
    let revoked = api_keys::revoke(
        &mut tx,
        CompanyId(principal.company_id),
        ApiKeyId(id),
        reach(&principal),
    )
    .await?
    .ok_or_else(|| ApiError::not_found("api key"))?;
    let before = Key {
        revoked_at: None,
        ..revoked.clone()
    };
    audit::record(
        &mut tx,
        &[principal
            .audit("api_key.revoke", "api_key", id)
            .change(Some(&before), Some(&revoked))],
    )
    .await?;
    db::commit(tx).await?;
    // This replica forgets it now; the others on the change notification.
    state.key_cache.invalidate();
    Ok(StatusCode::NO_CONTENT)
}
