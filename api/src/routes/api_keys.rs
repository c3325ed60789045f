//! `/api/v1/api-keys`: a caller's own keys. Admins see and revoke every key
//! of their company. A token is shown once, at creation.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;
use validator::Validate;

use crate::audit;
use crate::auth::{MAX_KEY_TTL_SECS, MIN_KEY_TTL_SECS, Principal, SCOPES, issue_key};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, Page, ValidJson};
use crate::state::AppState;
use floq_shared::db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/api-keys", get(list).post(create))
        .route("/api/v1/api-keys/{id}", delete(revoke))
}

fn valid_scopes(scopes: &[String]) -> Result<(), validator::ValidationError> {
    if scopes.is_empty() || scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return Err(
            validator::ValidationError::new("scopes").with_message("scopes are one or more of: api, mcp".into())
        );
    }
    Ok(())
}

#[derive(Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[validate(length(min = 1, max = 100))]
    name: String,
    #[validate(custom(function = "valid_scopes"))]
    scopes: Vec<String>,
    #[validate(range(min = MIN_KEY_TTL_SECS, max = MAX_KEY_TTL_SECS))]
    ttl_seconds: Option<u64>,
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
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
    tx.commit().await?;
    let mut shown = key;
    shown["token"] = token.into();
    Ok((StatusCode::CREATED, Json(shown)))
}

#[derive(Clone, Serialize, sqlx::FromRow)]
struct KeyInfo {
    id: Uuid,
    user_id: Uuid,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

/// Newest first by (v7) id; served by `api_keys (company_id, id)` for admins
/// and `api_keys (company_id, user_id, id)` for everyone else's own keys.
async fn list(State(state): State<AppState>, principal: Principal, page: Page<Uuid>) -> ApiResult<Json<Value>> {
    let company_id = principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let mine = (!principal.is_admin()).then_some(principal.user_id);
    let keys = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, user_id, name, scopes, created_at, expires_at, revoked_at FROM api_keys
          WHERE company_id = $1 AND id < $2 {} ORDER BY id DESC LIMIT $3",
        if mine.is_some() { "AND user_id = $4" } else { "" }
    )))
    .bind(company_id)
    .bind(page.after)
    .bind(page.limit);
    let keys: Vec<KeyInfo> = match mine {
        Some(user_id) => keys.bind(user_id),
        None => keys,
    }
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(page.answer(keys, |k| k.id)))
}

async fn revoke(State(state): State<AppState>, principal: Principal, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, principal.company_id).await?;
    let revoked: KeyInfo = sqlx::query_as(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL AND ($2 OR user_id = $3)
         RETURNING id, user_id, name, scopes, created_at, expires_at, revoked_at",
    )
    .bind(id)
    .bind(principal.is_admin())
    .bind(principal.user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("api key"))?;
    let before = KeyInfo {
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
    tx.commit().await?;
    // This replica forgets it now; the others on the change notification.
    state.key_cache.invalidate();
    Ok(StatusCode::NO_CONTENT)
}
