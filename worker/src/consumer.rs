//! Consumes the runs queue: manual ack, bounded prefetch, one task per
//! delivery. The database is consulted before executing only when the broker
//! says the delivery is a redelivery.

use floq_shared::db::StoreError;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::executor::{self, Outcome, RunInput};
use crate::flow_cache::FlowCache;
use crate::nodes::{NodeEnv, RunCtx};
use crate::outcome_writer::{self, OutcomeWriter, Write};
use crate::reply::{self, PendingReply};
use floq_shared::Config;
use floq_shared::db::{self, Pool};
use floq_shared::queue::{self, Envelope, RunFlowV1, Topology};
use floq_shared::runs::delivery;
use floq_shared::telemetry::METRICS;

pub struct Worker {
    /// This process's lease (`workers.id`), recorded on the runs it holds.
    pub id: Uuid,
    pub pool: Pool,
    pub config: Arc<Config>,
    pub cache: Arc<FlowCache>,
    pub env: Arc<NodeEnv>,
    pub writer: OutcomeWriter,
}

/// How long shutdown waits for in-flight runs before leaving them to the broker.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Consumes until `shutdown`, reconnecting after broker failures.
pub async fn consume(
    worker: Arc<Worker>,
    topology: Topology,
    shutdown: CancellationToken,
    broker_up: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut in_flight = JoinSet::new();
    while !shutdown.is_cancelled() {
        match consume_once(&worker, &topology, &shutdown, &mut in_flight, &broker_up).await {
            Ok(()) => {}
            Err(e) => {
                broker_up.store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, "consuming from RabbitMQ failed; reconnecting in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    // Stop taking work, finish what we hold; anything unfinished goes back to the queue when the channel closes.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while in_flight.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            runs = in_flight.len(),
            "in-flight runs did not finish in time; they return to the queue"
        );
        in_flight.abort_all();
    }
}

async fn consume_once(
    worker: &Arc<Worker>,
    topology: &Topology,
    shutdown: &CancellationToken,
    in_flight: &mut JoinSet<()>,
    broker_up: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let conn = queue::connect(worker.config.amqp_url.expose()).await?;
    let channel = conn.create_channel().await?;
    // Replies to synchronous callers go out here, apart from the deliveries' channel.
    let replies = conn.create_channel().await?;
    topology.declare(&channel, worker.config.queue_delivery_limit).await?;
    channel
        .basic_qos(worker.config.worker_prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("floq-worker-{}", Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            topology.runs.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    broker_up.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(queue = %topology.runs, prefetch = worker.config.worker_prefetch, "consuming runs");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                // Keep the channel open while in-flight runs finish, so their acks land.
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, async { while in_flight.join_next().await.is_some() {} }).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let (worker, replies) = (worker.clone(), replies.clone());
                    in_flight.spawn(async move { handle(&worker, &replies, delivery).await });
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the broker closed the consumer"),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
}

async fn handle(worker: &Worker, replies: &Channel, delivery: Delivery) {
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
    // The ways a message can arrive twice: the broker redelivers it (its
    // worker died: the run may be unfinished and is run again), the reaper
    // resumes a run whose worker was lost (both take the run over unless it
    // is final), or the outbox sweep or the reaper publishes it again, or it
    // is old enough that the reaper may have (the first copy may be queued,
    // running or done: this copy runs only if it can claim a run still
    // `queued`). Fresh first deliveries pay no check.
    let kind = delivery
        .properties
        .kind()
        .as_ref()
        .map(|kind| kind.as_str().to_string());
    let check = if delivery.redelivered || kind.as_deref() == Some(queue::RESUMED) {
        already_finished(worker, &msg).await
    } else if kind.as_deref() == Some(queue::REPUBLISHED) || possibly_republished(worker, &msg) {
        claimed_elsewhere(worker, &msg).await
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
            let run = RunCtx {
                run_id: msg.run_id,
                company_id: msg.company_id,
                flow_id: msg.flow_id,
                trigger: msg.trigger,
                attempt: msg.attempt,
                depth: 0,
                vars: None,
                deployed_by: flow.deployed_by,
            };
            let exec = async {
                #[cfg(feature = "fail-points")]
                fail_point(&input);
                executor::execute(flow, RunInput { run, input: &input }, worker.env.clone()).await
            };
            // A panic in a node fails its run instead of leaving the delivery unacked until the channel closes.
            let exec = std::panic::AssertUnwindSafe(exec).catch_unwind();
            tokio::pin!(exec);
            let done = tokio::select! {
                outcome = &mut exec => outcome,
                _ = tokio::time::sleep(worker.config.running_mark_after) => {
                    worker.writer.send(Write::Started { company_id: msg.company_id.into(), run_id: msg.run_id.into(), at: Utc::now() }).await;
                    exec.await
                }
            };
            done.unwrap_or_else(|_| {
                tracing::error!("the run panicked in the worker; failing it as {WORKER_PANICKED}");
                Outcome::failed_early(
                    WORKER_PANICKED,
                    "the worker failed unexpectedly while running this run; it was stopped",
                )
            })
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

/// For a message that may continue an unfinished run (a redelivery, a
/// continuation): takes the run over on this worker's lease, or says it is
/// final. A run that is gone (retention) is as finished as one that ended.
async fn already_finished(worker: &Worker, msg: &RunFlowV1) -> Result<bool, StoreError> {
    let mut tx = db::tenant_tx(&worker.pool, msg.company_id).await?;
    let taken = delivery::take_over(&mut tx, msg.company_id.into(), msg.run_id.into(), worker.id).await?;
    db::commit(tx).await?;
    Ok(!taken)
}

/// Whether a first delivery is old enough that the reaper may have published
/// a copy of it (a run queued past half of `FLOQ_REAPER_QUEUED_AFTER_MS`,
/// read from its UUID v7 id: no database round trip).
fn possibly_republished(worker: &Worker, msg: &RunFlowV1) -> bool {
    let Some(ts) = msg.run_id.get_timestamp() else {
        return false;
    };
    let (secs, nanos) = ts.to_unix();
    let accepted = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    accepted
        .elapsed()
        .is_ok_and(|age| age > worker.config.reaper_queued_after / 2)
}

/// The error code of a run whose execution panicked in the worker.
pub const WORKER_PANICKED: &str = "worker_panicked";

/// Test builds only: a run whose input asks for it panics, as a node with a bug would.
#[cfg(feature = "fail-points")]
fn fail_point(input: &serde_json::Value) {
    if input.get("floq_fail_point").and_then(serde_json::Value::as_str) == Some("panic") {
        panic!("fail point: a panicking node");
    }
}

/// For a message the outbox sweep published again: claims the run (`queued`
/// → `running`), or says another copy has it (running or finished). A crashed
/// first copy is redelivered by the broker and runs then.
async fn claimed_elsewhere(worker: &Worker, msg: &RunFlowV1) -> Result<bool, StoreError> {
    let mut tx = db::tenant_tx(&worker.pool, msg.company_id).await?;
    let claimed = delivery::claim(&mut tx, msg.company_id.into(), msg.run_id.into(), worker.id).await?;
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
