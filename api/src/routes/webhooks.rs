//! Webhooks: `/api/v1/flows/{id}/webhook` configures a flow's trigger URL;
//! `/hooks/{token}` is that URL. The token is the credential (only its hash
//! is stored); an optional HMAC-SHA256 signature with a timestamp guards
//! against forged and replayed calls. Requests become a run whose `$input`
//! is `{method, body, query, headers}` (without credentials or cookies).

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use validator::Validate;

use crate::accept::{AcceptError, Accepted, RunRequest};
use crate::access::{self, Level};
use crate::audit;
use crate::authz::{Authorized, FlowEdit};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, ValidJson};
use crate::state::AppState;
use floq_shared::audit::Actor;
use floq_shared::db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/flows/{id}/webhook", get(show).put(configure).delete(disable))
        .route("/api/v1/flows/{id}/webhook/rotate", post(rotate))
        .route("/hooks/{token}", get(receive).post(receive).put(receive))
}

#[derive(Clone, Serialize, sqlx::FromRow)]
struct Webhook {
    flow_id: Uuid,
    signed: bool,
    signature_header: String,
    tolerance_seconds: i32,
    #[serde(skip)]
    secret_version: i32,
    created_at: DateTime<Utc>,
    rotated_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "flow_id, signed, signature_header, tolerance_seconds, secret_version, created_at, rotated_at";

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The signing secret of a flow's webhook: derived from a server key, the
/// flow and a version, so it is never stored and rotates with the token.
fn signing_secret(state: &AppState, flow_id: Uuid, version: i32) -> String {
    let key = Sha256::digest(format!("floq-webhook-secret:{}", state.config.jwt_secret.expose()).as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{flow_id}:{version}").as_bytes());
    format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
}

/// What a caller is shown once: the URL (its token) and, if signed, the secret.
fn revealed(state: &AppState, hook: &Webhook, token: Option<&str>) -> Value {
    let mut out = serde_json::to_value(hook).unwrap_or_default();
    if let Some(token) = token {
        out["token"] = token.into();
        out["path"] = format!("/hooks/{token}").into();
    }
    if hook.signed {
        out["secret"] = signing_secret(state, hook.flow_id, hook.secret_version).into();
    }
    out
}

async fn fetch(tx: &mut db::Tx, flow_id: Uuid) -> Result<Option<Webhook>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flow_webhooks WHERE flow_id = $1"
    )))
    .bind(flow_id)
    .fetch_optional(&mut **tx)
    .await
}

async fn show(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<Json<Value>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let hook = fetch(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(match hook {
        Some(h) => json!({"enabled": true, "webhook": h}),
        None => json!({"enabled": false}),
    }))
}

#[derive(Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Configure {
    #[serde(default)]
    signed: bool,
    #[validate(length(min = 1, max = 100))]
    signature_header: Option<String>,
    #[validate(range(min = 1, max = 86_400))]
    tolerance_seconds: Option<i32>,
}

/// Enables the webhook (answering its token once) or changes its settings.
async fn configure(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
    ValidJson(body): ValidJson<Configure>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, id).await?;
    let header = body.signature_header.map(|h| h.to_ascii_lowercase());
    let (status, token) = match &before {
        None => (StatusCode::CREATED, Some(new_token())),
        Some(_) => (StatusCode::OK, None),
    };
    let hook: Webhook = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO flow_webhooks (flow_id, company_id, token_hash, signed, signature_header, tolerance_seconds)
         VALUES ($1, $2, $3, $4, COALESCE($5, 'x-floq-signature'), COALESCE($6, 300))
         ON CONFLICT (flow_id) DO UPDATE SET signed = excluded.signed,
             signature_header = COALESCE($5, flow_webhooks.signature_header),
             tolerance_seconds = COALESCE($6, flow_webhooks.tolerance_seconds)
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(company_id)
    .bind(token_hash(token.as_deref().unwrap_or("unused: the row exists")))
    .bind(body.signed)
    .bind(header)
    .bind(body.tolerance_seconds)
    .fetch_one(&mut *tx)
    .await?;
    let action = if before.is_none() {
        "webhook.enable"
    } else {
        "webhook.update"
    };
    let entry = auth.principal.audit(action, "flow", id);
    audit::record(&mut tx, &[entry.change(before.as_ref(), Some(&hook))]).await?;
    tx.commit().await?;
    // The secret is shown when signing is switched on, as the token is at creation.
    let newly_signed = hook.signed && !before.as_ref().is_some_and(|b| b.signed);
    let mut out = revealed(&state, &hook, token.as_deref());
    if !newly_signed {
        out.as_object_mut().map(|o| o.remove("secret"));
    }
    Ok((status, Json(out)))
}

