//! `sub_flow`: runs a deployed version of another flow of the same company,
//! in this worker, with `input` as its `$input`, and outputs the
//! sub-flow's output. Nesting is bounded ([`super::MAX_DEPTH`]). The
//! calling version's deployer must be allowed to run the sub-flow, and the
//! sub-flow then runs with its own deployer's reach.
//!
//! The version is pinned by the run's accept time (the timestamp of its
//! UUID v7 id): the latest version deployed at or before it, or the first one
//! if the sub-flow was first deployed later (`flows::runnable`). So every
//! execution of one run, a resumed one too, calls the same version; a run
//! accepted after a redeploy calls the new one.

use floq_shared::db::StoreError;
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;
use uuid::Uuid;

use super::{MAX_DEPTH, Node, NodeCtx, NodeError, NodeOutput, NodeResult, lacks_access};
use floq_shared::db;
use floq_shared::flows::{self, Runnable};
use floq_shared::ids::UserId;

pub struct SubFlow;

impl Node for SubFlow {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let flow_id = ctx
                .params
                .get("flow_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| NodeError::invalid("`flow_id` must be a flow id"))?;
            if ctx.run.depth + 1 > MAX_DEPTH {
                return Err(NodeError::new(
                    "depth_exceeded",
                    floq_shared::flow::depth_exceeded_message(),
                ));
            }
            let company_id = ctx.run.company_id;
            let unavailable = |_| NodeError::new("sub_flow_unavailable", "the sub-flow could not be loaded");
            // Under the run's company: another company's flow id is simply not found.
            // The caller's deployer must still be allowed to run it (grants can be revoked after deploy).
            let found = async {
                let mut tx = db::tenant_tx(&ctx.env.pool, company_id).await?;
                let deployer = ctx.run.deployed_by.map(UserId);
                let found = flows::runnable(
                    &mut tx,
                    company_id.into(),
                    flow_id.into(),
                    deployer,
                    accepted_at(ctx.run.run_id),
                )
                .await?;
                db::commit(tx).await?;
                Ok::<_, StoreError>(found)
            }
            .await
            .map_err(|e| unavailable(e.to_string()))?;
            let version = match found {
                None => return Err(NodeError::new("sub_flow_not_found", "no deployed flow with this id")),
                Some(Runnable { permitted: false, .. }) => return Err(lacks_access(&format!("flow {flow_id}"))),
                Some(Runnable { version, .. }) => version,
            };
            let flow = ctx
                .env
                .flows
                .get(&ctx.env.pool, company_id, flow_id, version)
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .ok_or_else(|| NodeError::new("sub_flow_not_found", "no deployed flow with this id"))?;
            let input = ctx
                .params
                .get("input")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            let mut run = (*ctx.run).clone();
            run.depth += 1;
            run.path = ctx.nested_path(None);
            run.flow_id = flow_id;
            run.deployed_by = flow.deployed_by;
            match ctx.env.runner.run(&flow, run, &input, ctx.env.clone()).await {
                Ok(output) => Ok(NodeOutput::value(output)),
                Err(message) => Err(NodeError::new(
                    "sub_flow_failed",
                    format!("the sub-flow failed: {message}"),
                )),
            }
        }
        .boxed()
    }
}

/// When the run was accepted: its id is a UUID v7, made by the API at accept time.
fn accepted_at(run_id: Uuid) -> chrono::DateTime<chrono::Utc> {
    run_id
        .get_timestamp()
        .and_then(|ts| {
            let (secs, nanos) = ts.to_unix();
            chrono::DateTime::from_timestamp(secs as i64, nanos)
        })
        // Not a v7 id (never made by floq): the latest version, as before pinning.
        .unwrap_or_else(chrono::Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_accepted_when_its_v7_id_was_made() {
        let before = chrono::Utc::now() - chrono::Duration::milliseconds(2);
        let at = accepted_at(Uuid::now_v7());
        assert!(at >= before && at <= chrono::Utc::now(), "{at} vs {before}");
    }
}
