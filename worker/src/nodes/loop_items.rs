//! `loop`: runs its sub-flow once per item of `items`, with the item as the
//! sub-flow's `$input`, at most `concurrency` at a time, and outputs the
//! sub-flows' outputs in item order. The first failing item fails the loop.

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::Value;

use super::{MAX_DEPTH, Node, NodeCtx, NodeError, NodeOutput, NodeResult, output_size, too_large};

pub struct Loop;

const DEFAULT_CONCURRENCY: u64 = 4;
const DEFAULT_MAX_ITEMS: u64 = 1_000;
/// The most `max_items` may ask for (the flow catalog refuses more when a flow is saved).
pub const MAX_ITEMS: u64 = 10_000;

impl Node for Loop {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let Some(body) = ctx.body.clone() else {
                return Err(NodeError::invalid("the loop has no compiled sub-flow"));
            };
            let items = match ctx.params.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => return Err(NodeError::invalid("`items` must evaluate to an array")),
            };
            let max_items = ctx
                .params
                .get("max_items")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_MAX_ITEMS)
                .min(MAX_ITEMS);
            if items.len() as u64 > max_items {
                return Err(NodeError::new(
                    "loop_too_many_items",
                    format!("{} items exceed `max_items` ({max_items})", items.len()),
                ));
            }
            if ctx.run.depth + 1 > MAX_DEPTH {
                return Err(NodeError::new(
                    "depth_exceeded",
                    floq_shared::flow::depth_exceeded_message(),
                ));
            }
            let concurrency = ctx
                .params
                .get("concurrency")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_CONCURRENCY);
            // The loop's output is one step output: the items' outputs are counted as they arrive, so an oversized
            // loop stops early instead of holding every item in memory first.
            let limit = ctx.env.step_output_max_bytes;
            let total = std::sync::atomic::AtomicUsize::new(0);
            let total = &total;
            let outputs: Vec<Value> = stream::iter(items.into_iter().enumerate())
                .map(|(i, item)| {
                    let (body, ctx) = (body.clone(), ctx.clone());
                    async move {
                        let mut run = (*ctx.run).clone();
                        run.depth += 1;
                        run.path = ctx.nested_path(Some(i));
                        match ctx.env.runner.run(&body, run, &item, ctx.env.clone()).await {
                            Ok(output) => {
                                let size = output_size(&output, limit)?;
                                let so_far = total.fetch_add(size, std::sync::atomic::Ordering::Relaxed) + size;
                                if so_far > limit {
                                    return Err(too_large("its output", limit, "FLOQ_STEP_OUTPUT_MAX_BYTES"));
                                }
                                Ok(output)
                            }
                            Err(message) => Err(NodeError::new(
                                "loop_item_failed",
                                format!("item {i} failed: {message}"),
                            )),
                        }
                    }
                })
                .buffered(concurrency.max(1) as usize)
                .try_collect()
                .await?;
            Ok(NodeOutput::value(Value::Array(outputs)))
        }
        .boxed()
    }
}
