//! `POST /mcp`: the Model Context Protocol endpoint (streamable HTTP, one
//! JSON-RPC message per POST, answered with one JSON object; docs/mcp.md).
//! The wire and its revisions are [`crate::mcp`]'s; this is who may call,
//! and the methods: `initialize`, `ping`, `server/discover`, `tools/list`,
//! `tools/call`.
//!
//! Nothing is kept between requests (no session, no `Mcp-Session-Id`), so
//! any replica answers any request. A request passes, in order: its
//! `Origin` (if it has one) against the allow-list, an API key carrying the
//! `mcp` scope, the per-key and per-company rate limits, then the message.
//!
//! A tool is a flow an editor opted in (`routes/mcp_tools.rs`); calling it
//! starts a run of the deployed version (trigger `mcp`) published for a
//! reply, as a synchronous webhook is, and waits up to
//! `FLOQ_MCP_CALL_TIMEOUT_SECONDS` for it. A run that outlives the wait is
//! answered with its id, and carries on.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accept::{AcceptError, Accepted, RunRequest};
use crate::auth::{Credential, Principal, key_principal};
use crate::authz::{Capability, role_grants};
use crate::error::ApiError;
use crate::mcp::{self, Message, Revision, RpcError};
use crate::middleware::JsonRpcReply;
use crate::openapi::{AnyJson, ErrorBody};
use crate::request::RequestMeta;
use crate::state::AppState;
use floq_shared::audit::Outcome;
use floq_shared::db;
use floq_shared::mcp_tools::{self, Tool};
use floq_shared::run::Trigger;
use floq_shared::telemetry::METRICS;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(endpoint))
}

/// How long clients may reuse a `tools/list` page (and `server/discover`).
const LIST_TTL_MS: u64 = 30_000;
const DISCOVER_TTL_MS: u64 = 3_600_000;

/// A JSON-RPC 2.0 request or notification.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation: the body is read as raw JSON (crate::mcp::parse)
struct JsonRpcRequest {
    /// `"2.0"`
    jsonrpc: String,
    /// A string or a number; absent for a notification.
    #[schema(value_type = Option<AnyJson>)]
    id: Option<Value>,
    /// `initialize`, `ping`, `server/discover`, `tools/list`, `tools/call`, or a notification.
    method: String,
    /// For 2026-07-28, `_meta` carries `io.modelcontextprotocol/protocolVersion` and
    /// `io.modelcontextprotocol/clientCapabilities`.
    #[schema(value_type = Option<AnyJson>)]
    params: Option<Value>,
}

/// A JSON-RPC 2.0 answer: `result`, or (with HTTP 200 for an error in the
/// call itself, such as `-32602`) `error`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct JsonRpcResponse {
    jsonrpc: String,
    #[schema(value_type = AnyJson)]
    id: Value,
    #[schema(value_type = Option<AnyJson>)]
    result: Option<Value>,
    error: Option<JsonRpcError>,
}

