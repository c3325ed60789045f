//! `http_request`: one HTTP call. Non-2xx statuses are outputs, not errors,
//! so flows can branch on them; transport failures, timeouts and oversized
//! responses fail the node.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{Node, NodeEnv, NodeError, NodeOutput, NodeResult};

pub struct HttpRequest;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Node for HttpRequest {
    fn run(&self, params: Value, _inputs: Value, env: Arc<NodeEnv>) -> BoxFuture<'static, NodeResult> {
        async move { call(&params, &env).await }.boxed()
    }
}

fn invalid(message: impl Into<String>) -> NodeError {
    NodeError::new("invalid_params", message)
}

async fn call(params: &Value, env: &NodeEnv) -> NodeResult {
    let method = params
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| invalid(format!("unknown method `{method}`")))?;
    let raw_url = params
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`url` must be a string"))?;
    let mut url = reqwest::Url::parse(raw_url).map_err(|e| invalid(format!("`url` is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("`url` must use http or https"));
    }
    let timeout = match params.get("timeout_ms") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT.min(env.http_max_timeout),
        Some(v) => {
            let ms = v
                .as_u64()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| invalid("`timeout_ms` must be a positive integer"))?;
            Duration::from_millis(ms).min(env.http_max_timeout)
        }
    };

    if let Some(query) = params.get("query").and_then(Value::as_object) {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, &text(v));
        }
    }
    let mut request = env.http.request(method, url).timeout(timeout);
    if let Some(headers) = params.get("headers").and_then(Value::as_object) {
        for (name, value) in headers {
            request = request.header(name.as_str(), text(value));
        }
    }
    request = match params.get("body") {
        None | Some(Value::Null) => request,
        Some(Value::String(s)) => request.body(s.clone()),
        Some(other) => request.json(other),
    };

    let mut response = request.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()));
    }
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));

    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() + chunk.len() > env.http_max_response_bytes {
            return Err(NodeError::new(
                "response_too_large",
                format!("the response exceeds {} bytes", env.http_max_response_bytes),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let body = if is_json {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&body).into_owned())
    };
    Ok(NodeOutput::value(
        json!({"status": status, "headers": headers, "body": body}),
    ))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Describes a transport failure without echoing request details (URL
/// credentials, headers) into the stored error.
fn transport_error(e: &reqwest::Error) -> NodeError {
    if e.is_timeout() {
        NodeError::new("http_timeout", "the request timed out")
    } else if e.is_redirect() {
        NodeError::new("http_redirect", "too many redirects")
    } else if e.is_connect() {
        NodeError::new("http_connect", "could not connect to the server")
    } else {
        NodeError::new("http_error", "the request failed")
    }
}
