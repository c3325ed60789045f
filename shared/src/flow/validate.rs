//! Flow-definition validation (design §4): known node types, required params,
//! unique ids, edges between existing nodes on valid ports, templates that
//! parse, and no cycles. Every error names the field and, where there is one,
//! the node.

use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};

use super::definition::{FlowDefinition, NodeKind, switch_port};
use super::template::Compiled;

pub const MAX_NODES: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, node: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            node: node.map(str::to_string),
            message: message.into(),
        }
    }
}

/// Validates a definition as received; on success returns it typed.
pub fn validate(raw: &Value) -> Result<FlowDefinition, Vec<FieldError>> {
    let def: FlowDefinition =
        serde_json::from_value(raw.clone()).map_err(|e| vec![FieldError::new("definition", None, e.to_string())])?;
    let mut errors = Vec::new();

    if def.nodes.is_empty() {
        errors.push(FieldError::new(
            "definition.nodes",
            None,
            "a flow needs at least one node",
        ));
    }
    if def.nodes.len() > MAX_NODES {
        errors.push(FieldError::new(
            "definition.nodes",
            None,
            format!("a flow may have at most {MAX_NODES} nodes"),
        ));
    }

    let mut kinds: HashMap<&str, NodeKind> = HashMap::new();
    let mut seen = HashSet::new();
    for (i, node) in def.nodes.iter().enumerate() {
        let at = format!("definition.nodes[{i}]");
        let id = Some(node.id.as_str());
        if !valid_id(&node.id) {
            errors.push(FieldError::new(
                format!("{at}.id"),
                id,
                "node ids are 1-64 characters of letters, digits, '_' and '-'",
            ));
        }
        if !seen.insert(node.id.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.id"),
                id,
                format!("duplicate node id `{}`", node.id),
            ));
        }
        let Some(kind) = NodeKind::parse(&node.kind) else {
            errors.push(FieldError::new(
                format!("{at}.type"),
                id,
                format!("unknown node type `{}`", node.kind),
            ));
            continue;
        };
        kinds.insert(node.id.as_str(), kind);
        let Some(params) = node.params.as_object() else {
            errors.push(FieldError::new(format!("{at}.params"), id, "params must be an object"));
            continue;
        };
        for required in kind.required_params() {
            if !params.contains_key(*required) {
                errors.push(FieldError::new(
                    format!("{at}.params.{required}"),
                    id,
                    format!("`{}` requires param `{required}`", kind.name()),
                ));
            }
        }
        for key in params.keys() {
            if !kind.required_params().contains(&key.as_str()) && !kind.optional_params().contains(&key.as_str()) {
                errors.push(FieldError::new(
                    format!("{at}.params.{key}"),
                    id,
                    format!("`{}` has no param `{key}`", kind.name()),
                ));
            }
        }
        check_param_shapes(kind, params, &at, id, &mut errors);
        match Compiled::compile(&node.params) {
            Ok(compiled) => {
                for r in compiled.node_refs() {
                    if !def.nodes.iter().any(|n| n.id == r) {
                        errors.push(FieldError::new(
                            format!("{at}.params"),
                            id,
                            format!("template refers to unknown node `{r}`"),
                        ));
                    }
                }
            }
            Err((path, e)) => errors.push(FieldError::new(format!("{at}.params.{path}"), id, e.to_string())),
        }
    }

    for (i, edge) in def.edges.iter().enumerate() {
        let at = format!("definition.edges[{i}]");
        for (end, id) in [("from", &edge.from), ("to", &edge.to)] {
            if !seen.contains(id.as_str()) {
                errors.push(FieldError::new(
                    format!("{at}.{end}"),
                    Some(id),
                    format!("edge refers to unknown node `{id}`"),
                ));
            }
        }
        if let Some(kind) = kinds.get(edge.from.as_str()) {
            let node = def.nodes.iter().find(|n| n.id == edge.from);
            let ports = node.map(|n| ports(*kind, &n.params)).unwrap_or_default();
            match (&edge.port, ports.is_empty()) {
                (Some(p), true) => errors.push(FieldError::new(
                    format!("{at}.port"),
                    Some(&edge.from),
                    format!("`{}` has no output port `{p}`", kind.name()),
                )),
                (None, false) => errors.push(FieldError::new(
                    format!("{at}.port"),
                    Some(&edge.from),
                    format!("edges from `{}` need a port: one of {}", kind.name(), ports.join(", ")),
                )),
                (Some(p), false) if !ports.contains(p) => errors.push(FieldError::new(
                    format!("{at}.port"),
                    Some(&edge.from),
                    format!("unknown port `{p}`: expected one of {}", ports.join(", ")),
                )),
                _ => {}
            }
        }
    }

    if errors.is_empty()
        && let Some(node) = find_cycle(&def)
    {
        errors.push(FieldError::new(
            "definition.edges",
            Some(&node),
            format!("the graph has a cycle through `{node}`"),
        ));
    }

    if errors.is_empty() { Ok(def) } else { Err(errors) }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Output ports of a branching node; empty for nodes with a single output.
pub fn ports(kind: NodeKind, params: &Value) -> Vec<String> {
    match kind {
        NodeKind::If => vec!["true".into(), "false".into()],
        NodeKind::Switch => {
            let mut ports: Vec<String> = params
                .get("cases")
                .and_then(Value::as_array)
                .map(|cases| cases.iter().map(switch_port).collect())
                .unwrap_or_default();
            ports.push("default".into());
            ports
        }
        _ => vec![],
    }
}

