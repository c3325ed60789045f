//! What changed between two flow definitions (two deployed versions, or a
//! version and the draft): nodes added, removed and changed (by node id, with
//! each changed top-level field before and after), edges added and removed,
//! and the definition's other top-level fields changed. Pure: it reads two
//! JSON definitions as stored and never validates them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// One top-level field of a node or of the definition, before and after
/// (`null` where it is absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Value,
    pub after: Value,
}

/// A node present on both sides whose fields differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeChange {
    pub id: String,
    pub fields: Vec<FieldChange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodesDiff {
    /// Whole nodes only the newer side has, in its order.
    pub added: Vec<Value>,
    /// Whole nodes only the older side has, in its order.
    pub removed: Vec<Value>,
    pub changed: Vec<NodeChange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EdgesDiff {
    pub added: Vec<Value>,
    pub removed: Vec<Value>,
}

/// The difference from `before` to `after`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DefinitionDiff {
    pub nodes: NodesDiff,
    pub edges: EdgesDiff,
    /// Top-level fields other than `nodes` and `edges` (`deadline_ms`, …).
    pub fields: Vec<FieldChange>,
}

impl DefinitionDiff {
    pub fn is_empty(&self) -> bool {
        *self == DefinitionDiff::default()
    }
}

fn array<'a>(def: &'a Value, key: &str) -> &'a [Value] {
    def.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn node_id(node: &Value) -> Option<&str> {
    node.get("id").and_then(Value::as_str)
}

/// The top-level fields of two objects that differ, in key order; `skip` left out.
fn field_changes(before: &Map<String, Value>, after: &Map<String, Value>, skip: &[&str]) -> Vec<FieldChange> {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| !skip.contains(&k.as_str()))
        .filter_map(|k| {
            let (b, a) = (
                before.get(k).unwrap_or(&Value::Null),
                after.get(k).unwrap_or(&Value::Null),
            );
            (b != a).then(|| FieldChange {
                field: k.clone(),
                before: b.clone(),
                after: a.clone(),
            })
        })
        .collect()
}

/// An edge as compared: `port: null` and no port are the same edge.
fn edge_key(edge: &Value) -> Value {
    match edge.as_object() {
        Some(fields) => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => edge.clone(),
    }
}

pub fn diff(before: &Value, after: &Value) -> DefinitionDiff {
    let empty = Map::new();
    let old: BTreeMap<&str, &Value> = array(before, "nodes")
        .iter()
        .filter_map(|n| Some((node_id(n)?, n)))
        .collect();
    let new: BTreeMap<&str, &Value> = array(after, "nodes")
        .iter()
        .filter_map(|n| Some((node_id(n)?, n)))
        .collect();
    let mut nodes = NodesDiff::default();
    for n in array(after, "nodes") {
        if node_id(n).is_some_and(|id| !old.contains_key(id)) {
            nodes.added.push(n.clone());
        }
    }
    for n in array(before, "nodes") {
        match node_id(n).and_then(|id| new.get(id).map(|a| (id, a))) {
            None => nodes.removed.push(n.clone()),
            Some((id, a)) => {
                let fields = field_changes(
                    n.as_object().unwrap_or(&empty),
                    a.as_object().unwrap_or(&empty),
                    &["id"],
                );
                if !fields.is_empty() {
                    nodes.changed.push(NodeChange {
                        id: id.to_string(),
                        fields,
                    });
                }
            }
        }
    }
    let old_edges: Vec<Value> = array(before, "edges").iter().map(edge_key).collect();
    let new_edges: Vec<Value> = array(after, "edges").iter().map(edge_key).collect();
    let edges = EdgesDiff {
        added: new_edges.iter().filter(|e| !old_edges.contains(e)).cloned().collect(),
        removed: old_edges.iter().filter(|e| !new_edges.contains(e)).cloned().collect(),
    };
    let fields = field_changes(
        before.as_object().unwrap_or(&empty),
        after.as_object().unwrap_or(&empty),
        &["nodes", "edges"],
    );
    DefinitionDiff { nodes, edges, fields }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_definition_against_itself_has_no_difference() {
        let def = json!({"nodes": [{"id": "a", "type": "set", "params": {}}], "edges": []});
        assert!(diff(&def, &def).is_empty());
    }

    #[test]
    fn nodes_edges_and_top_level_fields_are_told_apart() {
        let before = json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"x": 1}}},
                {"id": "b", "type": "if", "params": {"condition": "{{ true }}"}},
                {"id": "gone", "type": "delay", "params": {"ms": 5}}
            ],
            "edges": [{"from": "a", "to": "b", "port": null}, {"from": "b", "port": "true", "to": "gone"}],
            "deadline_ms": 1000
        });
        let after = json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"x": 2}}, "timeout_ms": 500},
                {"id": "b", "type": "if", "params": {"condition": "{{ true }}"}},
                {"id": "new", "type": "set", "params": {"values": {}}}
            ],
            "edges": [{"from": "a", "to": "b"}, {"from": "b", "port": "true", "to": "new"}]
        });
        let d = diff(&before, &after);
        assert_eq!(d.nodes.added, vec![after["nodes"][2].clone()]);
        assert_eq!(d.nodes.removed, vec![before["nodes"][2].clone()]);
        assert_eq!(
            d.nodes.changed,
            vec![NodeChange {
                id: "a".into(),
                fields: vec![
                    FieldChange {
                        field: "params".into(),
                        before: json!({"values": {"x": 1}}),
                        after: json!({"values": {"x": 2}})
                    },
                    FieldChange {
                        field: "timeout_ms".into(),
                        before: Value::Null,
                        after: json!(500)
                    },
                ],
            }]
        );
        assert_eq!(d.edges.added, vec![json!({"from": "b", "port": "true", "to": "new"})]);
        assert_eq!(
            d.edges.removed,
            vec![json!({"from": "b", "port": "true", "to": "gone"})]
        );
        assert_eq!(
            d.fields,
            vec![FieldChange {
                field: "deadline_ms".into(),
                before: json!(1000),
                after: Value::Null
            }]
        );
    }
}
