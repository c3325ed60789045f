//! Webhooks: `/api/v1/flows/{id}/webhook` configures a flow's trigger URL;
//! `/hooks/{token}` is that URL. The token is the credential (only its hash
//! is stored); an optional HMAC-SHA256 signature with a timestamp guards
//! against forged and replayed calls, under the webhook's own signing secret
//! (random, stored sealed: [`crate::webhook_secret`]). Requests become a run
//! whose `$input` is `{method, body, query, headers}` (without credentials or
//! cookies).
//! A signed request is accepted once (see [`crate::replay`]).
//!
//! A call may wait for its run (`?wait=SECONDS`, or the webhook's
//! `wait_seconds`): the run is published asking for a reply (direct
//! reply-to), and the answer is its `respond` node's reply or its output.
//! Waiting holds no worker and reads nothing from the database; past the
//! wait the caller gets `202 {run_id}` and the run carries on. A reply that
//! would send the caller off the API's origin (`Location`, `Link`) to an
//! origin the webhook does not list in `redirect_origins` is refused with
//! `502 reply_refused` (see [`crate::redirects`]).

use floq_shared::db::StoreError;
use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use validator::Validate;

use super::runs::idempotency_key;
use crate::accept::{AcceptError, Accepted, RunRequest};
use crate::access::{self, Level};
use crate::audit;
use crate::authz::{Authorized, FlowEdit};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Id, StorableBytes, ValidJson};
use crate::middleware::FlowReply;
use crate::openapi::{AnyJson, ErrorBody, RawBody};
use crate::redirects::{self, RedirectOrigins};
use crate::replay::{self, Signature};
use crate::state::AppState;
use crate::webhook_secret::{Sealed, SigningSecret};
use floq_shared::audit::Actor;
use floq_shared::db;
use floq_shared::replies::{FORBIDDEN_REPLY_HEADERS, RunReply};
use floq_shared::run::{RunStatus, Trigger};
use floq_shared::runs::waiting;
use floq_shared::webhooks::{self, Resolved, SealedRef, Webhook};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show, configure, disable))
        .routes(routes!(rotate))
        .routes(routes!(receive))
}

#[derive(Serialize, ToSchema)]
#[schema(as = Webhook)]
#[allow(dead_code)] // documentation of `webhooks::Webhook`, which the store returns
struct WebhookDoc {
    flow_id: Uuid,
    signed: bool,
    signature_header: String,
    tolerance_seconds: i32,
    /// Seconds a call waits for its run unless it says `?wait=`; 0 answers `202` at once.
    wait_seconds: i32,
    /// Whether callers may choose their wait with `?wait=`.
    allow_wait: bool,
    /// Origins a reply's `Location`/`Link` may point to besides relative targets.
    redirect_origins: Vec<String>,
    created_at: DateTime<Utc>,
    rotated_at: Option<DateTime<Utc>>,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What [`revealed`] answers.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // documentation of `revealed`
struct RevealedWebhook {
    #[serde(flatten)]
    webhook: WebhookDoc,
    /// Shown once, when the webhook is enabled or rotated.
    token: Option<String>,
    /// `/hooks/{token}`, shown with the token.
    path: Option<String>,
    /// The signing secret (`whsec_…`), shown when signing is switched on and on rotation.
    secret: Option<String>,
}

/// Whether the flow has a webhook, and its settings (never its token or secret).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct WebhookState {
    enabled: bool,
    webhook: Option<WebhookDoc>,
}

/// A webhook call's run was accepted (and, if it waited, did not finish in time).
#[derive(ToSchema)]
#[allow(dead_code)]
struct HookAccepted {
    run_id: Uuid,
    /// `pending` when the call waited and the run goes on.
    status: Option<String>,
    message: Option<String>,
    /// A repeated `Idempotency-Key`: the first run's id.
    idempotent_replay: Option<bool>,
}

