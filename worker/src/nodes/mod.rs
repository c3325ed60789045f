//! Node implementations, one per file, registered in [`implementation`].
//!
//! A node receives its params with templates already evaluated, and the
//! outputs of its active parents. It never sees secrets it was not handed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use floq_shared::flow::NodeKind;

mod branch;
mod delay;
mod http_request;
mod merge;
mod set;

/// What a node produced: its output, and for branch nodes the port taken.
#[derive(Debug)]
pub struct NodeOutput {
    pub value: Value,
    pub port: Option<String>,
}

impl NodeOutput {
    pub fn value(value: Value) -> Self {
        Self { value, port: None }
    }
}

/// A node failure as stored in the step: `{code, message}`.
#[derive(Debug, Clone)]
pub struct NodeError {
    pub code: &'static str,
    pub message: String,
}

impl NodeError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

pub type NodeResult = Result<NodeOutput, NodeError>;

/// Limits and clients nodes share within one worker.
pub struct NodeEnv {
    pub http: reqwest::Client,
    pub delay_max: Duration,
    pub http_max_timeout: Duration,
    pub http_max_response_bytes: usize,
}

pub trait Node: Send + Sync {
    /// `params`: evaluated params. `inputs`: `{parent_id: output}` of the parents whose edge was taken.
    fn run(&self, params: Value, inputs: Value, env: Arc<NodeEnv>) -> BoxFuture<'static, NodeResult>;
}

pub fn implementation(kind: NodeKind) -> &'static dyn Node {
    match kind {
        NodeKind::Set => &set::Set,
        NodeKind::If => &branch::If,
        NodeKind::Switch => &branch::Switch,
        NodeKind::Merge => &merge::Merge,
        NodeKind::Delay => &delay::Delay,
        NodeKind::HttpRequest => &http_request::HttpRequest,
    }
}
