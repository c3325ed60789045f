//! `/api/v1/kv`: per-company JSON values for flows. A string written with
//! the `secret:` prefix is stored encrypted and never returned (nor shown to
//! templates); nodes reach it only by reference (`{"$secret": "key"}`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
use floq_shared::kv::KvKey;
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
#[derive(Clone, Serialize, sqlx::FromRow, ToSchema)]
#[schema(as = KvEntry)]
struct Entry {
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

const COLUMNS: &str = "id, key, value, secret IS NOT NULL AS secret, allowed_origins, updated_at";
const MAX_VALUE_BYTES: usize = 256 * 1024;

fn valid_key(raw: &str) -> ApiResult<&str> {
    match KvKey::parse(raw) {
        Some(_) => Ok(raw),
        None => Err(ApiError::validation(
            "the key is invalid",
            json!([{"field": "key", "message": KvKey::RULE}]),
        )),
    }
}

page!(KvPage, Entry);

// By key (unique per company), then id; served by the primary key `(company_id, key)`.
#[utoipa::path(get, operation_id = "kv_list", path = "/api/v1/kv", tag = "kv", params(PageParams),
    security(("api_key" = ["kv:read"]), ("session" = ["kv:read"])),
    responses((status = 200, description = "The company's values, by key; secret values only as `secret: true`", body = KvPage)))]
async fn list(State(state): State<AppState>, auth: Authorized<KvRead>, page: Page<ByName>) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let items: Vec<Entry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM kv WHERE company_id = $1 AND (key, id) > ($2, $3) ORDER BY key, id LIMIT $4"
    )))
    .bind(company_id)
    .bind(&page.after.0)
    .bind(page.after.1)
    .bind(page.limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(page.answer(items, |e| ByName(e.key.clone(), e.id))))
}

async fn fetch(tx: &mut db::Tx, key: &str) -> Result<Option<Entry>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM kv WHERE key = $1")))
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
}

#[utoipa::path(get, operation_id = "kv_show", path = "/api/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "1-128 letters, digits, `_`, `.` or `-`")),
    security(("api_key" = ["kv:read"]), ("session" = ["kv:read"])),
    responses((status = 200, description = "The value", body = Entry),
        (status = 422, description = "Not a valid key", body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    auth: Authorized<KvRead>,
    Path(key): Path<String>,
) -> ApiResult<Json<Entry>> {
    let key = valid_key(&key)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let entry = fetch(&mut tx, key).await?.ok_or_else(|| ApiError::not_found("key"))?;
    tx.commit().await?;
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
    responses((status = 200, description = "Written", body = Entry),
        (status = 403, description = "A secret value the caller has no `edit` grant on, or the role lacks `kv:write`", body = ErrorBody)))]
async fn put(
    State(state): State<AppState>,
    auth: Authorized<KvWrite>,
    Path(key): Path<String>,
    ValidJson(body): ValidJson<PutValue>,
) -> ApiResult<Json<Entry>> {
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
                .encrypt(secret.as_bytes(), secrets::kv_binding(company_id, key));
            (None, Some(sealed))
        }
        None => (Some(body.value), None),
    };
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = fetch(&mut tx, key).await?;
    if let Some(secret) = before.as_ref().filter(|b| b.secret) {
        access::require_secret_edit(&mut tx, &auth.principal, secret.id).await?;
    }
    let key_id = sealed.as_ref().map(|_| state.keyring.primary_id());
    let after: Entry = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO kv (company_id, key, value, secret, key_id, allowed_origins)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'))
         ON CONFLICT (company_id, key) DO UPDATE
            SET value = excluded.value, secret = excluded.secret, key_id = excluded.key_id,
                -- Replacing a secret keeps its binding unless the request names one; a plain value has none.
                allowed_origins = CASE WHEN excluded.secret IS NULL THEN '{{}}'
                                       ELSE COALESCE($6, kv.allowed_origins) END,
                updated_at = now()
         RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(key)
    .bind(plain)
    .bind(sealed)
    .bind(key_id)
    .bind(allowed_origins)
    .fetch_one(&mut *tx)
    .await?;
    let entry = auth.principal.audit("kv.put", "kv", key);
    audit::record(&mut tx, &[entry.change(before.as_ref(), Some(&after))]).await?;
    if after.secret {
        // Like a credential: its creator may use it in flows; others need a grant.
        access::grant_creator(&mut tx, &auth.principal, "secret", after.id).await?;
    }
    tx.commit().await?;
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
    let before = fetch(&mut tx, key).await?.ok_or_else(|| ApiError::not_found("key"))?;
    if before.secret {
        access::require_secret_edit(&mut tx, &auth.principal, before.id).await?;
    }
    sqlx::query("DELETE FROM grants WHERE entity_type = 'secret' AND entity_id = $1")
        .bind(before.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM kv WHERE key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let entry = auth.principal.audit("kv.delete", "kv", key);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Entry>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
