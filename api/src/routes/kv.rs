//! `/api/v1/kv`: per-company JSON values for flows. A string written with
//! the `secret:` prefix is stored encrypted and never returned (nor shown to
//! templates); nodes reach it only by reference (`{"$secret": "key"}`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::access;
use crate::audit;
use crate::authz::{Authorized, KvRead, KvWrite};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ByName, Page, ValidJson};
use crate::openapi::{AnyJson, ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::kv::{self, KvKey};
use floq_shared::{db, secrets};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show, put, remove))
}

/// What a read shows: the value, or only that a secret is there.
#[derive(ToSchema)]
#[schema(as = KvEntry)]
#[allow(dead_code)] // documentation of `kv::Entry`, which the store returns
struct EntryDoc {
    /// What grants on a secret value name (`entity_type: "secret"`).
    id: Uuid,
    key: String,
    /// Absent for secret values.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = AnyJson, required = false)]
    value: Option<Value>,
    secret: bool,
    /// For secret values: where they may be sent; empty: anywhere the egress policy allows.
    allowed_origins: Vec<String>,
    updated_at: DateTime<Utc>,
}

const MAX_VALUE_BYTES: usize = 256 * 1024;

fn valid_key(raw: &str) -> ApiResult<KvKey> {
    match KvKey::parse(raw) {
        Some(key) => Ok(key),
        None => Err(ApiError::validation(
            "the key is invalid",
            json!([{"field": "key", "message": KvKey::RULE}]),
        )),
    }
}

page!(KvPage, EntryDoc);

// By key (unique per company), then id; served by the primary key `(company_id, key)`.
#[utoipa::path(get, operation_id = "kv_list", path = "/api/v1/kv", tag = "kv", params(PageParams),
    security(("api_key" = ["kv:read"]), ("session" = ["kv:read"])),
    responses((status = 200, description = "The company's values, by key; secret values only as `secret: true`", body = KvPage)))]
async fn list(State(state): State<AppState>, auth: Authorized<KvRead>, page: Page<ByName>) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let items = kv::page(&mut tx, company_id, (&page.after.0, page.after.1), page.limit).await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(items, |e| ByName(e.key.clone(), e.id))))
}

#[utoipa::path(get, operation_id = "kv_show", path = "/api/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "1-128 letters, digits, `_`, `.` or `-`")),
    security(("api_key" = ["kv:read"]), ("session" = ["kv:read"])),
    responses((status = 200, description = "The value", body = EntryDoc),
        (status = 422, description = "Not a valid key", body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    auth: Authorized<KvRead>,
    Path(key): Path<String>,
) -> ApiResult<Json<kv::Entry>> {
    let key = valid_key(&key)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let entry = kv::find(&mut tx, &key)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    db::commit(tx).await?;
    Ok(Json(entry))
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct PutValue {
    /// Any JSON; a string starting `secret:` is stored encrypted and never returned.
    #[schema(value_type = AnyJson)]
    value: Value,
    /// Only for `secret:` values; absent keeps what a secret was bound to.
    allowed_origins: Option<Vec<String>>,
}

/// Writes a value (at most 256 KiB).
#[utoipa::path(put, operation_id = "kv_put", path = "/api/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "1-128 letters, digits, `_`, `.` or `-`")),
    request_body = PutValue,
    security(("api_key" = ["kv:write"]), ("session" = ["kv:write"])),
    responses((status = 200, description = "Written", body = EntryDoc),
        (status = 403, description = "A secret value the caller has no `edit` grant on, or the role lacks `kv:write`", body = ErrorBody)))]
async fn put(
    State(state): State<AppState>,
    auth: Authorized<KvWrite>,
    Path(key): Path<String>,
    ValidJson(body): ValidJson<PutValue>,
) -> ApiResult<Json<kv::Entry>> {
    let key = valid_key(&key)?;
    let size = serde_json::to_vec(&body.value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_VALUE_BYTES {
        return Err(ApiError::validation(
            "the value is too large",
            json!([{"field": "value", "message": format!("at most {MAX_VALUE_BYTES} bytes of JSON")}]),
        ));
    }
    let company_id = auth.principal.company_id;
    let allowed_origins = body
        .allowed_origins
        .as_deref()
        .map(super::credentials::origins)
        .transpose()?;
    let is_secret = body
        .value
        .as_str()
        .is_some_and(|s| s.starts_with(secrets::SECRET_PREFIX));
    if !is_secret && allowed_origins.as_ref().is_some_and(|o| !o.is_empty()) {
        return Err(ApiError::validation(
            "allowed_origins is only for secret values",
            json!([{"field": "allowed_origins", "message": "only a `secret:` value can be bound to origins"}]),
        ));
    }
    let (plain, sealed) = match body.value.as_str().and_then(|s| s.strip_prefix(secrets::SECRET_PREFIX)) {
        Some(secret) => {
            if let Some(message) = secrets::check_secret_value(secret) {
                return Err(ApiError::validation(
                    "the secret value is too short",
                    json!([{"field": "value", "message": message}]),
                ));
            }
            let sealed = state
                .keyring
                .encrypt(secret.as_bytes(), secrets::kv_binding(company_id, key.as_str()));
            (None, Some(sealed))
        }
        None => (Some(body.value), None),
    };
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = kv::find(&mut tx, &key).await?;
    if let Some(secret) = before.as_ref().filter(|b| b.secret) {
        access::require_secret_edit(&mut tx, &auth.principal, secret.id).await?;
    }
    let sealed = sealed.map(|sealed| (sealed, state.keyring.primary_id()));
    let put = kv::Put {
        company_id,
        key: &key,
        plain,
        sealed,
        allowed_origins,
    };
    let after = kv::put(&mut tx, put).await?;
    let entry = auth.principal.audit("kv.put", "kv", &key);
    audit::record(&mut tx, &[entry.change(before.as_ref(), Some(&after))]).await?;
    if after.secret {
        // Like a credential: its creator may use it in flows; others need a grant.
        access::grant_creator(&mut tx, &auth.principal, "secret", after.id).await?;
    }
    db::commit(tx).await?;
    Ok(Json(after))
}

#[utoipa::path(delete, operation_id = "kv_remove", path = "/api/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "1-128 letters, digits, `_`, `.` or `-`")),
    security(("api_key" = ["kv:write"]), ("session" = ["kv:write"])),
    responses((status = 204, description = "Deleted"),
        (status = 422, description = "Not a valid key", body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    auth: Authorized<KvWrite>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let key = valid_key(&key)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let before = kv::find(&mut tx, &key)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    if before.secret {
        access::require_secret_edit(&mut tx, &auth.principal, before.id).await?;
    }
    access::revoke_all(&mut tx, "secret", before.id).await?;
    kv::delete(&mut tx, &key).await?;
    let entry = auth.principal.audit("kv.delete", "kv", &key);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&kv::Entry>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
