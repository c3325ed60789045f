//! What a flow definition reaches beyond itself: credentials, other flows
//! (`sub_flow`) and secret KV values (`{"$secret": "key"}`). The set is fixed
//! by the definition (none of these may be a template), checked against the
//! author's grants when the flow is saved and the deployer's when it is
//! deployed, and checked again against the deployer when it runs.

use serde_json::Value;

use super::catalog;

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
        if kind == "sub_flow"
            && let Some(id) = params["flow_id"].as_str()
        {
            refs.push(Reference {
                target: Target::SubFlow,
                field: format!("{here}.flow_id"),
                name: id.to_string(),
            });
        }
        let runs_scripts = catalog::spec(kind).is_some_and(|s| s.runs_scripts);
        if kind == "loop" {
            walk(&params["flow"], &format!("{here}.flow"), refs, misuse);
            let mut rest = params.clone();
            if let Some(map) = rest.as_object_mut() {
                map.remove("flow");
            }
            secrets(&rest, &here, runs_scripts, refs, misuse);
        } else {
            secrets(params, &here, runs_scripts, refs, misuse);
        }
    }
}

fn secrets(v: &Value, at: &str, runs_scripts: bool, refs: &mut Vec<Reference>, misuse: &mut Vec<Misuse>) {
    if let Some(key) = secret_ref(v) {
        if runs_scripts {
            misuse.push(Misuse {
                field: at.to_string(),
                message: "a secret can never be handed to a node that runs scripts",
            });
        } else if key.contains("{{") {
            misuse.push(Misuse {
                field: format!("{at}.$secret"),
                message: "which secret a flow reads is fixed: no templates in `$secret`",
            });
        } else {
            refs.push(Reference {
                target: Target::Secret,
                field: format!("{at}.$secret"),
                name: key.to_string(),
            });
        }
        return;
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                secrets(item, &format!("{at}[{i}]"), runs_scripts, refs, misuse);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                secrets(item, &format!("{at}.{k}"), runs_scripts, refs, misuse);
            }
        }
        _ => {}
    }
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
    fn secrets_cannot_feed_scripts_or_be_chosen_by_templates() {
        let def = json!({"nodes": [
            {"id": "a", "type": "code", "params": {"code": {"$secret": "js"}}},
            {"id": "b", "type": "set", "params": {"values": {"x": {"$secret": "{{ $input.k }}"}}}}
        ]});
        let (refs, misuse) = references(&def);
        assert!(refs.is_empty());
        assert_eq!(misuse.len(), 2);
        assert_eq!(misuse[0].field, "definition.nodes[0].params.code");
    }
}
