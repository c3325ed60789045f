//! `merge`: joins branches; outputs `{parent_id: output}` of the parents that ran.

use futures_util::future::{BoxFuture, FutureExt};

use super::{Node, NodeCtx, NodeOutput, NodeResult};

pub struct Merge;

impl Node for Merge {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move { Ok(NodeOutput::value(ctx.inputs)) }.boxed()
    }
}