/// A JSON-RPC 2.0 error answer; `id` is absent when the request's could not be read.
#[derive(ToSchema)]
#[allow(dead_code)]
struct JsonRpcErrorResponse {
    jsonrpc: String,
    #[schema(value_type = Option<AnyJson>)]
    id: Option<Value>,
    error: JsonRpcError,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct JsonRpcError {
    /// -32700 parse error, -32600 invalid request, -32601 unknown method, -32602 invalid
    /// params, -32603 internal, -32020 header mismatch, -32022 unsupported protocol version.
    code: i64,
    message: String,
    /// For -32602, `{errors: [{field, message}]}`; for -32022, `{supported, requested}`.
    #[schema(value_type = Option<AnyJson>)]
    data: Option<Value>,
}

/// The MCP endpoint. Notifications (and responses) are answered `202` with no body.
#[utoipa::path(post, operation_id = "mcp_endpoint", path = "/mcp", tag = "mcp",
    params(("MCP-Protocol-Version" = Option<String>, Header, description = "`2026-07-28`, or the revision `initialize` negotiated"),
        ("Mcp-Method" = Option<String>, Header, description = "2026-07-28: the body's `method`"),
        ("Mcp-Name" = Option<String>, Header, description = "2026-07-28 `tools/call`: the body's `params.name` (`=?base64?…?=` if not plain ASCII)")),
    request_body(content = JsonRpcRequest, content_type = "application/json"),
    security(("api_key" = ["mcp"])),
    responses((status = 200, description = "The JSON-RPC answer (a notification gets `202` and no body)", body = JsonRpcResponse),
        (status = 400, description = "Unreadable JSON (-32700), not a JSON-RPC request (-32600), headers that do not match the body (-32020), or an unsupported protocol version (-32022)", body = JsonRpcErrorResponse),
        (status = 401, description = "No valid API key (`unauthorized`); carries `WWW-Authenticate: Bearer`", body = ErrorBody),
        (status = 403, description = "The key lacks the `mcp` scope (`scope_missing`), or the `Origin` is not allowed (`origin_not_allowed`)", body = ErrorBody),
        (status = 404, description = "2026-07-28: an unknown method (-32601)", body = JsonRpcErrorResponse),
        (status = 429, description = "Too many requests for the key or company, or runs for the flow (`rate_limited`); see `Retry-After`", body = ErrorBody)))]
async fn endpoint(
    State(state): State<AppState>,
    Extension(meta): Extension<Arc<RequestMeta>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin_allowed(&state, origin)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this Origin may not call the MCP endpoint (FLOQ_CORS_ORIGINS)",
        )
        .denied("origin", None)
        .into_response();
    }
    let principal = match authenticate(&state, &headers, meta).await {
        Ok(p) => p,
        Err(e) => return challenge(e),
    };
    if let Err(e) = crate::authz::plugins_authorize(&state, &principal, "mcp", &Method::POST, "/mcp").await {
        return e.into_response();
    }
    let key_id = match principal.credential {
        Credential::ApiKey(id) => id,
        Credential::Session(id) => id,
    };
    if let Err(e) = state.mcp_limits.check(principal.company_id, key_id) {
        count("limited", "rate_limited");
        return e.into_response();
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "MCP messages are sent as application/json",
        )
        .into_response();
    }
    match mcp::parse(&body) {
        Err((id, e)) => rpc_error(id.as_ref(), e, "unknown"),
        Ok(Message::Response) => {
            if headers.get(mcp::HEADER_VERSION).and_then(|v| v.to_str().ok()) == Some(mcp::MODERN) {
                return rpc_error(
                    None,
                    RpcError::invalid_request("2026-07-28 clients send no JSON-RPC responses"),
                    "response",
                );
            }
            count("response", "ok");
            accepted()
        }
        Ok(Message::Call { id: None, .. }) => {
            // floq keeps no session, so `notifications/initialized` (or any other) changes nothing.
            count("notification", "ok");
            accepted()
        }
        Ok(Message::Call {
            id: Some(id),
            method,
            params,
        }) => {
            let label = method_label(&method);
            let revision = match mcp::revision(&headers, &method, &params) {
                Ok(r) => r,
                Err(e) => return rpc_error(Some(&id), e, label),
            };
            let answer = match method.as_str() {
                "initialize" => initialize(&params),
                "ping" if !revision.is_modern() => Ok(Value::Object(Map::new())),
                "server/discover" => Ok(discover(revision)),
                "tools/list" => list(&state, &principal, revision, &params).await,
                "tools/call" => call(&state, &principal, revision, &params).await,
                _ => Err(Failure::Rpc(RpcError::method_not_found(&method, revision))),
            };
            match answer {
                Ok(result) => {
                    count(label, "ok");
                    let mut response = axum::Json(mcp::response(&id, result)).into_response();
                    response.extensions_mut().insert(JsonRpcReply);
                    response
                }
                Err(Failure::Rpc(e)) => rpc_error(Some(&id), e, label),
                Err(Failure::Api(e)) => {
                    count(label, "refused");
                    e.into_response()
                }
            }
        }
    }
}

