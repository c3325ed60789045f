//! `/api/v1/kv`: per-company JSON values for flows. A string written with
//! the `secret:` prefix is stored encrypted and never returned (nor shown to
//! templates); nodes reach it only by reference (`{"$secret": "key"}`).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use validator::Validate;

use crate::audit;
use crate::authz::{Authorized, KvRead, KvWrite};
use crate::error::{ApiError, ApiResult};
use crate::extract::ValidJson;
use crate::state::AppState;
use floq_shared::{db, secrets};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/kv", get(list))
        .route("/api/v1/kv/{key}", get(show).put(put).delete(remove))
}

/// What a read shows: the value, or only that a secret is there.
#[derive(Clone, Serialize, sqlx::FromRow)]
struct Entry {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    secret: bool,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "key, value, secret IS NOT NULL AS secret, updated_at";
const MAX_VALUE_BYTES: usize = 256 * 1024;

fn valid_key(raw: &str) -> ApiResult<&str> {
    let ok = (1..=128).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::validation(
            "the key is invalid",
            json!([{"field": "key", "message": "keys are 1-128 letters, digits, '_', '.' or '-'"}]),
        ))
    }
}

async fn list(State(state): State<AppState>, auth: Authorized<KvRead>) -> ApiResult<Json<Value>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let items: Vec<Entry> = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM kv ORDER BY key")))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(json!({"items": items})))
}

async fn fetch(tx: &mut db::Tx, key: &str) -> Result<Option<Entry>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM kv WHERE key = $1")))
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
}

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

#[derive(Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct PutValue {
    value: Value,
}

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
    let key_id = sealed.as_ref().map(|_| state.keyring.primary_id());
    let after: Entry = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO kv (company_id, key, value, secret, key_id) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (company_id, key) DO UPDATE
            SET value = excluded.value, secret = excluded.secret, key_id = excluded.key_id, updated_at = now()
         RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(key)
    .bind(plain)
    .bind(sealed)
    .bind(key_id)
    .fetch_one(&mut *tx)
    .await?;
    let entry = auth.principal.audit("kv.put", "kv", key);
    audit::record(&mut tx, &[entry.change(before.as_ref(), Some(&after))]).await?;
    tx.commit().await?;
    Ok(Json(after))
}

async fn remove(
    State(state): State<AppState>,
    auth: Authorized<KvWrite>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let key = valid_key(&key)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let before = fetch(&mut tx, key).await?.ok_or_else(|| ApiError::not_found("key"))?;
    sqlx::query("DELETE FROM kv WHERE key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let entry = auth.principal.audit("kv.delete", "kv", key);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Entry>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
