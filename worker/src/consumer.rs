//! Handles each delivery of the run queues: manual ack after the outcome is
//! committed. The database is consulted before executing only when the
//! message may have arrived before (a redelivery, a republished or resumed
//! copy). [`crate::intake`] consumes the queues and starts these.

use floq_shared::db::StoreError;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::executor::{self, Outcome, RunInput, RunStatus};
use crate::flow_cache::FlowCache;
use crate::nodes::{NodeEnv, RunCtx};
use crate::outcome_writer::{self, OutcomeWriter, Write};
use crate::reply::{self, PendingReply};
use floq_shared::Config;
use floq_shared::db::{self, Pool};
use floq_shared::queue::{self, Envelope, RunFlowV1};
use floq_shared::runs::delivery;
use floq_shared::telemetry::METRICS;

pub struct Worker {
    pub pool: Pool,
    pub config: Arc<Config>,
    pub cache: Arc<FlowCache>,
    pub env: Arc<NodeEnv>,
    pub writer: OutcomeWriter,
}

/// Handles one delivery of a run queue, from decoding to the outcome
/// handed to the writer (which acks after the commit). [`crate::intake`]
/// decides when it starts.
pub(crate) async fn handle(worker: &Worker, replies: &Channel, delivery: Delivery) {
    METRICS.worker_inflight.inc();
    let envelope: Envelope = match serde_json::from_slice(&delivery.data) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "undecodable message; dead-lettering it");
            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
            METRICS.worker_inflight.dec();
            return;
        }
    };
    let Envelope::RunFlowV1(msg) = envelope;
    let span = tracing::info_span!("run", run.id = %msg.run_id, company.id = %msg.company_id, flow.id = %msg.flow_id);
    let _ = tracing::Instrument::instrument(run(worker, replies, msg, delivery), span).await;
    METRICS.worker_inflight.dec();
}

