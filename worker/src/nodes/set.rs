//! `set`: outputs its `values` object, templates evaluated.

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;

use super::{Node, NodeEnv, NodeOutput, NodeResult};

pub struct Set;

impl Node for Set {
    fn run(&self, params: Value, _inputs: Value, _env: Arc<NodeEnv>) -> BoxFuture<'static, NodeResult> {
        let values = params.get("values").cloned().unwrap_or(Value::Null);
        async move { Ok(NodeOutput::value(values)) }.boxed()
    }
}
