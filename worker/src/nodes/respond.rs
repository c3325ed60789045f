//! `respond`: shapes the reply a synchronous webhook sends: `status`
//! (default 200), `headers`, `body`. The output is that reply.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Map, Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult, text};

pub struct Respond;

impl Node for Respond {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        let reply = reply(&ctx.params);
        async move { reply.map(NodeOutput::value) }.boxed()
    }
}

fn reply(params: &Value) -> Result<Value, NodeError> {
    let status = match params.get("status") {
        None | Some(Value::Null) => 200,
        Some(v) => v
            .as_u64()
            .filter(|s| (100..=599).contains(s))
            .ok_or_else(|| NodeError::invalid("`status` must be an HTTP status between 100 and 599"))?,
    };
    let headers: Map<String, Value> = match params.get("headers") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h.iter().map(|(k, v)| (k.clone(), Value::String(text(v)))).collect(),
        Some(_) => return Err(NodeError::invalid("`headers` must be an object")),
    };
    let body = params.get("body").cloned().unwrap_or(Value::Null);
    Ok(json!({"status": status, "headers": headers, "body": body}))
}
