//! `respond`: shapes the reply a synchronous webhook sends: `status`
//! (default 200), `headers`, `body`. The output is that reply; the API sends
//! it once the run's outcome is committed.

use axum::http::{HeaderName, HeaderValue};
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Map, Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult, text};
use floq_shared::replies::FORBIDDEN_REPLY_HEADERS;

pub struct Respond;

impl Node for Respond {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        let reply = reply(&ctx.params);
        async move { reply.map(NodeOutput::value) }.boxed()
    }
}

fn reply(params: &Value) -> Result<Value, NodeError> {
    let status = match params.get("status") {
        None | Some(Value::Null) => 200,
        Some(v) => v
            .as_u64()
            // No 1xx: a 101 would hand the connection over (an upgrade), the others are not final answers.
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| NodeError::invalid("`status` must be an HTTP status between 200 and 599"))?,
    };
    let headers: Map<String, Value> = match params.get("headers") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(name, value)| header(name, value))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(NodeError::invalid("`headers` must be an object")),
    };
    let body = params.get("body").cloned().unwrap_or(Value::Null);
    Ok(json!({"status": status, "headers": headers, "body": body}))
}

/// A header the API can send as given: caught here, where the flow's author sees the error.
fn header(name: &str, value: &Value) -> Result<(String, Value), NodeError> {
    let lower = name.to_ascii_lowercase();
    if HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Err(NodeError::invalid(format!("`{name}` is not a valid header name")));
    }
    if FORBIDDEN_REPLY_HEADERS.contains(&lower.as_str()) {
        return Err(NodeError::invalid(format!(
            "the `{name}` header is set by floq, not by a respond node"
        )));
    }
    let value = text(value);
    if HeaderValue::from_str(&value).is_err() {
        return Err(NodeError::invalid(format!(
            "the value of header `{name}` has characters a header cannot carry"
        )));
    }
    Ok((lower, Value::String(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_defaults_to_200_and_lowercases_header_names() {
        let out = reply(&json!({"headers": {"X-Order": 42}, "body": "ok"})).unwrap();
        assert_eq!(out, json!({"status": 200, "headers": {"x-order": "42"}, "body": "ok"}));
    }

    #[test]
    fn framing_cookie_and_malformed_headers_are_refused() {
        for headers in [
            json!({"Set-Cookie": "floq_session=x"}),
            json!({"content-length": "3"}),
            json!({"bad name": "x"}),
            json!({"x-ok": "line\nbreak"}),
        ] {
            let e = reply(&json!({"headers": headers})).unwrap_err();
            assert_eq!(e.code, "invalid_params", "{headers}");
        }
        assert!(reply(&json!({"status": 101})).is_err());
    }
}