/// What a caller is shown once: the URL (its token) and, if signed, the
/// secret, opened from what was just stored, so it is exactly what calls are verified with.
fn revealed(state: &AppState, company_id: Uuid, hook: &Webhook, token: Option<&str>) -> ApiResult<Value> {
    let mut out = serde_json::to_value(hook).unwrap_or_default();
    if let Some(token) = token {
        out["token"] = token.into();
        out["path"] = format!("/hooks/{token}").into();
    }
    if hook.signed {
        let sealed = hook
            .signing_secret
            .as_deref()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a stored webhook has no signing secret")))?;
        let secret =
            SigningSecret::open(&state.keyring, company_id, hook.flow_id.into(), sealed).map_err(ApiError::internal)?;
        out["secret"] = secret.expose().into();
    }
    Ok(out)
}

async fn fetch(tx: &mut db::Tx, company_id: Uuid, flow_id: Uuid) -> Result<Option<Webhook>, StoreError> {
    webhooks::find(tx, company_id.into(), flow_id.into()).await
}

fn sealed_ref(sealed: &Sealed) -> SealedRef<'_> {
    SealedRef {
        ciphertext: &sealed.ciphertext,
        key_id: &sealed.key_id,
    }
}

#[utoipa::path(get, operation_id = "webhooks_show", path = "/api/v1/flows/{flow_id}/webhook", tag = "webhooks", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 200, description = "The webhook, if enabled", body = WebhookState),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn show(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<Json<Value>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let hook = fetch(&mut tx, auth.principal.company_id, id).await?;
    db::commit(tx).await?;
    Ok(Json(match hook {
        Some(h) => json!({"enabled": true, "webhook": h}),
        None => json!({"enabled": false}),
    }))
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ConfigureWebhook)]
struct Configure {
    #[serde(default)]
    signed: bool,
    #[validate(length(min = 1, max = 100))]
    #[schema(min_length = 1, max_length = 100)]
    signature_header: Option<String>,
    #[validate(range(min = 1, max = 86_400))]
    tolerance_seconds: Option<i32>,
    #[validate(range(min = 0, max = 3_600))]
    wait_seconds: Option<i32>,
    allow_wait: Option<bool>,
    /// `["https://app.example"]`: where a reply may redirect besides relative, same-origin targets.
    redirect_origins: Option<Vec<String>>,
}

/// Enables the webhook (answering its token once) or changes its settings.
#[utoipa::path(put, operation_id = "webhooks_configure", path = "/api/v1/flows/{flow_id}/webhook", tag = "webhooks", params(("flow_id" = Uuid, Path)),
    request_body = Configure,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 201, description = "Enabled: the token (and secret, if signed) are shown this once", body = RevealedWebhook),
        (status = 200, description = "Settings changed", body = RevealedWebhook),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn configure(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
    ValidJson(body): ValidJson<Configure>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let company_id = auth.principal.company_id;
    let max_wait = state.config.webhook_max_wait.as_secs();
    if body.wait_seconds.is_some_and(|w| w as u64 > max_wait) {
        return Err(ApiError::validation(
            "the webhook settings are invalid",
            json!([{"field": "wait_seconds", "message": format!("must be at most {max_wait} (FLOQ_WEBHOOK_MAX_WAIT_SECONDS)")}]),
        ));
    }
    let redirect_origins = body
        .redirect_origins
        .as_deref()
        .map(RedirectOrigins::parse)
        .transpose()
        .map_err(|bad| {
            let details: Vec<Value> = bad
                .into_iter()
                .map(|b| json!({"field": format!("redirect_origins[{}]", b.index), "message": b.message}))
                .collect();
            ApiError::validation("the webhook settings are invalid", Value::Array(details))
        })?;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, company_id, id).await?;
    let header = body.signature_header.map(|h| h.to_ascii_lowercase());
    let (status, token) = match &before {
        None => (StatusCode::CREATED, Some(new_token())),
        Some(_) => (StatusCode::OK, None),
    };
    // Every webhook gets its secret when it is enabled, signed or not, and keeps
    // it until rotated: switching signing off and on again shows the same one.
    let sealed = SigningSecret::generate().seal(&state.keyring, company_id, id);
    let hash = token_hash(token.as_deref().unwrap_or("unused: the row exists"));
    let redirect_origins = redirect_origins.map(|o| o.as_slice().to_vec());
    let settings = webhooks::Settings {
        company_id: company_id.into(),
        flow_id: id.into(),
        token_hash: &hash,
        signed: body.signed,
        signature_header: header.as_deref(),
        tolerance_seconds: body.tolerance_seconds,
        wait_seconds: body.wait_seconds,
        allow_wait: body.allow_wait,
        redirect_origins: redirect_origins.as_deref(),
        secret: sealed_ref(&sealed),
    };
    let hook = webhooks::configure(&mut tx, settings).await?;
    if let Some(before) = &before {
        replay::extend(&mut tx, id, hook.tolerance_seconds - before.tolerance_seconds).await?;
    }
    let action = if before.is_none() {
        "webhook.enable"
    } else {
        "webhook.update"
    };
    let entry = auth.principal.audit(action, "flow", id);
    audit::record(&mut tx, &[entry.change(before.as_ref(), Some(&hook))]).await?;
    // The secret is shown when signing is switched on, as the token is at creation;
    // opened before the commit, so a change whose answer cannot be given is not kept.
    let newly_signed = hook.signed && !before.as_ref().is_some_and(|b| b.signed);
    let mut out = revealed(&state, company_id, &hook, token.as_deref())?;
    if !newly_signed {
        out.as_object_mut().map(|o| o.remove("secret"));
    }
    db::commit(tx).await?;
    Ok((status, Json(out)))
}