/// A method's answer failed as JSON-RPC, or as HTTP (a limit, an outage).
enum Failure {
    Rpc(RpcError),
    Api(ApiError),
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Self {
        Failure::Rpc(e)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<db::StoreError> for Failure {
    fn from(e: db::StoreError) -> Self {
        Failure::Api(e.into())
    }
}

/// Methods as `floq_mcp_requests_total` labels them: a bounded set.
fn method_label(method: &str) -> &'static str {
    match method {
        "initialize" => "initialize",
        "ping" => "ping",
        "server/discover" => "server/discover",
        "tools/list" => "tools/list",
        "tools/call" => "tools/call",
        _ => "other",
    }
}

fn count(method: &str, outcome: &str) {
    METRICS.mcp_requests.with_label_values(&[method, outcome]).inc();
}

fn accepted() -> Response {
    let mut response = StatusCode::ACCEPTED.into_response();
    response.extensions_mut().insert(JsonRpcReply);
    response
}

fn rpc_error(id: Option<&Value>, e: RpcError, method: &str) -> Response {
    count(method_label(method), e.outcome());
    if e.code == -32603 {
        tracing::error!(message = %e.message, "MCP request failed");
    }
    let mut response = (e.status, axum::Json(e.body(id))).into_response();
    response.extensions_mut().insert(JsonRpcReply);
    response
}

/// Browsers send an `Origin`; one not on the allow-list (`FLOQ_CORS_ORIGINS`,
/// or this deployment's own `FLOQ_PUBLIC_URL`) is refused, so a page cannot
/// use a victim's network position (DNS rebinding). Other clients send none.
fn origin_allowed(state: &AppState, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else { return false };
    let own = state.config.public_url.trim_end_matches('/');
    let own = url::Url::parse(own).ok().map(|u| u.origin().ascii_serialization());
    state.config.cors_origins.iter().any(|o| o == origin) || own.as_deref() == Some(origin)
}

/// `Authorization: Bearer <API key>` with the `mcp` scope; nothing else is
/// accepted here (no cookie, no `X-API-Key`).
async fn authenticate(state: &AppState, headers: &HeaderMap, meta: Arc<RequestMeta>) -> Result<Principal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    let principal = key_principal(state, token, meta.clone(), "mcp").await?;
    meta.authenticated(&principal);
    Ok(principal)
}

