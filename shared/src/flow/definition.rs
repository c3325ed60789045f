//! The JSON shape of a flow definition (design §4).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowDefinition {
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
    /// The run fails with `deadline_exceeded` once this many milliseconds
    /// have passed since it started executing, interrupting whatever runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "empty_object")]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Cap on one attempt of this node, whatever it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
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

/// How often a node is retried when it fails, and after how long.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub attempts: u32,
    /// Wait before the second attempt; doubles for each further one.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Error codes that are retried (`http_timeout`, `sandbox_timeout`, …); empty retries every error.
    #[serde(default)]
    pub on: Vec<String>,
}

fn default_backoff() -> u64 {
    1_000
}

impl RetryPolicy {
    pub const MAX_ATTEMPTS: u32 = 10;
    pub const MAX_BACKOFF_MS: u64 = 600_000;

    pub fn retries(&self, code: &str) -> bool {
        self.on.is_empty() || self.on.iter().any(|c| c == code)
    }
}

pub use super::catalog::switch_port;
