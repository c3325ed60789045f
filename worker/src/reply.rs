//! Replies to synchronous callers: a run delivered with a `reply_to`
//! (direct reply-to, see `floq_shared::replies`) sends its outcome there
//! after the outcome is committed, never before, so the caller never sees
//! a result the database does not hold.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};

use crate::executor::Outcome;
use crate::flow_cache::CompiledFlow;
use floq_shared::replies::{ReplyEnvelope, RunReply};

/// A reply waiting for its run's commit.
pub struct PendingReply {
    /// The channel the run was delivered on: replies to direct reply-to may go out on any channel.
    pub channel: Channel,
    pub to: String,
    pub body: Vec<u8>,
}

impl PendingReply {
    pub fn new(
        channel: Channel,
        to: String,
        run_id: uuid::Uuid,
        flow: Option<&CompiledFlow>,
        outcome: &Outcome,
    ) -> Self {
        let reply = RunReply {
            run_id,
            status: outcome.status.as_str().to_string(),
            output: outcome.output.clone(),
            error: outcome.error.clone(),
            respond: flow.and_then(|flow| responded(flow, outcome)),
        };
        Self {
            channel,
            to,
            body: ReplyEnvelope::RunReplyV1(reply).to_bytes(),
        }
    }

    /// Best effort: the caller holds the run id and falls back to `202` if nothing arrives.
    pub async fn send(self) {
        let published = self
            .channel
            .basic_publish(
                "".into(),
                self.to.as_str().into(),
                BasicPublishOptions::default(),
                &self.body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await;
        if let Err(e) = published {
            tracing::debug!(error = %e, "sending a run reply failed; the caller falls back to 202");
        }
    }
}

/// The output of the first `respond` node that succeeded, in execution order.
fn responded(flow: &CompiledFlow, outcome: &Outcome) -> Option<serde_json::Value> {
    outcome
        .steps
        .iter()
        .filter(|s| s.status == "succeeded")
        .filter(|s| flow.nodes.iter().any(|n| n.id == s.node_id && n.spec.name == "respond"))
        .min_by_key(|s| s.seq)
        .and_then(|s| s.output.clone())
}