/// A refused credential, with the `WWW-Authenticate` challenge MCP clients act on.
fn challenge(e: ApiError) -> Response {
    let mut response = e.into_response();
    let value = match response.status() {
        StatusCode::UNAUTHORIZED => Some(r#"Bearer realm="floq", error="invalid_token""#),
        StatusCode::FORBIDDEN => Some(r#"Bearer realm="floq", error="insufficient_scope", scope="mcp""#),
        _ => None,
    };
    if let Some(value) = value {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    }
    response
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": false}})
}

fn initialize(params: &Map<String, Value>) -> Result<Value, Failure> {
    let version = mcp::negotiate(params)?;
    Ok(json!({
        "protocolVersion": version,
        "capabilities": capabilities(),
        "serverInfo": mcp::server_info(),
        "instructions": mcp::INSTRUCTIONS,
    }))
}

fn discover(revision: Revision) -> Value {
    let mut result = Map::new();
    result.insert("supportedVersions".into(), json!(mcp::supported()));
    result.insert("capabilities".into(), capabilities());
    result.insert("instructions".into(), mcp::INSTRUCTIONS.into());
    // The same for every caller: what the server is, not what the caller may do.
    result.insert("ttlMs".into(), DISCOVER_TTL_MS.into());
    result.insert("cacheScope".into(), "public".into());
    mcp::result(revision, result)
}

fn may_execute(principal: &Principal) -> bool {
    principal.roles.iter().any(|r| role_grants(*r, Capability::FlowExecute))
}

fn tool_entry(tool: &Tool) -> Value {
    json!({
        "name": tool.tool_name,
        "description": tool.description,
        "inputSchema": tool.input_schema,
        "_meta": {"dev.floq/flowId": tool.flow_id},
    })
}

async fn list(
    state: &AppState,
    principal: &Principal,
    revision: Revision,
    params: &Map<String, Value>,
) -> Result<Value, Failure> {
    let after = mcp::after(params)?;
    let limit = i64::from(state.config.mcp_page_size);
    let mut tools = if may_execute(principal) {
        let mut tx = db::tenant_tx(&state.pool, principal.company_id).await?;
        let page = mcp_tools::page(
            &mut tx,
            principal.company_id.into(),
            principal.user_id.into(),
            after.as_deref(),
            limit + 1,
        )
        .await?;
        db::commit(tx).await?;
        page
    } else {
        Vec::new()
    };
    let more = tools.len() as i64 > limit;
    tools.truncate(limit as usize);
    let mut result = Map::new();
    result.insert("tools".into(), tools.iter().map(tool_entry).collect());
    if more && let Some(last) = tools.last() {
        result.insert("nextCursor".into(), mcp::cursor(&last.tool_name).into());
    }
    if revision.is_modern() {
        // What this caller may call: reusable only under the same credential.
        result.insert("ttlMs".into(), LIST_TTL_MS.into());
        result.insert("cacheScope".into(), "private".into());
    }
    Ok(mcp::result(revision, result))
}

async fn call(
    state: &AppState,
    principal: &Principal,
    revision: Revision,
    params: &Map<String, Value>,
) -> Result<Value, Failure> {
    let name = params.get("name").and_then(Value::as_str).ok_or_else(|| {
        RpcError::invalid_params(
            "tools/call names its tool",
            vec![("name".into(), "is required and must be a string".into())],
        )
    })?;
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "tool arguments are an object",
                vec![("arguments".into(), "must be an object".into())],
            )
            .into());
        }
    };
    let called = run_tool(state, principal, revision, name, arguments).await;
    let (outcome, flow_id, run_id) = match &called {
        Ok(call) => (call.outcome, Some(call.flow_id), Some(call.run_id)),
        Err(refusal) => (refusal.outcome, refusal.flow_id, None),
    };
    if let Some(outcome) = outcome {
        METRICS.mcp_tool_calls.with_label_values(&[outcome]).inc();
        let audited = match outcome {
            "succeeded" | "pending" => Outcome::Success,
            "refused" => Outcome::Denied,
            _ => Outcome::Failure,
        };
        let entry = match run_id {
            Some(run_id) => principal.audit("mcp.tool_call", "run", run_id),
            None => principal.audit("mcp.tool_call", "mcp_tool", name),
        };
        let details = json!({"tool": name, "flow_id": flow_id, "run_id": run_id, "outcome": outcome});
        state.audit.record(entry.outcome(audited).details(details)).await;
    }
    match called {
        Ok(call) => Ok(call.result),
        Err(refusal) => Err(refusal.failure),
    }
}

/// A tool call that started a run.
struct Called {
    outcome: Option<&'static str>,
    flow_id: Uuid,
    run_id: Uuid,
    result: Value,
}

/// A tool call refused before a run started (`outcome` for metrics and audit;
/// none for an outage or a limit, which the request's own entry records).
struct Refused {
    outcome: Option<&'static str>,
    flow_id: Option<Uuid>,
    failure: Failure,
}

impl Refused {
    fn new(outcome: &'static str, flow_id: Option<Uuid>, failure: impl Into<Failure>) -> Self {
        Self {
            outcome: Some(outcome),
            flow_id,
            failure: failure.into(),
        }
    }
}

