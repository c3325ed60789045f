//! The Model Context Protocol's wire, as `POST /mcp` speaks it (docs/mcp.md):
//! JSON-RPC 2.0 messages, the protocol revisions floq answers, and the
//! checks every message passes before a method runs. Hand-written over serde
//! rather than `rmcp`: floq's tools are per-tenant rows and its auth, limits
//! and run path come first, so an SDK would carry little but the envelope
//! (docs/mcp.md says more).
//!
//! Two eras on one endpoint, with no state kept between requests:
//! * **modern** (2026-07-28): each request names its revision and the
//!   client's capabilities in `params._meta`; the `MCP-Protocol-Version`,
//!   `Mcp-Method` and `Mcp-Name` headers must match the body;
//! * **legacy** (2025-11-25, 2025-06-18): `initialize` negotiates, and later
//!   requests carry the negotiated revision in `MCP-Protocol-Version`.
//!
//! This module decides nothing about tools or callers; it never touches the
//! database (the route does: `routes/mcp.rs`).

mod result;
pub use result::tool_result;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde_json::{Map, Value, json};

/// The stateless revision.
pub const MODERN: &str = "2026-07-28";
/// Handshake revisions floq answers `initialize` with, newest first.
pub const LEGACY: [&str; 2] = ["2025-11-25", "2025-06-18"];

/// Every revision, newest first (what `server/discover` and version errors list).
pub fn supported() -> Vec<&'static str> {
    std::iter::once(MODERN).chain(LEGACY).collect()
}

pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// Where a `tools/call` result names its run (`_meta` keys under floq's own prefix).
pub const META_RUN_ID: &str = "dev.floq/runId";
pub const META_RUN_STATUS: &str = "dev.floq/runStatus";

pub const HEADER_VERSION: &str = "mcp-protocol-version";
pub const HEADER_METHOD: &str = "mcp-method";
pub const HEADER_NAME: &str = "mcp-name";

/// The revision a request is served under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revision {
    Modern,
    Legacy(&'static str),
}

impl Revision {
    pub fn is_modern(self) -> bool {
        self == Revision::Modern
    }
}

/// A JSON-RPC error with the HTTP status it travels with.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub status: StatusCode,
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, -32700, format!("parse error: {detail}"))
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, -32600, message)
    }

    /// Modern requests get `404` (the transport says so); legacy ones a plain JSON-RPC answer.
    pub fn method_not_found(method: &str, revision: Revision) -> Self {
        let status = if revision.is_modern() {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        Self::new(status, -32601, format!("method not found: `{method}`"))
    }

    /// Invalid parameters, naming each field that is wrong.
    pub fn invalid_params(message: impl Into<String>, fields: Vec<(String, String)>) -> Self {
        let errors: Vec<Value> = fields
            .into_iter()
            .map(|(field, message)| json!({"field": field, "message": message}))
            .collect();
        Self::new(StatusCode::OK, -32602, message).with_data(json!({"errors": errors}))
    }

    pub fn header_mismatch(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, -32020, message)
    }

    pub fn unsupported_version(requested: Option<&str>) -> Self {
        let message = match requested {
            Some(v) => format!("unsupported protocol version `{v}`"),
            None => "no protocol version: send `MCP-Protocol-Version` (or `initialize` first)".to_string(),
        };
        Self::new(StatusCode::BAD_REQUEST, -32022, message)
            .with_data(json!({"supported": supported(), "requested": requested}))
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32603,
            "internal error; quote the x-request-id header when reporting it",
        )
    }

    /// The label `floq_mcp_requests_total` counts it under.
    pub fn outcome(&self) -> &'static str {
        match self.code {
            -32700 => "parse_error",
            -32600 => "invalid_request",
            -32601 => "method_not_found",
            -32602 => "invalid_params",
            -32020 => "header_mismatch",
            -32022 => "unsupported_version",
            _ => "internal_error",
        }
    }

    pub fn body(&self, id: Option<&Value>) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        let mut body = json!({"jsonrpc": "2.0", "error": error});
        if let Some(id) = id {
            body["id"] = id.clone();
        }
        body
    }
}

/// One message off the wire, checked for JSON-RPC shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request (it has an id) or a notification (it has none).
    Call {
        id: Option<Value>,
        method: String,
        /// Always an object (absent params read as `{}`).
        params: Map<String, Value>,
    },
    /// A response to a request floq never sent.
    Response,
}