/// A new token and a new signing secret; the old ones stop working at once.
#[utoipa::path(post, operation_id = "webhooks_rotate", path = "/api/v1/flows/{flow_id}/webhook/rotate", tag = "webhooks", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 200, description = "The new token (and secret, if signed), shown this once", body = RevealedWebhook),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn rotate(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, company_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let token = new_token();
    let sealed = SigningSecret::generate().seal(&state.keyring, company_id, id);
    let hook = webhooks::rotate(
        &mut tx,
        company_id.into(),
        id.into(),
        &token_hash(&token),
        sealed_ref(&sealed),
    )
    .await?;
    let entry = auth.principal.audit("webhook.rotate", "flow", id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&hook))]).await?;
    let out = revealed(&state, company_id, &hook, Some(&token))?;
    db::commit(tx).await?;
    Ok(Json(out))
}

#[utoipa::path(delete, operation_id = "webhooks_disable", path = "/api/v1/flows/{flow_id}/webhook", tag = "webhooks", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 204, description = "Disabled"),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn disable(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let company_id = auth.principal.company_id;
    let before = fetch(&mut tx, company_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    webhooks::delete(&mut tx, company_id.into(), id.into()).await?;
    let entry = auth.principal.audit("webhook.disable", "flow", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Webhook>)]).await?;
    db::commit(tx).await?;
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

/// Only a holder of the signing secret gets here: the signature verified, and was used before.
fn replayed() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "signature_replayed",
        "this signed request was already accepted; sign it again with a new timestamp to start another run",
    )
}

/// Checks `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">` within the
/// tolerance; the verified signature is what a replay would repeat.
fn verify_signature(secret: &str, header: Option<&str>, body: &[u8], tolerance: i64) -> Option<Signature> {
    let header = header?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (t, v1) = (t?, v1?);
    if Utc::now().timestamp().abs_diff(t) > tolerance.unsigned_abs() {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).ok()?;
    Some(Signature::new(&v1, t, tolerance))
}

/// The secret a signed call must be signed with. One that cannot be opened
/// is the operator's to fix (a key missing from `FLOQ_ENC_*`, a row from
/// before migration 0020 that `floq-api migrate` has not reached): it is
/// logged, and the caller gets the same refusal as for a bad signature.
fn signing_secret(state: &AppState, hook: &Resolved) -> Option<SigningSecret> {
    let flow_id = hook.flow_id;
    let Some(sealed) = hook.signing_secret.as_deref() else {
        tracing::error!(%flow_id, "a signed webhook has no stored signing secret: run `floq-api migrate`");
        return None;
    };
    SigningSecret::open(&state.keyring, hook.company_id.into(), flow_id.into(), sealed)
        .inspect_err(|e| tracing::error!(%flow_id, error = %e, "cannot open a webhook's signing secret"))
        .ok()
}

const HIDDEN_HEADERS: [&str; 4] = ["authorization", "cookie", "proxy-authorization", "x-api-key"];

/// `?wait=` is floq's own parameter where the webhook allows it: then it is
/// taken out of the run's `$input.query`.
const WAIT_PARAM: &str = "wait";