fn check_param_shapes(
    kind: NodeKind,
    params: &serde_json::Map<String, Value>,
    at: &str,
    id: Option<&str>,
    errors: &mut Vec<FieldError>,
) {
    let mut bad = |param: &str, message: &str| {
        errors.push(FieldError::new(format!("{at}.params.{param}"), id, message));
    };
    let is_template = |v: &Value| v.as_str().is_some_and(|s| s.contains("{{"));
    match kind {
        NodeKind::Set => {
            if params.get("values").is_some_and(|v| !v.is_object()) {
                bad("values", "must be an object");
            }
        }
        NodeKind::Switch => match params.get("cases") {
            Some(Value::Array(cases)) => {
                let labels: HashSet<String> = cases.iter().map(switch_port).collect();
                if labels.len() != cases.len() || labels.contains("default") {
                    bad("cases", "cases must be unique and may not be \"default\"");
                }
            }
            Some(_) => bad("cases", "must be an array"),
            None => {}
        },
        NodeKind::Delay => {
            if let Some(ms) = params.get("ms")
                && !ms.is_u64()
                && !is_template(ms)
            {
                bad("ms", "must be a non-negative integer of milliseconds");
            }
        }
        NodeKind::HttpRequest => {
            if let Some(m) = params.get("method") {
                let ok = m.as_str().is_some_and(|s| {
                    s.contains("{{")
                        || ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
                            .contains(&s.to_ascii_uppercase().as_str())
                });
                if !ok {
                    bad("method", "must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS");
                }
            }
            if params.get("url").is_some_and(|u| !u.is_string()) {
                bad("url", "must be a string");
            }
            if params.get("headers").is_some_and(|h| !h.is_object()) {
                bad("headers", "must be an object of header names to values");
            }
            if params.get("query").is_some_and(|h| !h.is_object()) {
                bad("query", "must be an object of names to values");
            }
            if let Some(t) = params.get("timeout_ms")
                && !t.is_u64()
            {
                bad("timeout_ms", "must be a positive integer of milliseconds");
            }
        }
        NodeKind::If | NodeKind::Merge => {}
    }
}

/// Kahn's algorithm; returns a node on a cycle if there is one.
fn find_cycle(def: &FlowDefinition) -> Option<String> {
    let mut indegree: HashMap<&str, usize> = def.nodes.iter().map(|n| (n.id.as_str(), 0)).collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &def.edges {
        *indegree.get_mut(e.to.as_str())? += 1;
        children.entry(e.from.as_str()).or_default().push(e.to.as_str());
    }
    let mut queue: VecDeque<&str> = indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| *n).collect();
    let mut visited = 0;
    while let Some(n) = queue.pop_front() {
        visited += 1;
        for c in children.get(n).into_iter().flatten() {
            let d = indegree.get_mut(c)?;
            *d -= 1;
            if *d == 0 {
                queue.push_back(c);
            }
        }
    }
    if visited == def.nodes.len() {
        return None;
    }
    // Nodes still holding an in-degree sit on or after a cycle; report the first in declaration order.
    def.nodes
        .iter()
        .find(|n| indegree.get(n.id.as_str()).is_some_and(|d| *d > 0))
        .map(|n| n.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(def: Value) -> Vec<FieldError> {
        validate(&def).unwrap_err()
    }

    #[test]
    fn a_small_branching_flow_is_valid() {
        let def = json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"x": "{{ $input.x }}"}}},
                {"id": "b", "type": "if", "params": {"condition": "{{ $node.a.output.x }}"}},
                {"id": "c", "type": "merge"}
            ],
            "edges": [{"from": "a", "to": "b"}, {"from": "b", "port": "true", "to": "c"}]
        });
        validate(&def).unwrap();
    }

    #[test]
    fn unknown_types_missing_params_and_duplicates_name_the_node() {
        let e = errors(json!({"nodes": [
            {"id": "a", "type": "teleport"},
            {"id": "b", "type": "set"},
            {"id": "b", "type": "merge"}
        ]}));
        assert_eq!(
            e[0],
            FieldError::new("definition.nodes[0].type", Some("a"), "unknown node type `teleport`")
        );
        assert_eq!(e[1].node.as_deref(), Some("b"));
        assert_eq!(e[1].field, "definition.nodes[1].params.values");
        assert_eq!(e[2].message, "duplicate node id `b`");
    }

    #[test]
    fn dangling_edges_and_cycles_are_rejected() {
        let e = errors(json!({"nodes": [{"id": "a", "type": "merge"}], "edges": [{"from": "a", "to": "z"}]}));
        assert_eq!(e[0].field, "definition.edges[0].to");
        let e = errors(json!({
            "nodes": [{"id": "a", "type": "merge"}, {"id": "b", "type": "merge"}],
            "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]
        }));
        assert_eq!(e[0].message, "the graph has a cycle through `a`");
    }

    #[test]
    fn ports_must_match_the_branch_node() {
        let e = errors(json!({
            "nodes": [{"id": "s", "type": "switch", "params": {"value": 1, "cases": ["a", "b"]}}, {"id": "m", "type": "merge"}],
            "edges": [{"from": "s", "port": "c", "to": "m"}]
        }));
        assert_eq!(e[0].message, "unknown port `c`: expected one of a, b, default");
    }

    #[test]
    fn bad_templates_name_the_param() {
        let e = errors(
            json!({"nodes": [{"id": "h", "type": "http_request", "params": {"method": "GET", "url": "http://x/{{ $input.a + 1 }}"}}]}),
        );
        assert_eq!(e[0].field, "definition.nodes[0].params.url");
        let e = errors(
            json!({"nodes": [{"id": "h", "type": "set", "params": {"values": {"a": "{{ $node.nope.output }}"}}}]}),
        );
        assert_eq!(e[0].message, "template refers to unknown node `nope`");
    }
}