async fn run(worker: &Worker, replies: &Channel, mut msg: RunFlowV1, delivery: Delivery) {
    let reply_to = delivery.properties.reply_to().as_ref().map(|to| to.to_string());
    // The two ways a message can arrive twice: the broker redelivers it (its
    // worker died: the run may be unfinished and is run again), or the outbox
    // sweep publishes it again (the first copy may be queued, running or
    // done: this copy runs only if it can claim a run still `queued`).
    let republished = delivery
        .properties
        .kind()
        .as_ref()
        .is_some_and(|kind| kind.as_str() == queue::REPUBLISHED);
    // A continuation (a stopping worker handed the run back) may follow a finished run too.
    let resumed = delivery
        .properties
        .kind()
        .as_ref()
        .is_some_and(|kind| kind.as_str() == queue::RESUMED);
    let check = if delivery.redelivered || resumed {
        already_finished(&worker.pool, &msg).await
    } else if republished {
        claimed_elsewhere(&worker.pool, &msg).await
    } else {
        Ok(false)
    };
    match check {
        Ok(false) => {}
        Ok(true) => {
            if let Some(to) = &reply_to {
                reply_stored(worker, replies, to, &msg).await;
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a repeated run message; returning it to the queue");
            requeue(&delivery).await;
            return;
        }
    }
    if let Some(ts) = msg.run_id.get_timestamp() {
        let (secs, nanos) = ts.to_unix();
        let queued = Duration::new(secs, nanos);
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            METRICS.run_queue_wait.observe(now.saturating_sub(queued).as_secs_f64());
        }
    }
    let flow = worker
        .cache
        .get(&worker.pool, msg.company_id, msg.flow_id, msg.version)
        .await;
    let mut outcome = match &flow {
        Ok(Some(flow)) => {
            let input = match inline_or_load_input(&worker.pool, &mut msg).await {
                Ok(Some(input)) => input,
                Ok(None) => {
                    // The run row is gone (company deleted): nothing to do.
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the run's input; returning it to the queue");
                    requeue(&delivery).await;
                    return;
                }
            };
            let exec = executor::execute(
                flow,
                RunInput {
                    run: RunCtx {
                        run_id: msg.run_id,
                        company_id: msg.company_id,
                        flow_id: msg.flow_id,
                        trigger: msg.trigger,
                        attempt: msg.attempt,
                        depth: 0,
                        vars: None,
                        deployed_by: flow.deployed_by,
                    },
                    input: &input,
                },
                worker.env.clone(),
            );
            tokio::pin!(exec);
            tokio::select! {
                outcome = &mut exec => outcome,
                _ = tokio::time::sleep(worker.config.running_mark_after) => {
                    worker.writer.send(Write::Started { company_id: msg.company_id.into(), run_id: msg.run_id.into(), at: Utc::now() }).await;
                    exec.await
                }
            }
        }
        Ok(None) => Outcome::failed_early(
            "flow_version_missing",
            "the flow version this run pinned does not exist",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the flow version; returning the run to the queue");
            requeue(&delivery).await;
            return;
        }
    };
    METRICS.run_duration.observe(
        (outcome.finished_at - outcome.started_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64(),
    );
    // Before the reply is built, so the caller sees what the database will hold.
    outcome_writer::make_storable(&mut outcome);
    let reply = reply_to.and_then(|to| {
        let flow = flow.as_ref().ok().and_then(|f| f.as_deref());
        PendingReply::new(replies, &to, reply::from_outcome(msg.run_id, flow, &outcome)).map(Box::new)
    });
    worker
        .writer
        .send(Write::Finished {
            company_id: msg.company_id.into(),
            run_id: msg.run_id.into(),
            outcome: Box::new(outcome),
            acker: delivery.acker,
            reply,
        })
        .await;
}

/// A finished run's message came back: its first reply may never have gone out.
async fn reply_stored(worker: &Worker, replies: &Channel, to: &str, msg: &RunFlowV1) {
    let stored = match worker
        .cache
        .get(&worker.pool, msg.company_id, msg.flow_id, msg.version)
        .await
    {
        Ok(Some(flow)) => reply::from_database(&worker.pool, msg, &flow).await.map_err(Into::into),
        Ok(None) => return,
        Err(e) => Err(e),
    };
    match stored {
        Ok(Some(stored)) => {
            if let Some(reply) = PendingReply::new(replies, to, stored) {
                reply.send().await;
            }
        }
        Ok(None) => tracing::debug!("the finished run is gone; the caller falls back to 202"),
        Err(e) => tracing::debug!(error = %e, "cannot reload a finished run to reply; the caller falls back to 202"),
    }
}

/// Hands a delivery back to the broker for another worker (or a later try).
async fn requeue(delivery: &Delivery) {
    let options = lapin::options::BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let _ = delivery.acker.nack(options).await;
}

async fn already_finished(pool: &Pool, msg: &RunFlowV1) -> Result<bool, StoreError> {
    let mut tx = db::tenant_tx(pool, msg.company_id).await?;
    let status = delivery::status(&mut tx, msg.company_id.into(), msg.run_id.into()).await?;
    db::commit(tx).await?;
    // A run that is gone (retention) is as finished as one that ended.
    Ok(status.is_none_or(RunStatus::is_final))
}

/// For a message the outbox sweep published again: claims the run (`queued`
/// → `running`), or says another copy has it (running or finished). A crashed
/// first copy is redelivered by the broker and runs then.
async fn claimed_elsewhere(pool: &Pool, msg: &RunFlowV1) -> Result<bool, StoreError> {
    let mut tx = db::tenant_tx(pool, msg.company_id).await?;
    let claimed = delivery::claim(&mut tx, msg.company_id.into(), msg.run_id.into()).await?;
    db::commit(tx).await?;
    Ok(!claimed)
}

/// Takes the inline input out of the message (nothing else reads it) or loads it.
async fn inline_or_load_input(pool: &Pool, msg: &mut RunFlowV1) -> Result<Option<serde_json::Value>, StoreError> {
    if let Some(input) = msg.input.take() {
        return Ok(Some(input));
    }
    let mut tx = db::tenant_tx(pool, msg.company_id).await?;
    let input = delivery::input(&mut tx, msg.company_id.into(), msg.run_id.into()).await?;
    db::commit(tx).await?;
    Ok(input)
}
