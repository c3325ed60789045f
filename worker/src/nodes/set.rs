//! `set`: outputs its `values` object, templates evaluated.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;

use super::{Node, NodeCtx, NodeOutput, NodeResult};

pub struct Set;

impl Node for Set {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        let values = ctx.params.get("values").cloned().unwrap_or(Value::Null);
        async move { Ok(NodeOutput::value(values)) }.boxed()
    }
}