/// An outage or a limit: the request's own audit entry and status say so.
macro_rules! refused_by {
    ($($t:ty),*) => {$(
        impl From<$t> for Refused {
            fn from(e: $t) -> Self {
                Self {
                    outcome: None,
                    flow_id: None,
                    failure: e.into(),
                }
            }
        }
    )*};
}

refused_by!(RpcError, ApiError, db::StoreError);

async fn run_tool(
    state: &AppState,
    principal: &Principal,
    revision: Revision,
    name: &str,
    arguments: Value,
) -> Result<Called, Refused> {
    let company_id = principal.company_id;
    let unknown = |flow_id: Option<Uuid>| {
        let e = RpcError::invalid_params(
            format!("unknown tool `{name}`"),
            vec![("name".into(), "no tool of this name is available to this key".into())],
        );
        Refused::new("refused", flow_id, e)
    };
    // A role that may not execute flows sees no tools; another company's are never found (RLS).
    let tool = if may_execute(principal) {
        let mut tx = db::tenant_tx(&state.pool, company_id).await?;
        let tool = mcp_tools::callable(&mut tx, company_id.into(), principal.user_id.into(), name).await?;
        db::commit(tx).await?;
        tool
    } else {
        None
    };
    let tool = tool.ok_or_else(|| unknown(None))?;
    let flow_id = tool.flow_id.as_uuid();
    let errors = mcp::argument_errors(&tool.input_schema, &arguments).map_err(|e| {
        tracing::error!(%flow_id, error = %e, "a stored MCP input schema does not compile");
        RpcError::internal()
    })?;
    if !errors.is_empty() {
        let e = RpcError::invalid_params(
            format!("the arguments do not match the input schema of `{name}`"),
            errors,
        );
        return Err(Refused::new("invalid_arguments", Some(flow_id), e));
    }
    state.trigger_limits.check(company_id, flow_id)?;
    let deadline = state.config.mcp_call_timeout;
    // Each waiting call holds a connection and a little memory: past the cap it answers at once.
    let wait = state.acceptor.waiting() < state.config.webhook_max_waiting;
    let request = RunRequest {
        company_id,
        grantee: (!principal.is_admin()).then_some(principal.user_id),
        flow_id,
        input: arguments,
        trigger: Trigger::Mcp,
        actor: principal.actor(),
        idempotency_key: None,
        wait,
        version: None,
        retry_of: None,
    };
    let (run_id, waiter) = match state.acceptor.accept(request).await {
        Ok(Accepted::New { run_id, reply, .. }) => (run_id, reply),
        Ok(Accepted::Existing { run_id }) => (run_id, None),
        // Undeployed or its grant revoked since the lookup.
        Err(AcceptError::NotRunnable) => return Err(unknown(Some(flow_id))),
        Err(e) => {
            let e = e.into_api_error(async { ApiError::not_found("tool") }).await;
            // Text a run's input cannot hold (U+0000) is the arguments' fault.
            if matches!(&e, ApiError::Client { status, .. } if *status == StatusCode::UNPROCESSABLE_ENTITY) {
                let e = RpcError::invalid_params(
                    "the arguments hold text that cannot be stored",
                    vec![("arguments".into(), "must not contain U+0000".into())],
                );
                return Err(Refused::new("invalid_arguments", Some(flow_id), e));
            }
            return Err(e.into());
        }
    };
    let reply = match waiter {
        Some(mut waiter) => tokio::time::timeout(deadline, waiter.recv()).await.ok().flatten(),
        None => None,
    };
    let reply = match reply {
        Some(r) if r.oversized => Some(super::webhooks::stored_reply(state, company_id, r).await?),
        other => other,
    };
    let (outcome, result) = mcp::tool_result(revision, run_id, reply, deadline);
    Ok(Called {
        outcome: Some(outcome),
        flow_id,
        run_id,
        result,
    })
}