/// Parses a POST body. Errors carry the request's id where one was readable.
pub fn parse(body: &[u8]) -> Result<Message, (Option<Value>, RpcError)> {
    let value: Value = serde_json::from_slice(body).map_err(|e| (None, RpcError::parse_error(e)))?;
    let Value::Object(mut object) = value else {
        let what = if value.is_array() {
            "batches are not supported: send one JSON-RPC message per POST"
        } else {
            "a JSON-RPC message is an object"
        };
        return Err((None, RpcError::invalid_request(what)));
    };
    let id = match object.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => return Err((None, RpcError::invalid_request("`id` must be a string or a number"))),
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((id, RpcError::invalid_request("`jsonrpc` must be \"2.0\"")));
    }
    let method = match object.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        None if id.is_some() && (object.contains_key("result") || object.contains_key("error")) => {
            return Ok(Message::Response);
        }
        _ => return Err((id, RpcError::invalid_request("`method` must be a non-empty string"))),
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err((
                id,
                RpcError::invalid_params(
                    "`params` must be an object",
                    vec![("params".into(), "must be an object".into())],
                ),
            ));
        }
    };
    Ok(Message::Call { id, method, params })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `=?base64?…?=` carries values a header cannot (the transport's sentinel encoding).
fn decoded(value: &str) -> Option<String> {
    match value.strip_prefix("=?base64?").and_then(|v| v.strip_suffix("?=")) {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(value.to_string()),
    }
}

/// Which revision serves this request, after the checks its era requires.
/// `initialize` is legacy by definition and is checked by its handler.
pub fn revision(headers: &HeaderMap, method: &str, params: &Map<String, Value>) -> Result<Revision, RpcError> {
    let in_header = header(headers, HEADER_VERSION);
    let meta = params.get("_meta").and_then(Value::as_object);
    let in_meta = meta.and_then(|m| m.get(META_VERSION));
    if method == "initialize" {
        return Ok(Revision::Legacy(LEGACY[0]));
    }
    if in_meta.is_none() && in_header != Some(MODERN) {
        // Legacy: the header names the revision `initialize` negotiated.
        return match in_header {
            Some(v) => LEGACY
                .iter()
                .find(|l| **l == v)
                .map(|l| Revision::Legacy(l))
                .ok_or_else(|| RpcError::unsupported_version(Some(v))),
            None => Err(RpcError::unsupported_version(None)),
        };
    }
    let Some(in_meta) = in_meta.and_then(Value::as_str) else {
        return Err(RpcError::header_mismatch(format!(
            "MCP-Protocol-Version says {MODERN} but `params._meta` has no string `{META_VERSION}`"
        )));
    };
    if in_meta != MODERN {
        return Err(RpcError::unsupported_version(Some(in_meta)));
    }
    if in_header != Some(in_meta) {
        return Err(RpcError::header_mismatch(format!(
            "the MCP-Protocol-Version header ({}) does not match `_meta.{META_VERSION}` ({in_meta})",
            in_header.unwrap_or("missing")
        )));
    }
    if header(headers, HEADER_METHOD) != Some(method) {
        return Err(RpcError::header_mismatch(format!(
            "the Mcp-Method header ({}) does not match the body's method ({method})",
            header(headers, HEADER_METHOD).unwrap_or("missing")
        )));
    }
    let named = match method {
        "tools/call" | "prompts/get" => params.get("name"),
        "resources/read" => params.get("uri"),
        _ => None,
    };
    if let Some(named) = named {
        let given = header(headers, HEADER_NAME).and_then(decoded);
        if named.as_str() != given.as_deref() {
            return Err(RpcError::header_mismatch(format!(
                "the Mcp-Name header ({}) does not match the body's name ({named})",
                given.as_deref().unwrap_or("missing")
            )));
        }
    }
    if !meta
        .and_then(|m| m.get(META_CAPABILITIES))
        .is_some_and(Value::is_object)
    {
        return Err(RpcError::invalid_params(
            "every request carries the client's capabilities",
            vec![(
                format!("_meta.{META_CAPABILITIES}"),
                "is required and must be an object".into(),
            )],
        ));
    }
    Ok(Revision::Modern)
}

/// The revision `initialize` answers: the one asked for if floq speaks it,
/// else the newest handshake revision (the client then decides).
pub fn negotiate(params: &Map<String, Value>) -> Result<&'static str, RpcError> {
    let asked = params.get("protocolVersion").and_then(Value::as_str).ok_or_else(|| {
        RpcError::invalid_params(
            "initialize names the client's protocol version",
            vec![("protocolVersion".into(), "is required and must be a string".into())],
        )
    })?;
    Ok(LEGACY.iter().find(|v| **v == asked).copied().unwrap_or(LEGACY[0]))
}

