//! Flow-definition validation (design §4): known node types, required params,
//! unique ids, edges between existing nodes on valid ports, templates that
//! parse, and no cycles. Every error names the field and, where there is one,
//! the node.

use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};

use super::catalog::{self, NodeSpec, Table, switch_port};
use super::definition::{FlowDefinition, Node, RetryPolicy};
use super::kind::NodeKind;
use super::template::CompiledParams;
use crate::script::{self, ScriptKind};

pub const MAX_NODES: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, node: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            node: node.map(str::to_string),
            message: message.into(),
        }
    }
}

/// Validates a definition as received against the built-in node types; on success returns it typed.
pub fn validate(raw: &Value) -> Result<FlowDefinition, Vec<FieldError>> {
    validate_in(raw, &Table::built_in())
}

/// As [`validate`], knowing the node types of `table` (a service's, with its plugins' types).
pub fn validate_in(raw: &Value, table: &Table) -> Result<FlowDefinition, Vec<FieldError>> {
    validate_at(raw, "definition", 0, table)
}

fn validate_at(raw: &Value, root: &str, depth: usize, table: &Table) -> Result<FlowDefinition, Vec<FieldError>> {
    let def: FlowDefinition =
        serde_json::from_value(raw.clone()).map_err(|e| vec![FieldError::new(root, None, e.to_string())])?;
    let mut errors = Vec::new();

    if def.nodes.is_empty() {
        errors.push(FieldError::new(
            format!("{root}.nodes"),
            None,
            "a flow needs at least one node",
        ));
    }
    if def.nodes.len() > MAX_NODES {
        errors.push(FieldError::new(
            format!("{root}.nodes"),
            None,
            format!("a flow may have at most {MAX_NODES} nodes"),
        ));
    }

    match def.deadline_ms {
        Some(_) if depth > 0 => errors.push(FieldError::new(
            format!("{root}.deadline_ms"),
            None,
            "a deadline belongs to the whole flow, not to a loop's sub-flow",
        )),
        Some(0) => errors.push(FieldError::new(
            format!("{root}.deadline_ms"),
            None,
            "must be a positive number of milliseconds",
        )),
        _ => {}
    }

    let mut specs: HashMap<&str, &NodeSpec> = HashMap::new();
    let mut seen = HashSet::new();
    for (i, node) in def.nodes.iter().enumerate() {
        let at = format!("{root}.nodes[{i}]");
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
        check_policy(node, &at, &mut errors);
        let Some(spec) = table.spec(&node.kind) else {
            errors.push(FieldError::new(
                format!("{at}.type"),
                id,
                format!("unknown node type `{}`", node.kind),
            ));
            continue;
        };
        specs.insert(node.id.as_str(), spec);
        let schema_errors = catalog::check_params(spec.kind, &node.params);
        if !schema_errors.is_empty() {
            for (path, message) in schema_errors {
                let field = if path.is_empty() {
                    format!("{at}.params")
                } else {
                    format!("{at}.params.{path}")
                };
                errors.push(FieldError::new(field, id, message));
            }
            continue;
        }
        check_node(spec, node, &at, depth, table, &mut errors);
        // A loop's sub-flow is its own scope: its templates are checked with it.
        let templated = without(&node.params, spec.raw_params);
        match CompiledParams::compile(&templated) {
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
                for expr in &compiled.expressions {
                    if let Err(e) = script::check_syntax(ScriptKind::Expression, expr) {
                        errors.push(FieldError::new(
                            format!("{at}.params"),
                            id,
                            format!("invalid expression `{{{{ {expr} }}}}`: {e}"),
                        ));
                    }
                }
            }
            Err((path, e)) => errors.push(FieldError::new(format!("{at}.params.{path}"), id, e.to_string())),
        }
    }

    for (i, edge) in def.edges.iter().enumerate() {
        let at = format!("{root}.edges[{i}]");
        for (end, id) in [("from", &edge.from), ("to", &edge.to)] {
            if !seen.contains(id.as_str()) {
                errors.push(FieldError::new(
                    format!("{at}.{end}"),
                    Some(id),
                    format!("edge refers to unknown node `{id}`"),
                ));
            }
        }
        if let Some(spec) = specs.get(edge.from.as_str()) {
            let node = def.nodes.iter().find(|n| n.id == edge.from);
            let ports = node.map(|n| catalog::ports(spec, &n.params)).unwrap_or_default();
            match (&edge.port, ports.is_empty()) {
                (Some(p), true) => errors.push(FieldError::new(
                    format!("{at}.port"),
                    Some(&edge.from),
                    format!("`{}` has no output port `{p}`", spec.name),
                )),
                (None, false) => errors.push(FieldError::new(
                    format!("{at}.port"),
                    Some(&edge.from),
                    format!("edges from `{}` need a port: one of {}", spec.name, ports.join(", ")),
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
            format!("{root}.edges"),
            Some(&node),
            format!("the graph has a cycle through `{node}`"),
        ));
    }

    if errors.is_empty() { Ok(def) } else { Err(errors) }
}

/// The deployment's bound on a valid definition's `deadline_ms`
/// (`FLOQ_FLOW_DEADLINE_MAX_MS`), apart from [`validate`] because it is
/// configuration, not the model.
pub fn check_deadline(def: &FlowDefinition, max_ms: u64) -> Result<(), Vec<FieldError>> {
    match def.deadline_ms {
        Some(ms) if ms > max_ms => Err(vec![FieldError::new(
            "definition.deadline_ms",
            None,
            format!("must be at most {max_ms} ms (FLOQ_FLOW_DEADLINE_MAX_MS)"),
        )]),
        _ => Ok(()),
    }
}

/// The params minus those taken literally.
pub fn without(params: &Value, keys: &[&str]) -> Value {
    let mut params = params.clone();
    if let Some(map) = params.as_object_mut() {
        for k in keys {
            map.remove(*k);
        }
    }
    params
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_policy(node: &Node, at: &str, errors: &mut Vec<FieldError>) {
    let id = Some(node.id.as_str());
    if let Some(retry) = &node.retry {
        if !(1..=RetryPolicy::MAX_ATTEMPTS).contains(&retry.attempts) {
            let message = format!("must be between 1 and {}", RetryPolicy::MAX_ATTEMPTS);
            errors.push(FieldError::new(format!("{at}.retry.attempts"), id, message));
        }
        if retry.backoff_ms > RetryPolicy::MAX_BACKOFF_MS {
            let message = format!("must be at most {} ms", RetryPolicy::MAX_BACKOFF_MS);
            errors.push(FieldError::new(format!("{at}.retry.backoff_ms"), id, message));
        }
    }
    if node.timeout_ms.is_some_and(|t| t == 0 || t > 3_600_000) {
        errors.push(FieldError::new(
            format!("{at}.timeout_ms"),
            id,
            "must be between 1 and 3600000 ms",
        ));
    }
}

/// Rules a JSON Schema cannot say: unique switch labels, code that parses,
/// sub-flows that validate.
fn check_node(spec: &NodeSpec, node: &Node, at: &str, depth: usize, table: &Table, errors: &mut Vec<FieldError>) {
    let id = Some(node.id.as_str());
    let params = &node.params;
    match spec.kind {
        NodeKind::SWITCH => {
            let cases = params["cases"].as_array().map(Vec::as_slice).unwrap_or_default();
            let labels: HashSet<String> = cases.iter().map(switch_port).collect();
            if labels.len() != cases.len() || labels.contains("default") {
                errors.push(FieldError::new(
                    format!("{at}.params.cases"),
                    id,
                    "cases must be unique and may not be \"default\"",
                ));
            }
        }
        NodeKind::CODE => {
            if let Some(code) = params["code"].as_str()
                && let Err(e) = script::check_syntax(ScriptKind::Code, code)
            {
                let line = e.line.map(|l| format!(" (line {l})")).unwrap_or_default();
                errors.push(FieldError::new(format!("{at}.params.code"), id, format!("{e}{line}")));
            }
        }
        NodeKind::LOOP => {
            if depth + 1 > super::MAX_DEPTH as usize {
                errors.push(FieldError::new(
                    format!("{at}.params.flow"),
                    id,
                    super::depth_exceeded_message(),
                ));
            } else if let Err(inner) = validate_at(&params["flow"], &format!("{at}.params.flow"), depth + 1, table) {
                errors.extend(inner);
            }
        }
        _ => {}
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
    fn a_deadline_is_positive_bounded_and_only_on_the_flow() {
        let def = validate(&json!({"nodes": [{"id": "a", "type": "merge"}], "deadline_ms": 5000})).unwrap();
        assert_eq!(def.deadline_ms, Some(5000));
        assert!(check_deadline(&def, 5000).is_ok());
        let too_long = check_deadline(&def, 4999).unwrap_err();
        assert_eq!(too_long[0].field, "definition.deadline_ms");
        assert!(too_long[0].message.contains("FLOQ_FLOW_DEADLINE_MAX_MS"));
        let e = errors(json!({"nodes": [{"id": "a", "type": "merge"}], "deadline_ms": 0}));
        assert_eq!(e[0].field, "definition.deadline_ms");
        let e = errors(json!({"nodes": [{"id": "a", "type": "merge"}], "deadline_ms": "soon"}));
        assert_eq!(e[0].field, "definition");
        let e = errors(json!({"nodes": [{"id": "l", "type": "loop", "params": {
            "items": "{{ $input.xs }}",
            "flow": {"nodes": [{"id": "x", "type": "merge"}], "deadline_ms": 10}
        }}]}));
        assert!(e.iter().any(|e| e.field.ends_with("deadline_ms")), "{e:?}");
    }

    /// `n` loops, each the only node of the one around it.
    fn nested_loops(n: u32) -> Value {
        let mut flow = json!({"nodes": [{"id": "leaf", "type": "merge"}]});
        for _ in 0..n {
            flow = json!({"nodes": [{"id": "l", "type": "loop", "params": {"items": "{{ [1] }}", "flow": flow}}]});
        }
        flow
    }

    #[test]
    fn loops_nest_as_deep_as_a_run_may_go_and_no_deeper() {
        validate(&nested_loops(crate::flow::MAX_DEPTH)).unwrap();
        let e = errors(nested_loops(crate::flow::MAX_DEPTH + 1));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].message, "loops and sub-flows nest at most 5 deep");
        assert!(e[0].field.ends_with(".params.flow"), "{}", e[0].field);
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
            json!({"nodes": [{"id": "h", "type": "http_request", "params": {"method": "GET", "url": "http://x/{{ $input.a + }}"}}]}),
        );
        assert_eq!(e[0].field, "definition.nodes[0].params");
        assert!(e[0].message.contains("invalid expression"), "{e:?}");
        let e = errors(
            json!({"nodes": [{"id": "h", "type": "http_request", "params": {"method": "GET", "url": "http://x/{{ $input.a"}}]}),
        );
        assert_eq!(e[0].field, "definition.nodes[0].params.url");
        let e = errors(
            json!({"nodes": [{"id": "h", "type": "set", "params": {"values": {"a": "{{ $node.nope.output }}"}}}]}),
        );
        assert_eq!(e[0].message, "template refers to unknown node `nope`");
    }
}
