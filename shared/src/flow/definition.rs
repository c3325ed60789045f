//! The JSON shape of a flow definition (design §4).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowDefinition {
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "empty_object")]
    pub params: Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// The node types this build knows. Validation rejects anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Set,
    If,
    Switch,
    Merge,
    Delay,
    HttpRequest,
}

impl NodeKind {
    pub const ALL: [NodeKind; 6] = [
        NodeKind::Set,
        NodeKind::If,
        NodeKind::Switch,
        NodeKind::Merge,
        NodeKind::Delay,
        NodeKind::HttpRequest,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Set => "set",
            NodeKind::If => "if",
            NodeKind::Switch => "switch",
            NodeKind::Merge => "merge",
            NodeKind::Delay => "delay",
            NodeKind::HttpRequest => "http_request",
        }
    }

    /// Params that must be present.
    pub fn required_params(self) -> &'static [&'static str] {
        match self {
            NodeKind::Set => &["values"],
            NodeKind::If => &["condition"],
            NodeKind::Switch => &["value", "cases"],
            NodeKind::Merge => &[],
            NodeKind::Delay => &["ms"],
            NodeKind::HttpRequest => &["method", "url"],
        }
    }

    /// Params that may be present; anything else is a typo worth reporting.
    pub fn optional_params(self) -> &'static [&'static str] {
        match self {
            NodeKind::HttpRequest => &["headers", "body", "timeout_ms", "query"],
            _ => &[],
        }
    }
}

/// The label a switch case's edge carries: strings as they are, other JSON as text.
pub fn switch_port(case: &Value) -> String {
    match case {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
