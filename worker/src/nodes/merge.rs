//! `merge`: joins branches; outputs `{parent_id: output}` of the parents that ran.

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;

use super::{Node, NodeEnv, NodeOutput, NodeResult};

pub struct Merge;

impl Node for Merge {
    fn run(&self, _params: Value, inputs: Value, _env: Arc<NodeEnv>) -> BoxFuture<'static, NodeResult> {
        async move { Ok(NodeOutput::value(inputs)) }.boxed()
    }
}
