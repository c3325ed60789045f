//! The request envelope: a request id on every request and response, one
//! log line and metrics per request, and a structured error body for every
//! error status, whoever produced it.

use std::time::Instant;

use axum::body::Body;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{ApiError, Denial, ErrorBody};
use crate::request::RequestMeta;
use crate::state::AppState;
use crate::throttle;
use floq_shared::audit::{Entry, Outcome};
use floq_shared::plugin::{OnRequest, RequestInfo};
use floq_shared::telemetry::METRICS;
use std::sync::Arc;

pub const REQUEST_ID: &str = "x-request-id";

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Marks a response a flow shaped (a synchronous webhook's `respond` node):
/// its status and body are the flow's, so no error envelope replaces them.
/// The security headers still apply: a flow must not serve active content
/// from the API's origin.
#[derive(Clone, Copy, Debug)]
pub struct FlowReply;

/// On every response: this is a JSON API, never framed, cached or sniffed
/// (cached only where the handler says so itself: the OpenAPI document).
const SECURITY_HEADERS: [(header::HeaderName, &str); 6] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::CACHE_CONTROL, "no-store"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains"),
];

/// Marks a JSON-RPC answer (`/mcp`): MCP clients read the JSON-RPC body of
/// its error statuses, so no error envelope replaces it.
#[derive(Clone, Copy, Debug)]
pub struct JsonRpcReply;

/// Marks a console response (a page shell or one of its two assets,
/// [`crate::console`]): it gets [`CONSOLE_CSP`] instead of the API's
/// `default-src 'none'`, so the page may load its own script, style and
/// images and call this origin, and nothing else; framing stays denied.
#[derive(Clone, Copy, Debug)]
pub struct ConsolePage;

pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const FLOW_REPLY_CSP: &str = "default-src 'none'; frame-ancestors 'none'; form-action 'none'; sandbox";

/// CORS from the `FLOQ_CORS_ORIGINS` allow-list, with credentials; never `*`.
pub fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(true)
        // PATCH too: `/users/{id}` is edited with it.
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::HeaderName::from_static("x-api-key"),
            // What browser-based MCP clients send to `/mcp` (docs/mcp.md).
            header::HeaderName::from_static("mcp-protocol-version"),
            header::HeaderName::from_static("mcp-method"),
            header::HeaderName::from_static("mcp-name"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

pub async fn envelope(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let at = Utc::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=64).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_string)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let client_ip = throttle::client_ip(peer, req.headers(), &state.config.trusted_proxies);
    let meta = RequestMeta::new(request_id.clone(), client_ip);
    req.extensions_mut().insert(meta.clone());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());

    // Every log line of the request carries its id; a W3C `traceparent` from the caller is continued.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        http.method = %method,
        http.route = %route,
    );
    floq_shared::telemetry::continue_trace(&span, req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
    let mut response = async {
        match on_request(&state, &mut req, &request_id, client_ip).await {
            Some(answer) => answer,
            None => next.run(req).await,
        }
    }
    .instrument(span)
    .await;

    let status = response.status();
    let flow_shaped = response.extensions().get::<FlowReply>().is_some();
    let json_rpc = response.extensions().get::<JsonRpcReply>().is_some();
    let console = response.extensions().get::<ConsolePage>().is_some();
    if (status.is_client_error() || status.is_server_error()) && !flow_shaped && !json_rpc {
        response = with_error_body(response, &request_id, &method, &route);
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, v);
    }
    for (name, value) in SECURITY_HEADERS {
        if name == header::CACHE_CONTROL && headers.contains_key(&name) && !flow_shaped {
            continue;
        }
        headers.insert(name, HeaderValue::from_static(value));
    }
    if flow_shaped {
        // Whatever a flow serves runs in an opaque origin: no scripts, forms or navigation on ours.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(FLOW_REPLY_CSP),
        );
    } else if console {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONSOLE_CSP));
    }

    let elapsed = started.elapsed();
    let denial = response.extensions().get::<Denial>().cloned();
    let request = json!({
        "method": method.as_str(),
        "route": route,
        "status": status.as_u16(),
        "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
    });
    audit_request(&state, &meta, status, denial, at, request).await;
    let status_label = status.as_u16().to_string();
    METRICS
        .http_requests
        .with_label_values(&[method.as_str(), route.as_str(), status_label.as_str()])
        .inc();
    METRICS
        .http_duration
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(elapsed.as_secs_f64());
    tracing::debug!(
        request_id = %request_id,
        http.method = %method,
        http.route = %route,
        http.status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// One entry per request, and one more when a permission check refused it.
/// Recording waits only when the audit writer is behind.
/// The plugins' `on_request` hooks in `FLOQ_PLUGINS` order; the first that answers wins.
async fn on_request(state: &AppState, req: &mut Request, request_id: &str, client_ip: IpAddr) -> Option<Response> {
    if state.plugins.is_empty() {
        return None;
    }
    let info = RequestInfo { request_id, client_ip };
    let meta = req.extensions().get::<Arc<RequestMeta>>().cloned();
    for plugin in state.plugins.iter() {
        match plugin.on_request(req, &info).await {
            OnRequest::Continue => {}
            OnRequest::Answer(response) => return Some(response),
            OnRequest::Refuse { status, code, message } => {
                return Some(ApiError::new(status, code, message).into_response());
            }
        }
    }
    // Who calls, from where, and in which company is floq's to decide: nothing a hook left in the
    // extensions stands for a caller, and the request's own record goes back in.
    req.extensions_mut().remove::<crate::auth::Principal>();
    if let Some(meta) = meta {
        req.extensions_mut().insert(meta);
    }
    None
}

async fn audit_request(
    state: &AppState,
    meta: &RequestMeta,
    status: StatusCode,
    denial: Option<Denial>,
    at: chrono::DateTime<Utc>,
    request: Value,
) {
    if let Some(denial) = denial {
        let mut entry = Entry::new(meta.company_id(), meta.actor(), "authz.denied")
            .outcome(Outcome::Denied)
            .details(json!({"capability": denial.capability, "request": request}))
            .at(at);
        if let Some((kind, id)) = &denial.resource {
            entry = entry.resource(kind, id);
        }
        state.audit.record(entry).await;
    }
    let outcome = match status.as_u16() {
        401 | 403 => Outcome::Denied,
        s if s >= 400 => Outcome::Failure,
        _ => Outcome::Success,
    };
    let entry = Entry::new(meta.company_id(), meta.actor(), "http.request")
        .outcome(outcome)
        .details(request)
        .at(at);
    state.audit.record(entry).await;
}

fn with_error_body(response: Response, request_id: &str, method: &axum::http::Method, route: &str) -> Response {
    let status = response.status();
    let body = response.extensions().get::<ErrorBody>().cloned().unwrap_or_else(|| {
        // Errors produced outside our handlers (unknown route, wrong method, limits).
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed on this resource"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
            s if s.is_server_error() => ("internal", "internal error; quote the request id when reporting it"),
            _ => ("bad_request", "the request could not be processed"),
        };
        ErrorBody {
            code,
            message: message.into(),
            details: Value::Null,
            cause: None,
        }
    });
    if let Some(cause) = &body.cause {
        tracing::error!(request_id, http.method = %method, http.route = route, error = format!("{cause:#}"), "request failed");
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let rendered = body.render(request_id).to_string();
    let mut response = Response::from_parts(parts, Body::from(rendered));
    response.extensions_mut().insert(body);
    response.into_response()
}