/// How long this call waits for its run: `?wait=` if given and allowed, else
/// the webhook's setting, never past `FLOQ_WEBHOOK_MAX_WAIT_SECONDS`; `None`
/// answers at once.
fn wait_for(state: &AppState, query: &[(String, String)], hook: &Resolved) -> ApiResult<Option<Duration>> {
    let max = state.config.webhook_max_wait.as_secs();
    let asked = query.iter().find(|(k, _)| k == WAIT_PARAM).filter(|_| hook.allow_wait);
    let seconds = match asked {
        None => (hook.wait_seconds.max(0) as u64).min(max),
        Some((_, raw)) => match raw.parse::<u64>() {
            Ok(s) if s <= max => s,
            _ => {
                return Err(ApiError::validation(
                    "the wait parameter is invalid",
                    json!([{"field": WAIT_PARAM, "message": format!("must be whole seconds from 0 to {max}")}]),
                ));
            }
        },
    };
    if seconds == 0 {
        return Ok(None);
    }
    // Each waiting call holds a connection and a little memory: past the cap, answer at once.
    if state.acceptor.waiting() >= state.config.webhook_max_waiting {
        tracing::warn!("too many synchronous webhook calls waiting; answering 202 at once");
        return Ok(None);
    }
    Ok(Some(Duration::from_secs(seconds)))
}

/// A flow's webhook URL: no API key, the token is the credential. Starts a run
/// whose `$input` is `{method, body, query, headers}`; other query parameters
/// than `wait` reach the run as they are.
#[utoipa::path(method(get, post, put), operation_id = "webhooks_receive", path = "/hooks/{token}", tag = "webhooks",
    params(("token" = String, Path, description = "The webhook's token"),
        ("wait" = Option<u64>, Query, description = "Seconds to wait for the run's reply, if the webhook allows it"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; a repeat within 24 h answers the first run"),
        ("X-Floq-Signature" = Option<String>, Header, description = "Signed webhooks: `t=<unix>,v1=<hex HMAC-SHA256 of \"t.body\">`")),
    request_body(description = "Any body; JSON is parsed into `$input.body`",
        content((AnyJson = "application/json"), (RawBody = "*/*"))),
    responses((status = 202, description = "The run is queued (or did not finish within the wait)", body = HookAccepted),
        (status = 200, description = "The run's reply: its `respond` node's (status, headers and body), or its output", body = AnyJson),
        (status = 401, description = "Unknown token, or a signature missing, wrong or out of tolerance (`unauthorized`)", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 409, description = "The signature was used before (`signature_replayed`), or the flow was never deployed (`not_deployed`)", body = ErrorBody),
        (status = 413, description = "The body is over the limit (`payload_too_large`)", body = ErrorBody),
        (status = 422, description = "The body or query holds text that cannot be stored (`invalid_text`), or a bad `wait`", body = ErrorBody),
        (status = 429, description = "Too many runs started for the flow or company (`rate_limited`), or too many of the company's runs waiting (`company_backlog_full`); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "Too many runs waiting across the deployment (`backlog_full`); see `Retry-After`", body = ErrorBody),
        (status = 502, description = "The run failed (`run_failed`), was cancelled (`run_cancelled`), or its reply was refused (`reply_refused`); `details` names its `status` and `error_code`", body = ErrorBody)))]