async fn rotate(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<Json<Value>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let token = new_token();
    let hook: Webhook = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE flow_webhooks SET token_hash = $2, secret_version = secret_version + 1, rotated_at = now()
          WHERE flow_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(token_hash(&token))
    .fetch_one(&mut *tx)
    .await?;
    let entry = auth.principal.audit("webhook.rotate", "flow", id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&hook))]).await?;
    tx.commit().await?;
    Ok(Json(revealed(&state, &hook, Some(&token))))
}

async fn disable(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    sqlx::query("DELETE FROM flow_webhooks WHERE flow_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entry = auth.principal.audit("webhook.disable", "flow", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Webhook>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every refusal looks the same: nothing tells a prober which part was wrong.
fn refused() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the webhook call is not authorized",
    )
}

/// Checks `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` within the tolerance.
fn verify_signature(secret: &str, header: Option<&str>, body: &[u8], tolerance: i64) -> bool {
    let Some(header) = header else { return false };
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (Utc::now().timestamp() - t).abs() > tolerance {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

/// A webhook found by its token.
#[derive(sqlx::FromRow)]
struct Resolved {
    flow_id: Uuid,
    company_id: Uuid,
    signed: bool,
    signature_header: String,
    tolerance_seconds: i32,
    secret_version: i32,
}

const HIDDEN_HEADERS: [&str; 4] = ["authorization", "cookie", "proxy-authorization", "x-api-key"];

async fn receive(
    State(state): State<AppState>,
    Path(token): Path<String>,
    method: Method,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let found: Option<Resolved> = {
        let mut tx = db::system_tx(&state.pool).await?;
        let row = sqlx::query_as(
            "SELECT flow_id, company_id, signed, signature_header, tolerance_seconds, secret_version
               FROM flow_webhooks WHERE token_hash = $1",
        )
        .bind(token_hash(&token))
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row
    };
    let Some(Resolved {
        flow_id,
        company_id,
        signed,
        signature_header: header,
        tolerance_seconds: tolerance,
        secret_version: version,
    }) = found
    else {
        return Err(ApiError::not_found("webhook"));
    };
    state.trigger_limits.check(company_id, flow_id)?;
    if signed {
        let secret = signing_secret(&state, flow_id, version);
        let given = headers.get(header.as_str()).and_then(|v| v.to_str().ok());
        if !verify_signature(&secret, given, &body, tolerance.into()) {
            return Err(refused());
        }
    }
    let shown_headers: BTreeMap<String, String> = headers
        .iter()
        .filter(|(name, _)| !HIDDEN_HEADERS.contains(&name.as_str()) && name.as_str() != header)
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let query: BTreeMap<String, String> = query.into_iter().collect();
    let parsed_body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let input = json!({"method": method.as_str(), "body": parsed_body, "query": query, "headers": shown_headers});
    let mut actor = Actor::system("webhook");
    actor.label = Some(format!("webhook:{flow_id}"));
    let request = RunRequest {
        company_id,
        grantee: None,
        flow_id,
        input,
        trigger: "webhook",
        actor,
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| (1..=255).contains(&k.len()))
            .map(str::to_string),
    };
    match state.acceptor.accept(request).await {
        Ok(Accepted::New { run_id, .. }) => Ok((StatusCode::ACCEPTED, Json(json!({"run_id": run_id})))),
        Ok(Accepted::Existing { run_id }) => Ok((
            StatusCode::OK,
            Json(json!({"run_id": run_id, "idempotent_replay": true})),
        )),
        Err(AcceptError::NotRunnable) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_deployed",
            "the flow behind this webhook has no deployed version",
        )),
        Err(e @ AcceptError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}
