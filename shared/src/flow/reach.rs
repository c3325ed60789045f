//! What a flow definition reaches beyond itself: credentials, other flows
//! (`sub_flow`) and secret KV values (`{"$secret": "key"}`). The set is fixed
//! by the definition (none of these may be a template), checked against the
//! author's grants when the flow is saved and the deployer's when it is
//! deployed, and checked again against the deployer when it runs.

use serde_json::Value;

use super::catalog;
use super::kind::NodeKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Credential,
    SubFlow,
    Secret,
}

impl Target {
    /// The grant entity type that governs it.
    pub fn entity_type(self) -> &'static str {
        match self {
            Target::Credential => "integration",
            Target::SubFlow => "flow",
            Target::Secret => "secret",
        }
    }
}

/// One reference, with the JSON path of the param that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub target: Target,
    pub field: String,
    /// A credential or flow id, or a KV key.
    pub name: String,
}

/// A reference the definition may not hold at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misuse {
    pub field: String,
    pub message: &'static str,
}

/// A `{"$secret": key}` object's key.
pub fn secret_ref(v: &Value) -> Option<&str> {
    match v {
        Value::Object(map) if map.len() == 1 => map.get("$secret").and_then(Value::as_str),
        _ => None,
    }
}

/// Every reference in `definition` (loop bodies included), and every misuse.
pub fn references(definition: &Value) -> (Vec<Reference>, Vec<Misuse>) {
    let mut refs = Vec::new();
    let mut misuse = Vec::new();
    walk(definition, "definition", &mut refs, &mut misuse);
    (refs, misuse)
}

fn walk(def: &Value, at: &str, refs: &mut Vec<Reference>, misuse: &mut Vec<Misuse>) {
    for (i, node) in def["nodes"].as_array().into_iter().flatten().enumerate() {
        let here = format!("{at}.nodes[{i}].params");
        let params = &node["params"];
        let kind = node["type"].as_str().unwrap_or_default();
        if let Some(id) = params["credential_id"].as_str() {
            refs.push(Reference {
                target: Target::Credential,
                field: format!("{here}.credential_id"),
                name: id.to_string(),
            });
        }
        if kind == NodeKind::SUB_FLOW
            && let Some(id) = params["flow_id"].as_str()
        {
            refs.push(Reference {
                target: Target::SubFlow,
                field: format!("{here}.flow_id"),
                name: id.to_string(),
            });
        }
        let allowed = catalog::spec(kind).map_or(&[][..], |s| s.secret_params);
        if kind == NodeKind::LOOP {
            walk(&params["flow"], &format!("{here}.flow"), refs, misuse);
        }
        for (name, value) in params.as_object().into_iter().flatten() {
            if kind == NodeKind::LOOP && name == "flow" {
                continue;
            }
            let at = format!("{here}.{name}");
            let mut found = Vec::new();
            secret_paths_in(value, &format!("/{}", pointer_escape(name)), &at, &mut found);
            for (_, field, key) in found {
                if !allowed.contains(&name.as_str()) {
                    misuse.push(Misuse {
                        field,
                        message: "a secret may only be used where a node sends it: http_request headers, query or body, postgres params, and the params a plugin node type takes secrets in (docs/plugins.md)",
                    });
                } else if key.contains("{{") {
                    misuse.push(Misuse {
                        field: format!("{field}.$secret"),
                        message: "which secret a flow reads is fixed: no templates in `$secret`",
                    });
                } else if crate::kv::KvKey::parse(&key).is_none() {
                    misuse.push(Misuse {
                        field: format!("{field}.$secret"),
                        message: crate::kv::KvKey::RULE,
                    });
                } else {
                    refs.push(Reference {
                        target: Target::Secret,
                        field: format!("{field}.$secret"),
                        name: key,
                    });
                }
            }
        }
    }
}

fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Every `{"$secret": key}` under `v`: (JSON pointer, display path, key).
fn secret_paths_in(v: &Value, pointer: &str, at: &str, out: &mut Vec<(String, String, String)>) {
    if let Some(key) = secret_ref(v) {
        out.push((pointer.to_string(), at.to_string(), key.to_string()));
        return;
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                secret_paths_in(item, &format!("{pointer}/{i}"), &format!("{at}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                secret_paths_in(
                    item,
                    &format!("{pointer}/{}", pointer_escape(k)),
                    &format!("{at}.{k}"),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Where the worker substitutes secrets in one node's evaluated params: the
/// JSON pointers of the definition's own `{"$secret": key}` objects, in the
/// params where `kind` may send them. Evaluated params are never searched, so
/// data (a webhook body, a KV value) can never name a secret.
pub fn secret_paths(kind: NodeKind, params: &Value) -> Vec<(String, String)> {
    let allowed = catalog::spec(kind.as_str()).map_or(&[][..], |s| s.secret_params);
    let mut out = Vec::new();
    for name in allowed {
        if let Some(value) = params.get(*name) {
            let mut found = Vec::new();
            secret_paths_in(value, &format!("/{}", pointer_escape(name)), name, &mut found);
            out.extend(
                found
                    .into_iter()
                    .filter(|(_, _, key)| !key.contains("{{"))
                    .map(|(pointer, _, key)| (pointer, key)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_found_in_nodes_and_loop_bodies() {
        let def = json!({"nodes": [
            {"id": "a", "type": "http_request", "params": {"url": "https://x", "credential_id": "c1",
                "headers": {"X-Key": {"$secret": "api_key"}}}},
            {"id": "b", "type": "sub_flow", "params": {"flow_id": "f1"}},
            {"id": "l", "type": "loop", "params": {"items": "{{ [1] }}", "flow": {"nodes": [
                {"id": "c", "type": "postgres", "params": {"credential_id": "c2", "query": "select 1",
                    "params": [{"$secret": "pw"}]}}]}}}
        ]});
        let (refs, misuse) = references(&def);
        assert!(misuse.is_empty(), "{misuse:?}");
        let names: Vec<(Target, &str, &str)> = refs
            .iter()
            .map(|r| (r.target, r.field.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                (Target::Credential, "definition.nodes[0].params.credential_id", "c1"),
                (
                    Target::Secret,
                    "definition.nodes[0].params.headers.X-Key.$secret",
                    "api_key"
                ),
                (Target::SubFlow, "definition.nodes[1].params.flow_id", "f1"),
                (
                    Target::Credential,
                    "definition.nodes[2].params.flow.nodes[0].params.credential_id",
                    "c2"
                ),
                (
                    Target::Secret,
                    "definition.nodes[2].params.flow.nodes[0].params.params[0].$secret",
                    "pw"
                ),
            ]
        );
    }

    #[test]
    fn secrets_go_only_where_a_node_sends_them_and_are_never_chosen_by_templates() {
        let def = json!({"nodes": [
            {"id": "a", "type": "code", "params": {"code": {"$secret": "js"}}},
            {"id": "b", "type": "set", "params": {"values": {"x": {"$secret": "k"}}}},
            {"id": "c", "type": "loop", "params": {"items": [{"$secret": "k"}], "flow": {"nodes": []}}},
            {"id": "d", "type": "http_request", "params": {"url": "https://x", "headers": {"a": {"$secret": "{{ $input.k }}"}}}}
        ]});
        let (refs, misuse) = references(&def);
        assert!(refs.is_empty(), "{refs:?}");
        let fields: Vec<&str> = misuse.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "definition.nodes[0].params.code",
                "definition.nodes[1].params.values.x",
                "definition.nodes[2].params.items[0]",
                "definition.nodes[3].params.headers.a.$secret",
            ]
        );
    }

    #[test]
    fn the_worker_substitutes_only_at_the_definitions_own_references() {
        let params = json!({"url": "https://x", "headers": {"a/b": {"$secret": "k1"}}, "body": [1, {"$secret": "k2"}],
                            "query": {"q": "{{ $input.q }}"}});
        assert_eq!(
            secret_paths(NodeKind::HTTP_REQUEST, &params),
            vec![
                ("/headers/a~1b".to_string(), "k1".to_string()),
                ("/body/1".to_string(), "k2".to_string())
            ]
        );
        assert!(secret_paths(NodeKind::SET, &json!({"values": {"x": {"$secret": "k"}}})).is_empty());
    }
}