async fn receive(
    State(state): State<AppState>,
    Path(token): Path<String>,
    method: Method,
    // Both refuse text the run's input could not store (a NUL) with `422 invalid_text`.
    ApiQuery(query): ApiQuery<Vec<(String, String)>>,
    headers: HeaderMap,
    StorableBytes(body): StorableBytes,
) -> ApiResult<Response> {
    // The lookup's transaction also claims a signed call's signature, so a
    // replay costs the database one statement more, and only for signed webhooks.
    let hash = token_hash(&token);
    let mut tx = db::lookup_tx(&state.pool, db::Duty::WebhookLookup, db::Lookup::Hash(&hash)).await?;
    let Some(hook) = webhooks::resolve(&mut tx, &hash).await? else {
        return Err(ApiError::not_found("webhook"));
    };
    let (flow_id, company_id): (Uuid, Uuid) = (hook.flow_id.into(), hook.company_id.into());
    state.trigger_limits.check(company_id, flow_id)?;
    let signature = if hook.signed {
        let secret = signing_secret(&state, &hook).ok_or_else(refused)?;
        let given = headers
            .get(hook.signature_header.as_str())
            .and_then(|v| v.to_str().ok());
        Some(verify_signature(secret.expose(), given, &body, hook.tolerance_seconds.into()).ok_or_else(refused)?)
    } else {
        None
    };
    let wait = wait_for(&state, &query, &hook)?;
    let idempotency_key = idempotency_key(&headers)?;
    let input = run_input(&method, query, hook.allow_wait, &headers, &hook.signature_header, &body);
    let redirects = RedirectOrigins::from_stored(hook.redirect_origins);
    let mut actor = Actor::system("webhook");
    actor.label = Some(format!("webhook:{flow_id}"));
    let request = RunRequest {
        company_id,
        grantee: None,
        flow_id,
        input,
        trigger: Trigger::Webhook,
        actor,
        idempotency_key,
        wait: wait.is_some(),
        version: None,
        retry_of: None,
    };
    let accepted_run = match signature {
        None => {
            db::commit(tx).await?;
            state.acceptor.accept(request).await
        }
        // A task of its own, so a caller hanging up mid-way cannot leave a
        // claim without its run (its retry refused) or a run without its claim.
        Some(sig) => tokio::spawn(claim_and_accept(state.clone(), tx, request, sig))
            .await
            .map_err(ApiError::internal)??,
    };
    match accepted_run {
        Ok(Accepted::New { run_id, reply, .. }) => {
            let (Some(wait), Some(mut waiter)) = (wait, reply) else {
                return Ok(accepted(run_id, false));
            };
            match tokio::time::timeout(wait, waiter.recv()).await {
                Ok(Some(reply)) if reply.oversized => {
                    Ok(sync_reply(stored_reply(&state, company_id, reply).await?, &redirects))
                }
                Ok(Some(reply)) => Ok(sync_reply(reply, &redirects)),
                // Timed out, or the reply channel went away: the run carries on.
                _ => Ok(accepted(run_id, true)),
            }
        }
        Ok(Accepted::Existing { run_id }) => Ok(with_run_id(
            (
                StatusCode::OK,
                Json(json!({"run_id": run_id, "idempotent_replay": true})),
            )
                .into_response(),
            run_id,
        )),
        Err(e) => Err(e
            .into_api_error(async {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "not_deployed",
                    "the flow behind this webhook has no deployed version",
                )
            })
            .await),
    }
}

/// Claims the signature (in the lookup's transaction), then hands the run to
/// the acceptor; a run that was not accepted releases its claim, so the
/// sender may send the same request again.
async fn claim_and_accept(
    state: AppState,
    mut tx: db::Tx,
    request: RunRequest,
    sig: Signature,
) -> ApiResult<Result<Accepted, AcceptError>> {
    let (flow_id, company_id) = (request.flow_id, request.company_id);
    if !replay::claim(&mut tx, flow_id, company_id, &sig).await? {
        return Err(replayed());
    }
    db::commit(tx).await?;
    let accepted = state.acceptor.accept(request).await;
    if accepted.is_err()
        && let Err(e) = replay::release(&state.pool, company_id, flow_id, &sig).await
    {
        tracing::warn!(error = %e, %flow_id, "cannot release a webhook signature claim; its retry will be refused");
    }
    Ok(accepted)
}

/// The request as the run sees it: `{method, body, query, headers}`, without
/// credentials, cookies, the signature or (where it is floq's) `wait`.
fn run_input(
    method: &Method,
    query: Vec<(String, String)>,
    wait_is_ours: bool,
    headers: &HeaderMap,
    signature_header: &str,
    body: &[u8],
) -> Value {
    let shown_headers: BTreeMap<String, String> = headers
        .iter()
        .filter(|(name, _)| !HIDDEN_HEADERS.contains(&name.as_str()) && name.as_str() != signature_header)
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let query: BTreeMap<String, String> = query
        .into_iter()
        .filter(|(k, _)| !(wait_is_ours && k == WAIT_PARAM))
        .collect();
    let parsed_body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    json!({"method": method.as_str(), "body": parsed_body, "query": query, "headers": shown_headers})
}

const RUN_ID_HEADER: &str = "x-floq-run-id";