pub fn server_info() -> Value {
    json!({"name": "floq", "title": "floq flows", "version": env!("CARGO_PKG_VERSION")})
}

pub const INSTRUCTIONS: &str = "Each tool runs one floq flow (its deployed version) with the tool's arguments as the run's \
     input and answers the run's output. A call that outlives the server's deadline answers with the run id \
     (in `_meta`) while the run carries on.";

/// A result as its revision shapes it: modern ones say `resultType` and name the server.
pub fn result(revision: Revision, mut result: Map<String, Value>) -> Value {
    if revision.is_modern() {
        result.insert("resultType".into(), "complete".into());
        let meta = result.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(META_SERVER_INFO.into(), server_info());
        }
    }
    Value::Object(result)
}

pub fn response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// `tools/list` cursors: the last name of the page before, opaque to clients.
pub fn cursor(after: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

pub fn after(params: &Map<String, Value>) -> Result<Option<String>, RpcError> {
    let bad = || {
        RpcError::invalid_params(
            "the cursor is not one this server gave",
            vec![("cursor".into(), "must be a `nextCursor` from tools/list".into())],
        )
    };
    match params.get("cursor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(c)) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// Tool names as MCP recommends them: 1 to 128 of `A-Z a-z 0-9 _ - .`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Why `schema` cannot be a tool's input schema: not valid JSON Schema, not
/// an object schema at its root, or not compilable (a reference floq cannot
/// resolve: only references inside the schema are followed).
pub fn check_input_schema(schema: &Value) -> Result<(), String> {
    if !schema.is_object() {
        return Err("must be a JSON Schema object".into());
    }
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("must describe an object: `\"type\": \"object\"` at its root".into());
    }
    if let Some(dialect) = schema.get("$schema")
        && !dialect.as_str().is_some_and(known_dialect)
    {
        return Err("`$schema` must name a JSON Schema draft floq knows (draft-04 to 2020-12)".into());
    }
    jsonschema::meta::validate(schema).map_err(|e| format!("is not valid JSON Schema: {e}"))?;
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| format!("cannot be compiled: {e}"))
}

fn known_dialect(uri: &str) -> bool {
    let uri = uri.trim_end_matches('#');
    [
        "http://json-schema.org/draft-04/schema",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "https://json-schema.org/draft/2020-12/schema",
    ]
    .contains(&uri)
}

/// Every way `arguments` breaks `schema`: (the field, as `arguments.a.b`, and why).
pub fn argument_errors(schema: &Value, arguments: &Value) -> Result<Vec<(String, String)>, String> {
    use jsonschema::error::ValidationErrorKind;
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    Ok(validator
        .iter_errors(arguments)
        .map(|e| {
            let mut field = String::from("arguments");
            for part in e.instance_path().as_str().split('/').filter(|p| !p.is_empty()) {
                field.push('.');
                field.push_str(part);
            }
            // Name the argument itself for a missing or unknown one, not the object holding it.
            let named = match e.kind() {
                ValidationErrorKind::Required { property } => property.as_str().map(str::to_string),
                ValidationErrorKind::AdditionalProperties { unexpected } => unexpected.first().cloned(),
                _ => None,
            };
            if let Some(name) = named {
                field.push('.');
                field.push_str(&name);
            }
            (field, e.to_string())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn modern_meta() -> Value {
        json!({META_VERSION: MODERN, META_CAPABILITIES: {}})
    }

    #[test]
    fn malformed_messages_get_their_json_rpc_codes() {
        assert_eq!(parse(b"{nope").unwrap_err().1.code, -32700);
        assert_eq!(parse(b"[]").unwrap_err().1.code, -32600);
        assert_eq!(
            parse(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#).unwrap_err().1.code,
            -32600
        );
        assert_eq!(parse(br#"{"jsonrpc":"2.0","id":1}"#).unwrap_err().1.code, -32600);
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#)
                .unwrap_err()
                .1
                .code,
            -32600
        );
        let (id, e) = parse(br#"{"jsonrpc":"2.0","id":7,"method":"x","params":[1]}"#).unwrap_err();
        assert_eq!((id, e.code), (Some(json!(7)), -32602));
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#).unwrap(),
            Message::Response
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            Message::Call {
                id: None,
                method: "notifications/initialized".into(),
                params: Map::new()
            }
        );
    }

    #[test]
    fn modern_requests_must_match_their_headers() {
        let p = params(json!({"name": "weather", "_meta": modern_meta()}));
        let ok = headers(&[
            (HEADER_VERSION, MODERN),
            (HEADER_METHOD, "tools/call"),
            (HEADER_NAME, "weather"),
        ]);
        assert_eq!(revision(&ok, "tools/call", &p), Ok(Revision::Modern));
        let encoded = headers(&[
            (HEADER_VERSION, MODERN),
            (HEADER_METHOD, "tools/call"),
            (HEADER_NAME, "=?base64?d2VhdGhlcg==?="),
        ]);
        assert_eq!(revision(&encoded, "tools/call", &p), Ok(Revision::Modern));
        for bad in [
            headers(&[(HEADER_VERSION, MODERN), (HEADER_METHOD, "tools/call")]),
            headers(&[
                (HEADER_VERSION, MODERN),
                (HEADER_METHOD, "tools/list"),
                (HEADER_NAME, "weather"),
            ]),
            headers(&[(HEADER_METHOD, "tools/call"), (HEADER_NAME, "weather")]),
        ] {
            assert_eq!(revision(&bad, "tools/call", &p).unwrap_err().code, -32020);
        }
        let future = params(json!({"_meta": {META_VERSION: "2099-01-01", META_CAPABILITIES: {}}}));
        let e = revision(&ok, "tools/list", &future).unwrap_err();
        assert_eq!((e.code, e.status), (-32022, StatusCode::BAD_REQUEST));
        let no_caps = params(json!({"_meta": {META_VERSION: MODERN}}));
        let h = headers(&[(HEADER_VERSION, MODERN), (HEADER_METHOD, "tools/list")]);
        assert_eq!(revision(&h, "tools/list", &no_caps).unwrap_err().code, -32602);
    }

    #[test]
    fn legacy_requests_name_a_negotiated_revision() {
        let none = Map::new();
        assert_eq!(
            revision(&headers(&[(HEADER_VERSION, "2025-06-18")]), "tools/list", &none),
            Ok(Revision::Legacy("2025-06-18"))
        );
        assert_eq!(
            revision(&headers(&[(HEADER_VERSION, "2024-11-05")]), "tools/list", &none)
                .unwrap_err()
                .code,
            -32022
        );
        assert_eq!(
            revision(&HeaderMap::new(), "tools/list", &none).unwrap_err().code,
            -32022
        );
        assert_eq!(
            negotiate(&params(json!({"protocolVersion": "2025-06-18"}))),
            Ok("2025-06-18")
        );
        assert_eq!(
            negotiate(&params(json!({"protocolVersion": "2026-07-28"}))),
            Ok("2025-11-25")
        );
        assert_eq!(negotiate(&none).unwrap_err().code, -32602);
    }

    #[test]
    fn input_schemas_are_object_schemas_and_arguments_name_their_fields() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city"], "additionalProperties": false});
        assert_eq!(check_input_schema(&schema), Ok(()));
        assert!(check_input_schema(&json!({"type": "string"})).is_err());
        assert!(check_input_schema(&json!({"type": "object", "properties": {"a": {"type": "nope"}}})).is_err());
        assert!(check_input_schema(&json!({"type": "object", "$schema": "https://example.com/mine"})).is_err());
        assert!(check_input_schema(&json!({"type": "object", "$ref": "https://example.com/s.json"})).is_err());
        let errors = argument_errors(&schema, &json!({"days": "x", "extra": 1})).unwrap();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert!(fields.contains(&"arguments.city"), "{errors:?}");
        assert!(fields.contains(&"arguments.days"), "{errors:?}");
        assert!(fields.contains(&"arguments.extra"), "{errors:?}");
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let p = params(json!({"cursor": cursor("tool.b")}));
        assert_eq!(after(&p), Ok(Some("tool.b".into())));
        assert_eq!(after(&params(json!({"cursor": "%%"}))).unwrap_err().code, -32602);
        assert!(valid_tool_name("get_weather.v2-x") && !valid_tool_name("a b") && !valid_tool_name(""));
    }
}
