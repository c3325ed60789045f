//! `http_request`: one HTTP call. Non-2xx statuses are outputs, not errors,
//! so flows can branch on them; transport failures, timeouts, oversized
//! responses and too many redirects fail the node.
//!
//! Redirects are followed here, not by the client, so every hop is checked
//! (http and https only), vetted by the egress policy on the address it
//! connects to, and counted against `max_redirects`.

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde_json::{Map, Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult, egress_error, millis, text};
use crate::vault::Credential;
use floq_shared::egress::SendError;

pub struct HttpRequest;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REDIRECTS: u64 = 5;

impl Node for HttpRequest {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move { call(&ctx).await }.boxed()
    }
}

fn web_url(raw: &str) -> Result<Url, NodeError> {
    let url = Url::parse(raw).map_err(|e| NodeError::invalid(format!("`url` is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NodeError::invalid("`url` must use http or https"));
    }
    Ok(url)
}

fn credential_field<'a>(credential: &'a Credential, name: &str) -> Result<&'a str, NodeError> {
    credential
        .field(name)
        .ok_or_else(|| NodeError::new("credential_invalid", format!("the credential lacks `{name}`")))
}

/// Applies a credential to one request (an `api_key_query` one goes into
/// `url`). Only ever to the origin the node named: a redirect elsewhere
/// never carries it.
/// `token`: an `oauth2` credential's access token refreshed after a `401`.
fn authorize(
    request: RequestBuilder,
    credential: &Credential,
    token: Option<&str>,
) -> Result<RequestBuilder, NodeError> {
    let field = |name| credential_field(credential, name);
    Ok(match credential.kind.as_str() {
        "http_bearer" => request.bearer_auth(field("token")?),
        "oauth2" => request.bearer_auth(match token {
            Some(t) => t,
            None => field("access_token")?,
        }),
        "http_basic" => request.basic_auth(field("username")?, Some(field("password")?)),
        "http_header" => request.header(field("name")?, field("value")?),
        "api_key_query" => request,
        other => {
            return Err(NodeError::invalid(format!(
                "a `{other}` credential cannot authorize an HTTP request"
            )));
        }
    })
}

