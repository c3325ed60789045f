//! The node types this build knows: name, what they do, the JSON Schema of
//! their params, and their output ports. The API validates params against
//! these schemas and serves them at `GET /api/v1/node-types`; the worker's
//! registry maps each name to its implementation (`worker/src/nodes/`).
//!
//! Any string param may instead hold a `{{ }}` template, so every schema
//! below accepts a templated string wherever it names a concrete type
//! ([`tpl`]); the value is checked again by the node once evaluated.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use jsonschema::error::ValidationErrorKind;
use serde::Serialize;
use serde_json::{Value, json};

use super::kind::NodeKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ports {
    /// One output: edges carry no port.
    Single,
    /// `true` / `false`.
    Boolean,
    /// One port per entry of `params.cases`, plus `default`.
    Cases,
}

#[derive(Debug, Serialize)]
pub struct NodeSpec {
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// `kind`'s name, for callers that want text (metric labels, messages).
    #[serde(skip)]
    pub name: &'static str,
    pub summary: &'static str,
    pub params_schema: Value,
    pub ports: Ports,
    /// Params taken literally, never as templates (code, a loop's sub-flow).
    #[serde(skip)]
    pub raw_params: &'static [&'static str],
    /// Gets the template scope to run user code with.
    #[serde(skip)]
    pub runs_scripts: bool,
    /// Params where `{"$secret": "key"}` may appear: only where the node sends
    /// it to its destination, so a secret never lands in a branch, a loop item,
    /// a KV value, a sub-flow's input or a script.
    #[serde(skip)]
    pub secret_params: &'static [&'static str],
}

