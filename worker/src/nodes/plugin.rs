//! A node type a plugin adds, run like a built-in: it gets its params
//! evaluated (secrets resolved only in its spec's `secret_params`), its
//! parents' outputs and its idempotency key, under the node's timeout,
//! retries and the run's cancel.

use std::sync::Arc;

use floq_shared::plugin::{NodeCall, NodeInfo, NodeType};
use futures_util::future::BoxFuture;

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult};

pub struct PluginNode(pub Arc<dyn NodeType>);

impl Node for PluginNode {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        let kind = self.0.spec().kind;
        let node = NodeInfo {
            company_id: ctx.run.company_id,
            run_id: ctx.run.run_id,
            flow_id: ctx.run.flow_id,
            node_id: ctx.node_path.rsplit('/').next().unwrap_or_default().to_string(),
            node_path: ctx.node_path.clone(),
            kind,
        };
        let call = NodeCall {
            idempotency_key: ctx.idempotency_key(),
            bound_secrets: ctx.secret_origins.iter().map(|(key, _)| key.clone()).collect(),
            node,
            params: ctx.params,
            inputs: ctx.inputs,
            pool: ctx.env.pool.clone(),
        };
        let work = self.0.run(call);
        Box::pin(async move {
            work.await
                .map(NodeOutput::value)
                .map_err(|f| NodeError::new(f.code, f.message))
        })
    }
}
