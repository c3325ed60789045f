//! `code`: a JavaScript function body run in the sandbox. It sees the same
//! variables as templates (`$input`, `$node`, `$vars`, `$run`, helpers in
//! `$h`); its `return` value, as JSON, is the output.

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult, millis};
use crate::sandbox::Job;
use floq_shared::script::ScriptKind;

pub struct Code;

impl Node for Code {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let source = ctx
                .params
                .get("code")
                .and_then(Value::as_str)
                .ok_or_else(|| NodeError::invalid("`code` must be a string"))?;
            let timeout = millis(
                &ctx.params,
                "timeout_ms",
                ctx.env.code_timeout,
                ctx.env.code_max_timeout,
            )?;
            let job = Job {
                source: Arc::from(source),
                kind: ScriptKind::Code,
                timeout,
            };
            let result = ctx.env.sandbox.run(ctx.scope.clone(), vec![job]).await.pop();
            match result {
                Some(Ok(value)) => Ok(NodeOutput::value(value)),
                Some(Err(e)) => Err(super::sandbox_error(e)),
                None => Err(NodeError::new("sandbox_error", "the sandbox returned no result")),
            }
        }
        .boxed()
    }
}