/// A schema, or a string holding a template. Written as if/then/else rather
/// than anyOf so a wrong value is reported against the typed schema.
fn tpl(schema: Value) -> Value {
    json!({"if": {"type": "string", "pattern": "\\{\\{"}, "then": true, "else": schema})
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn kv_key() -> Value {
    tpl(json!({"type": "string", "pattern": crate::kv::KvKey::PATTERN}))
}

/// An entity id (credential, sub-flow). A credential reference: the worker decrypts it for the node when it
/// starts. Never a template: which credentials a flow uses is fixed (and
/// checked against its author's grants) when it is saved.
fn credential() -> Value {
    json!({"type": "string", "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"})
}

/// Params that need either `inline` (a URI) or `credential_id`, not both.
fn with_credential(properties: Value, required: &[&str], inline: &str) -> Value {
    let mut schema = object(properties, required);
    schema["oneOf"] = json!([{"required": [inline]}, {"required": ["credential_id"]}]);
    schema
}

fn specs() -> Vec<NodeSpec> {
    let ms = |max: u64| tpl(json!({"type": "integer", "minimum": 0, "maximum": max}));
    vec![
        NodeSpec {
            kind: NodeKind::SET,
            name: NodeKind::SET.as_str(),
            summary: "Outputs `values`, with templates evaluated.",
            params_schema: object(json!({"values": tpl(json!({"type": "object"}))}), &["values"]),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::IF,
            name: NodeKind::IF.as_str(),
            summary: "Routes to port `true` or `false` by the truthiness of `condition`.",
            params_schema: object(json!({"condition": {}}), &["condition"]),
            ports: Ports::Boolean,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::SWITCH,
            name: NodeKind::SWITCH.as_str(),
            summary: "Routes to the port of the first case equal to `value`, else `default`.",
            params_schema: object(
                json!({
                    "value": {},
                    "cases": {"type": "array", "minItems": 1, "maxItems": 100,
                              "items": {"type": ["string", "number", "boolean"]}}
                }),
                &["value", "cases"],
            ),
            ports: Ports::Cases,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::MERGE,
            name: NodeKind::MERGE.as_str(),
            summary: "Waits for its parents and outputs their outputs by node id.",
            params_schema: object(json!({}), &[]),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::DELAY,
            name: NodeKind::DELAY.as_str(),
            summary: "Waits `ms` milliseconds (bounded by FLOQ_DELAY_MAX_MS).",
            // The ceiling is the operator's (FLOQ_DELAY_MAX_MS), checked when the node runs.
            params_schema: object(json!({"ms": tpl(json!({"type": "integer", "minimum": 0}))}), &["ms"]),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::CODE,
            name: NodeKind::CODE.as_str(),
            summary: "Runs a JavaScript function body in the sandbox; its `return` value is the output.",
            params_schema: object(
                json!({
                    "code": {"type": "string", "minLength": 1, "maxLength": 100_000},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600_000}
                }),
                &["code"],
            ),
            ports: Ports::Single,
            raw_params: &["code"],
            runs_scripts: true,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::LOOP,
            name: NodeKind::LOOP.as_str(),
            summary: "Runs the sub-flow `flow` once per item of `items` (as its `$input`), `concurrency` at a time; outputs the results in order.",
            params_schema: object(
                json!({
                    "items": tpl(json!({"type": "array"})),
                    "flow": {"type": "object", "required": ["nodes"]},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": 64},
                    "max_items": {"type": "integer", "minimum": 1, "maximum": 10_000}
                }),
                &["items", "flow"],
            ),
            ports: Ports::Single,
            raw_params: &["flow"],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::HTTP_REQUEST,
            name: NodeKind::HTTP_REQUEST.as_str(),
            summary: "One HTTP(S) call; non-2xx statuses are outputs, transport failures fail the node.",
            params_schema: object(
                json!({
                    "method": tpl(json!({"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
                                                 "get", "post", "put", "patch", "delete", "head", "options"]})),
                    "url": {"type": "string", "minLength": 1},
                    "query": tpl(json!({"type": "object"})),
                    "headers": headers_schema(),
                    "body": {},
                    "response": {"enum": ["auto", "json", "text", "binary"]},
                    "timeout_ms": ms(3_600_000),
                    "max_redirects": {"type": "integer", "minimum": 0, "maximum": 10},
                    // The header that carries the node's idempotency key (never a template: the key is the point).
                    "idempotency_header": {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"},
                    "credential_id": credential()
                }),
                &["method", "url"],
            ),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &["headers", "query", "body"],
        },
        NodeSpec {
            kind: NodeKind::SUB_FLOW,
            name: NodeKind::SUB_FLOW.as_str(),
            summary: "Runs another flow of this company (the version deployed when the run was accepted) with `input` and outputs its output.",
            params_schema: object(
                json!({
                    // Never a template: which flows a flow may run is checked against grants.
                    "flow_id": credential(),
                    "input": {}
                }),
                &["flow_id"],
            ),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::POSTGRES,
            name: NodeKind::POSTGRES.as_str(),
            summary: "Runs one parameterized SQL statement ($1, $2, … bound from `params`) and outputs its rows; the database is a `postgres` credential (never an inline URI, so who may reach a database is a grant).",
            params_schema: object(
                json!({
                    "credential_id": credential(),
                    "query": {"type": "string", "minLength": 1, "maxLength": 100_000},
                    "params": tpl(json!({"type": "array", "maxItems": 100})),
                    "timeout_ms": ms(600_000),
                    "max_rows": {"type": "integer", "minimum": 1, "maximum": 100_000}
                }),
                &["credential_id", "query"],
            ),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &["params"],
        },
        NodeSpec {
            kind: NodeKind::SMTP_SEND,
            name: NodeKind::SMTP_SEND.as_str(),
            summary: "Sends one e-mail through the SMTP server of `smtp_uri` (smtp://, smtps:// or smtp+starttls://) or of an `smtp` credential.",
            params_schema: with_credential(
                json!({
                    "smtp_uri": {"type": "string", "pattern": "^smtps?(\\+starttls)?://"},
                    "credential_id": credential(),
                    "from": {"type": "string", "minLength": 3},
                    "to": tpl(json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 100}]})),
                    "subject": {"type": "string"},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
                    "timeout_ms": ms(300_000)
                }),
                &["from", "to", "subject"],
                "smtp_uri",
            ),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::KV_GET,
            name: NodeKind::KV_GET.as_str(),
            summary: "Reads a plain KV value of this company: `{key, found, value}` (secret values are refused).",
            params_schema: object(json!({"key": kv_key()}), &["key"]),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::KV_SET,
            name: NodeKind::KV_SET.as_str(),
            summary: "Writes a plain KV value of this company (secrets are written through the API only).",
            params_schema: object(json!({"key": kv_key(), "value": {}}), &["key", "value"]),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
        NodeSpec {
            kind: NodeKind::RESPOND,
            name: NodeKind::RESPOND.as_str(),
            summary: "Shapes the reply of a synchronous webhook: `status`, `headers`, `body`.",
            params_schema: object(
                json!({
                    "status": tpl(json!({"type": "integer", "minimum": 200, "maximum": 599})),
                    "headers": headers_schema(),
                    "body": {}
                }),
                &[],
            ),
            ports: Ports::Single,
            raw_params: &[],
            runs_scripts: false,
            secret_params: &[],
        },
    ]
}

