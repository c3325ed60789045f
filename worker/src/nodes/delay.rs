//! `delay`: waits `ms` milliseconds, bounded by `FLOQ_DELAY_MAX_MS`. A
//! top-level delay longer than `FLOQ_PARK_AFTER_MS` never gets here with its
//! whole wait: the executor parks its run outside the prefetch window and the
//! resumed run's delay waits only what is left (`NodeCtx::wake_at`).

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult};

pub struct Delay;

impl Node for Delay {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let ms = ctx
                .params
                .get("ms")
                .and_then(Value::as_u64)
                .ok_or_else(|| NodeError::new("invalid_params", "`ms` must be a non-negative integer"))?;
            let wait = Duration::from_millis(ms);
            if wait > ctx.env.delay_max {
                return Err(NodeError::new(
                    "delay_too_long",
                    format!("`ms` may be at most {}", ctx.env.delay_max.as_millis()),
                ));
            }
            // A parked run's delay resumes with the time it was to end.
            let wait = match ctx.wake_at {
                Some(at) => (at - chrono::Utc::now()).to_std().unwrap_or_default().min(wait),
                None => wait,
            };
            tokio::time::sleep(wait).await;
            Ok(NodeOutput::value(json!({"waited_ms": ms})))
        }
        .boxed()
    }
}