async fn call(ctx: &NodeCtx) -> NodeResult {
    let (params, env, credential) = (&ctx.params, &ctx.env, ctx.credential.as_deref());
    let method = params
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let mut method =
        Method::from_bytes(method.as_bytes()).map_err(|_| NodeError::invalid(format!("unknown method `{method}`")))?;
    let raw_url = params
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| NodeError::invalid("`url` must be a string"))?;
    let mut url = web_url(raw_url)?;
    let timeout = millis(params, "timeout_ms", DEFAULT_TIMEOUT, env.http_max_timeout)?;
    let max_redirects = params
        .get("max_redirects")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_REDIRECTS);
    let mode = params.get("response").and_then(Value::as_str).unwrap_or("auto");
    let idempotency_header = match params.get("idempotency_header") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| NodeError::invalid("`idempotency_header` must be an HTTP header name"))?,
        ),
        Some(_) => return Err(NodeError::invalid("`idempotency_header` must be an HTTP header name")),
    };
    let key = ctx.idempotency_key();

    if let Some(query) = params.get("query").and_then(Value::as_object) {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, &text(v));
        }
    }
    let first = (method.clone(), url.clone());
    let mut body = params.get("body").cloned().filter(|b| !b.is_null());
    let first_body = body.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let origin = url.origin();
    let mut redirects = 0;
    // An `oauth2` credential's token the API refused once (401) is refreshed, and the call made once more.
    let mut refreshed: Option<zeroize::Zeroizing<String>> = None;
    let mut response = loop {
        let credential = credential.filter(|_| url.origin() == origin);
        // Secrets in params go to every hop; the credential only to the first origin.
        ctx.check_destination(&url.origin().ascii_serialization(), credential.is_some())?;
        let mut target = url.clone();
        if let Some(c) = credential.filter(|c| c.kind == "api_key_query") {
            target
                .query_pairs_mut()
                .append_pair(credential_field(c, "name")?, credential_field(c, "value")?);
        }
        let mut request = env.http.request(method.clone(), target);
        if let Some(c) = credential {
            request = authorize(request, c, refreshed.as_deref().map(String::as_str))?;
        }
        if let Some(headers) = params.get("headers").and_then(Value::as_object) {
            for (name, value) in headers {
                request = request.header(name.as_str(), text(value));
            }
        }
        if let Some(name) = &idempotency_header {
            request = request.header(name, key.as_str());
        }
        request = match &body {
            None => request,
            Some(Value::String(s)) => request.body(s.clone()),
            Some(other) => request.json(other),
        };
        let request = request.build().map_err(|e| transport_error(&e))?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let response = tokio::time::timeout(remaining, env.egress.send(&env.http, request))
            .await
            .map_err(|_| NodeError::new("http_timeout", "the request timed out"))?
            .map_err(|e| match e {
                SendError::Egress(e) => egress_error(&e),
                SendError::Http(e) => transport_error(&e),
            })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED
            && refreshed.is_none()
            && let Some(c) = credential.filter(|c| c.kind == "oauth2")
        {
            refreshed = Some(c.refreshed(env, &ctx.run, &ctx.node_path).await?);
            (method, url) = first.clone();
            body = first_body.clone();
            redirects = 0;
            continue;
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok());
        let (true, Some(location)) = (status.is_redirection(), location) else {
            break response;
        };
        if redirects >= max_redirects {
            return Err(NodeError::new(
                "http_redirect",
                format!("more than {max_redirects} redirects"),
            ));
        }
        redirects += 1;
        url = url
            .join(location)
            .map_err(|_| NodeError::new("http_redirect", "a redirect named an invalid location"))
            .and_then(|next| web_url(next.as_str()))?;
        // 303, and 301/302 after a POST, continue as a GET without a body (what browsers do).
        if status == StatusCode::SEE_OTHER
            || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND) && method == Method::POST)
        {
            method = Method::GET;
            body = None;
        }
    };

    let status = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();

    let mut bytes = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let chunk = tokio::time::timeout(remaining, response.chunk())
            .await
            .map_err(|_| NodeError::new("http_timeout", "the request timed out"))?
            .map_err(|e| transport_error(&e))?;
        let Some(chunk) = chunk else { break };
        if bytes.len() + chunk.len() > env.http_max_response_bytes {
            return Err(NodeError::new(
                "response_too_large",
                format!("the response exceeds {} bytes", env.http_max_response_bytes),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = decode(&bytes, mode, &content_type)?;
    Ok(NodeOutput::value(
        json!({"status": status, "headers": headers, "body": body, "url": url.as_str()}),
    ))
}

/// `auto`: JSON for JSON types, text for text types and valid UTF-8, base64 otherwise.
fn decode(bytes: &[u8], mode: &str, content_type: &str) -> Result<Value, NodeError> {
    use base64::Engine;
    let binary = || json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)});
    Ok(match mode {
        "json" => serde_json::from_slice(bytes)
            .map_err(|e| NodeError::new("http_invalid_json", format!("the response is not JSON: {e}")))?,
        "text" => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        "binary" => binary(),
        _ if content_type.contains("json") => {
            serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        }
        _ => match std::str::from_utf8(bytes) {
            Ok(text) if !content_type.starts_with("image/") && !content_type.contains("octet-stream") => {
                Value::String(text.to_string())
            }
            _ => binary(),
        },
    })
}

/// Describes a transport failure without echoing request details (URL
/// credentials, headers) into the stored error.
fn transport_error(e: &reqwest::Error) -> NodeError {
    if e.is_timeout() {
        NodeError::new("http_timeout", "the request timed out")
    } else if e.is_connect() {
        NodeError::new("http_connect", "could not connect to the server")
    } else {
        NodeError::new("http_error", "the request failed")
    }
}