fn headers_schema() -> Value {
    tpl(json!({"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}))
}

static CATALOG: LazyLock<Vec<NodeSpec>> = LazyLock::new(specs);

static VALIDATORS: LazyLock<HashMap<NodeKind, jsonschema::Validator>> = LazyLock::new(|| {
    CATALOG
        .iter()
        .map(|spec| {
            let validator = jsonschema::validator_for(&spec.params_schema).expect("node schemas are valid JSON Schema");
            (spec.kind, validator)
        })
        .collect()
});

pub fn all() -> &'static [NodeSpec] {
    &CATALOG
}

/// A node type a plugin adds: its spec and compiled schema, registered once
/// per process (several services in one process share it) and never freed.
struct Registered {
    spec: NodeSpec,
    validator: jsonschema::Validator,
}

static REGISTERED: LazyLock<Mutex<HashMap<&'static str, &'static Registered>>> = LazyLock::new(Mutex::default);

/// Adds a plugin's node type to the process's node table; registering the
/// same definition again returns the first registration. Refused: a
/// built-in name, an invalid schema, or a name another definition took.
pub fn register(spec: NodeSpec) -> Result<&'static NodeSpec, String> {
    let name = spec.kind.as_str();
    if CATALOG.iter().any(|s| s.kind == spec.kind) {
        return Err(format!("node type `{name}` is built in"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || name.is_empty()
    {
        return Err(format!("node type `{name}`: names use only a-z, 0-9 and `_`"));
    }
    let mut registered = REGISTERED.lock().expect("node table lock");
    if let Some(existing) = registered.get(name) {
        return if existing.spec.params_schema == spec.params_schema && existing.spec.summary == spec.summary {
            Ok(&existing.spec)
        } else {
            Err(format!(
                "node type `{name}` is registered twice with different definitions"
            ))
        };
    }
    let validator = jsonschema::validator_for(&spec.params_schema)
        .map_err(|e| format!("node type `{name}`: its params schema is invalid: {e}"))?;
    let leaked: &'static Registered = Box::leak(Box::new(Registered { spec, validator }));
    registered.insert(name, leaked);
    Ok(&leaked.spec)
}

/// The node types one service knows: the built-ins and the ones its enabled
/// plugins add. Validation and the worker look kinds up here, so a type
/// another service in the same process registered stays unknown to this one.
#[derive(Clone, Default)]
pub struct Table {
    extra: Arc<[&'static NodeSpec]>,
}

impl Table {
    pub fn built_in() -> Self {
        Self::default()
    }

    /// The built-ins plus `extra` (already [`register`]ed).
    pub fn with(extra: Vec<&'static NodeSpec>) -> Self {
        Self { extra: extra.into() }
    }

    pub fn spec(&self, name: &str) -> Option<&'static NodeSpec> {
        spec(name).or_else(|| self.extra.iter().copied().find(|s| s.kind == name))
    }

    /// Every type, built-ins first, in the order served at `GET /api/v1/node-types`.
    pub fn all(&self) -> Vec<&'static NodeSpec> {
        CATALOG.iter().chain(self.extra.iter().copied()).collect()
    }

    pub fn extra(&self) -> &[&'static NodeSpec] {
        &self.extra
    }
}

/// The spec of a built-in kind a definition's `"type"` names, or of a
/// registered plugin type (the reach analysis needs no more; validation and
/// execution ask a service's [`Table`]).
pub fn spec(name: &str) -> Option<&'static NodeSpec> {
    CATALOG
        .iter()
        .find(|s| s.kind == name)
        .or_else(|| REGISTERED.lock().expect("node table lock").get(name).map(|r| &r.spec))
}

/// Every way `params` breaks the node's schema: (path inside params, message).
pub fn check_params(kind: NodeKind, params: &Value) -> Vec<(String, String)> {
    let validator = match VALIDATORS.get(&kind) {
        Some(v) => v,
        None => match REGISTERED.lock().expect("node table lock").get(kind.as_str()) {
            Some(r) => &r.validator,
            None => return vec![],
        },
    };
    let params = secret_refs_as_text(params);
    validator
        .iter_errors(&params)
        .map(|e| {
            let mut path = e.instance_path().as_str().trim_start_matches('/').replace('/', ".");
            // Name the param itself for a missing or unknown one, not the object holding it.
            let param = match e.kind() {
                ValidationErrorKind::Required { property } => property.as_str().map(str::to_string),
                ValidationErrorKind::AdditionalProperties { unexpected } => unexpected.first().cloned(),
                _ => None,
            };
            if let Some(param) = param {
                path = if path.is_empty() {
                    param
                } else {
                    format!("{path}.{param}")
                };
            }
            (path, e.to_string())
        })
        .collect()
}

/// A secret KV reference (`{"$secret": "key"}`) stands wherever text may: the
/// worker replaces it with the secret when the node starts.
fn secret_refs_as_text(v: &Value) -> Value {
    match v {
        Value::Object(map) if map.len() == 1 && map.get("$secret").is_some_and(Value::is_string) => {
            Value::String("secret".into())
        }
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), secret_refs_as_text(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(secret_refs_as_text).collect()),
        other => other.clone(),
    }
}

/// The label a switch case's edge carries: strings as they are, other JSON as text.
pub fn switch_port(case: &Value) -> String {
    match case {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Output ports of a node; empty for nodes with a single output.
pub fn ports(spec: &NodeSpec, params: &Value) -> Vec<String> {
    match spec.ports {
        Ports::Single => vec![],
        Ports::Boolean => vec!["true".into(), "false".into()],
        Ports::Cases => {
            let mut ports: Vec<String> = params
                .get("cases")
                .and_then(Value::as_array)
                .map(|cases| cases.iter().map(switch_port).collect())
                .unwrap_or_default();
            ports.push("default".into());
            ports
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles_and_names_are_unique() {
        assert_eq!(VALIDATORS.len(), CATALOG.len());
    }

    #[test]
    fn the_catalog_lists_exactly_the_built_in_kinds_in_their_order() {
        let kinds: Vec<NodeKind> = CATALOG.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, NodeKind::BUILT_IN);
        for s in CATALOG.iter() {
            assert_eq!(s.name, s.kind.as_str());
            assert_eq!(spec(s.kind.as_str()).map(|found| found.kind), Some(s.kind));
        }
    }

    #[test]
    fn templates_pass_where_a_typed_value_is_expected() {
        assert!(check_params(NodeKind::DELAY, &json!({"ms": "{{ $input.wait }}"})).is_empty());
        assert!(check_params(NodeKind::DELAY, &json!({"ms": 10})).is_empty());
        let errors = check_params(NodeKind::DELAY, &json!({"ms": "soon"}));
        assert_eq!(errors[0].0, "ms");
        let errors = check_params(
            NodeKind::HTTP_REQUEST,
            &json!({"method": "GET", "url": "http://x", "bogus": 1}),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