fn accepted(run_id: Uuid, waited: bool) -> Response {
    let body = if waited {
        json!({"run_id": run_id, "status": "pending", "message": "the run did not finish within the wait; it continues"})
    } else {
        json!({"run_id": run_id})
    };
    with_run_id((StatusCode::ACCEPTED, Json(body)).into_response(), run_id)
}

/// A finished run as the HTTP answer: its `respond` node's reply, else its
/// output (`200`), else — it failed — a `502` naming the run and node. A reply
/// redirecting where the webhook does not allow is a `502 reply_refused`
/// naming the header and the target's origin, and nothing of the reply is sent.
fn sync_reply(reply: RunReply, redirects: &RedirectOrigins) -> Response {
    let run_id = reply.run_id;
    let mut response = if let Some(respond) = reply.respond {
        match respond_reply(respond, redirects) {
            Ok(response) => response,
            Err(refused) => {
                tracing::warn!(%run_id, header = %refused.header, target = %refused.target, "refused a webhook reply's redirect");
                return with_run_id(
                    ApiError::new(StatusCode::BAD_GATEWAY, "reply_refused", refused.to_string())
                        .with_details(json!({"run_id": run_id, "header": refused.header, "target": refused.target}))
                        .into_response(),
                    run_id,
                );
            }
        }
    } else if reply.status == RunStatus::Succeeded {
        Json(reply.output.unwrap_or(Value::Null)).into_response()
    } else {
        let node = reply.error.as_ref().and_then(|e| e.get("node")).cloned();
        let code = reply.error.as_ref().and_then(|e| e.get("code")).cloned();
        // A cancelled run answers as a failed one does, told apart by its code and status.
        let (code_name, message) = if reply.status == RunStatus::Cancelled {
            ("run_cancelled", "the run was cancelled")
        } else {
            ("run_failed", "the run failed")
        };
        return with_run_id(
            ApiError::new(StatusCode::BAD_GATEWAY, code_name, message)
                .with_details(json!({"run_id": run_id, "node": node, "status": reply.status, "error_code": code}))
                .into_response(),
            run_id,
        );
    };
    response.extensions_mut().insert(FlowReply);
    with_run_id(response, run_id)
}

/// `{status, headers, body}`: a string body goes out as text, anything else as JSON.
fn respond_reply(mut respond: Value, redirects: &RedirectOrigins) -> Result<Response, redirects::Refused> {
    // The worker already refused what may not be sent; this only guards against a reply from elsewhere.
    let status = respond
        .get("status")
        .and_then(Value::as_u64)
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let (content_type, bytes) = match respond.get_mut("body").map(Value::take) {
        None | Some(Value::Null) => (None, Vec::new()),
        Some(Value::String(text)) => (Some("text/plain; charset=utf-8"), text.into_bytes()),
        Some(other) => (Some("application/json"), other.to_string().into_bytes()),
    };
    let mut response = (status, bytes).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (name, value) in respond.get("headers").and_then(Value::as_object).into_iter().flatten() {
        let (Ok(name), Some(text)) = (HeaderName::from_bytes(name.as_bytes()), value.as_str()) else {
            continue;
        };
        let Ok(value) = HeaderValue::from_str(text) else {
            continue;
        };
        if FORBIDDEN_REPLY_HEADERS.contains(&name.as_str()) {
            continue;
        }
        // The text as sent (a header value may hold non-ASCII bytes `to_str` would not give back).
        redirects.check(name.as_str(), text)?;
        headers.insert(name, value);
    }
    Ok(response)
}

/// A reply too large to travel on the broker: read, once, the one part the
/// answer is made of (the `respond` node's reply, else the run's output).
pub(super) async fn stored_reply(state: &AppState, company_id: Uuid, mut reply: RunReply) -> ApiResult<RunReply> {
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let (company, run) = (company_id.into(), reply.run_id.into());
    if let Some(node) = &reply.respond_node {
        reply.respond = waiting::step_output(&mut tx, company, run, node).await?;
    } else {
        reply.output = waiting::run_output(&mut tx, company, run).await?;
    }
    db::commit(tx).await?;
    Ok(reply)
}

fn with_run_id(mut response: Response, run_id: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&run_id.to_string()) {
        response.headers_mut().insert(RUN_ID_HEADER, value);
    }
    response
}
