//! Replies to synchronous callers: a run delivered with a `reply_to`
//! (direct reply-to, see `floq_shared::replies`) sends its outcome there
//! after the outcome is committed, never before, so the caller never sees
//! a result the database does not hold.
//!
//! Replies go out on a channel of their own, never the consuming one: a
//! broker-side channel error on a reply must not take the unacked deliveries
//! with it.

use floq_shared::db::StoreError;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use uuid::Uuid;

use crate::executor::{Outcome, StepStatus};
use crate::flow_cache::CompiledFlow;
use floq_shared::db::{self, Pool};
use floq_shared::ids::{CompanyId, RunId};
use floq_shared::queue::RunFlowV1;
use floq_shared::replies::{MAX_INLINE_REPLY_BYTES, ReplyEnvelope, RunReply, is_reply_address};
use floq_shared::runs::{outcomes, steps};

/// A reply waiting for its run's commit.
pub struct PendingReply {
    pub run_id: RunId,
    channel: Channel,
    to: String,
    body: Vec<u8>,
}

impl PendingReply {
    /// `None` unless `to` is a direct reply-to address.
    pub fn new(channel: &Channel, to: &str, reply: RunReply) -> Option<Self> {
        if !is_reply_address(to) {
            tracing::warn!(reply_to = to, "ignoring a reply address that is not direct reply-to");
            return None;
        }
        let run_id = RunId::from(reply.run_id);
        let envelope = ReplyEnvelope::RunReplyV1(reply);
        let mut body = envelope.to_bytes();
        if body.len() > MAX_INLINE_REPLY_BYTES {
            let ReplyEnvelope::RunReplyV1(reply) = envelope;
            body = ReplyEnvelope::RunReplyV1(RunReply {
                output: None,
                respond: None,
                oversized: true,
                ..reply
            })
            .to_bytes();
        }
        Some(Self {
            run_id,
            channel: channel.clone(),
            to: to.to_string(),
            body,
        })
    }

    /// The same destination with another reply: the outcome writer stored something else
    /// than the run produced (`output_unstorable`), and the caller must see what is stored.
    pub fn replaced(self, reply: RunReply) -> Option<Self> {
        Self::new(&self.channel, &self.to, reply)
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

/// What a caller is told about a run that just finished.
pub fn from_outcome(run_id: Uuid, flow: Option<&CompiledFlow>, outcome: &Outcome) -> RunReply {
    let responded = flow.and_then(|flow| {
        outcome
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded && respond_nodes(flow).any(|id| id == s.node_id))
            .min_by_key(|s| s.seq)
    });
    RunReply {
        run_id,
        status: outcome.status,
        output: outcome.output.clone(),
        error: outcome.error.clone(),
        respond: responded.and_then(|s| s.output.clone()),
        respond_node: responded.map(|s| s.node_id.clone()),
        oversized: false,
    }
}

/// What a caller is told about a run that had already finished when its
/// message came back (the worker died between the commit and the reply);
/// `None` once the run is gone.
pub async fn from_database(pool: &Pool, msg: &RunFlowV1, flow: &CompiledFlow) -> Result<Option<RunReply>, StoreError> {
    let respond_ids: Vec<&str> = respond_nodes(flow).collect();
    let (company_id, run_id) = (CompanyId::from(msg.company_id), RunId::from(msg.run_id));
    let mut tx = db::tenant_tx(pool, msg.company_id).await?;
    let Some(stored) = outcomes::stored(&mut tx, company_id, run_id).await? else {
        return Ok(None);
    };
    let responded = steps::first_succeeded(&mut tx, company_id, run_id, &respond_ids).await?;
    db::commit(tx).await?;
    let (respond_node, respond) = responded.map(|r| (r.node_id, r.output)).unzip();
    Ok(Some(RunReply {
        run_id: msg.run_id,
        status: stored.status,
        output: stored.output,
        error: stored.error,
        respond: respond.flatten(),
        respond_node,
        oversized: false,
    }))
}

fn respond_nodes(flow: &CompiledFlow) -> impl Iterator<Item = &str> {
    flow.nodes
        .iter()
        .filter(|n| n.spec.name == "respond")
        .map(|n| n.id.as_str())
}
