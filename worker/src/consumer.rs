//! Handles each delivery of the run queues: manual ack after the outcome is
//! committed. The database is consulted before executing only when the
//! message may have run before: the broker redelivers it, or it is marked
//! republished (outbox sweep, reaper) or resumed (a parked run waking, a run
//! handed back or whose worker was lost). A redelivered or resumed run goes
//! on after its checkpoints. [`crate::intake`] consumes the queues and
//! starts these.

use floq_shared::db::StoreError;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use uuid::Uuid;

use crate::checkpoints::CheckpointWriter;
use crate::control::{AlreadyHeld, Control};
use crate::executor::{self, Ended, Outcome, Resume, RunInput, RunStatus};
use crate::flow_cache::FlowCache;
use crate::nodes::{NodeEnv, RunCtx};
use crate::outcome_writer::{self, OutcomeWriter, Write};
use crate::reply::{self, PendingReply};
use floq_shared::Config;
use floq_shared::db::{self, Pool};
use floq_shared::parking::Parking;
use floq_shared::queue::{self, Envelope, Publisher, RunFlowV1};
use floq_shared::runs::{cancel, checkpoints, delivery};
use floq_shared::telemetry::METRICS;

pub struct Worker {
    /// This process's lease (`workers.id`), recorded on the runs it holds.
    pub id: Uuid,
    pub pool: Pool,
    pub config: Arc<Config>,
    pub cache: Arc<FlowCache>,
    pub env: Arc<NodeEnv>,
    pub writer: OutcomeWriter,
    pub control: Arc<Control>,
    pub checkpoints: CheckpointWriter,
    /// Publishes parked runs to the delay queues.
    pub publisher: Arc<Publisher>,
    pub parking: Arc<Parking>,
}

/// What a message's run needs before it executes.
enum Check {
    /// Never ran (as far as a fresh message can tell): run it from the start.
    Fresh,
    /// Finished, gone, or held by another copy: ack without running a node.
    Done,
    /// May have run before: go on after its checkpoints.
    Resume(Resume),
    /// Unfinished, but a cancel was asked while it ran: it ends `cancelled`.
    CancelRequested,
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
    let span = tracing::info_span!("run", run.id = %msg.run_id, company.id = %msg.company_id, flow.id = %msg.flow_id,
        run.trigger = msg.trigger.as_str());
    // The accepting API's span is the parent: one trace from the request through the queue to each node.
    floq_shared::telemetry::continue_trace(&span, msg.traceparent.as_deref());
    let _ = tracing::Instrument::instrument(run(worker, replies, msg, delivery), span).await;
    METRICS.worker_inflight.dec();
}

async fn run(worker: &Worker, replies: &Channel, mut msg: RunFlowV1, delivery: Delivery) {
    let reply_to = delivery.properties.reply_to().as_ref().map(|to| to.to_string());
    // The ways a message can arrive again: the broker redelivers it (its
    // worker died: the run may be unfinished and goes on after its
    // checkpoints), it is resumed (the same, asked for: a parked run waking,
    // a run handed back, a run whose worker's lease expired: these take the
    // run over unless it is final), or the outbox sweep or the reaper
    // publishes it again, or it is old enough that the reaper may have (the
    // first copy may be queued, running or done: this copy runs only if it
    // can claim a run still `queued`). Fresh first deliveries pay no check.
    let kind = delivery.properties.kind().as_ref().map(|k| k.as_str().to_string());
    let resumes = delivery.redelivered || kind.as_deref() == Some(queue::RESUMED);
    let claims = !resumes && (kind.as_deref() == Some(queue::REPUBLISHED) || possibly_republished(worker, &msg));
    // Every copy takes hold here before it looks at the database (an in-memory lookup), so two copies of one run
    // on this worker (the original and the outbox sweep's copy, say) cannot both pass: one copy is enough.
    let held = match worker.control.begin(msg.run_id) {
        Ok(held) => held,
        Err(AlreadyHeld) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            return;
        }
    };
    let check = if resumes {
        resume_point(worker, &msg).await
    } else if claims {
        claimed_elsewhere(worker, &msg).await
    } else {
        Ok(Check::Fresh)
    };
    let resume = match check {
        Ok(Check::Fresh) => None,
        Ok(Check::Resume(resume)) => Some(resume),
        Ok(Check::Done) => {
            if let Some(to) = &reply_to {
                reply_stored(worker, replies, to, &msg).await;
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            return;
        }
        Ok(Check::CancelRequested) => return finish_cancelled(worker, replies, &msg, delivery, reply_to).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a repeated run message; returning it to the queue");
            requeue(&delivery).await;
            return;
        }
    };
    // An in-memory lookup, no database read: a run cancelled while queued (or one whose cancel this worker heard
    // while it was away, reloaded on reconnect) never starts.
    let Some(held) = held else {
        return finish_cancelled(worker, replies, &msg, delivery, reply_to).await;
    };
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
            let journal = worker.checkpoints.journal(msg.company_id.into(), msg.run_id.into());
            if resume.is_some() {
                // A run that ran before is long by now: checkpoint from its first node on.
                METRICS.runs_resumed.inc();
                journal.mark();
            }
            let first_started = resume.as_ref().and_then(|r| r.started_at);
            let run = RunCtx {
                run_id: msg.run_id,
                company_id: msg.company_id,
                flow_id: msg.flow_id,
                trigger: msg.trigger,
                attempt: msg.attempt,
                depth: 0,
                vars: None,
                deployed_by: flow.deployed_by,
                path: "".into(),
                cancel: held.token(),
                deadline: executor::deadline(
                    flow,
                    worker.config.flow_deadline_max,
                    first_started.unwrap_or_else(Utc::now),
                ),
            };
            let exec = async {
                #[cfg(feature = "failpoints")]
                fail_point(&input);
                let run = RunInput {
                    run,
                    input: &input,
                    resume,
                    journal: Some(journal.clone()),
                    may_park: reply_to.is_none(),
                };
                executor::execute_parking(flow, run, worker.env.clone()).await
            };
            // A panic in a node fails its run instead of leaving the delivery unacked until the channel closes.
            let exec = std::panic::AssertUnwindSafe(exec).catch_unwind();
            tokio::pin!(exec);
            let ended = tokio::select! {
                ended = &mut exec => ended,
                _ = tokio::time::sleep(worker.config.running_mark_after) => {
                    journal.mark();
                    worker.writer.send(Write::Started { company_id: msg.company_id.into(), run_id: msg.run_id.into(), at: Utc::now() }).await;
                    exec.await
                }
            };
            match ended {
                Ok(Ended::Finished(outcome)) => outcome,
                Ok(Ended::Parked(checkpoint)) => {
                    park(worker, &msg, &journal, checkpoint, delivery).await;
                    return;
                }
                Err(_) => {
                    tracing::error!("the run panicked in the worker; failing it as {WORKER_PANICKED}");
                    Outcome::failed_early(
                        WORKER_PANICKED,
                        "the worker failed unexpectedly while running this run; it was stopped",
                    )
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
    drop(held);
    let seconds = (outcome.finished_at - outcome.started_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    METRICS.run_duration.observe(seconds);
    floq_shared::telemetry::run_finished(msg.company_id, outcome.status.as_str(), msg.trigger.as_str(), seconds);
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

/// A cancelled run's message: it ends `cancelled` without running (a no-op
/// for a run the API already cancelled while queued; a run whose cancel was
/// asked while it ran, and whose worker died, ends here), and a waiting
/// caller hears so.
async fn finish_cancelled(
    worker: &Worker,
    replies: &Channel,
    msg: &RunFlowV1,
    delivery: Delivery,
    reply_to: Option<String>,
) {
    let now = Utc::now();
    let outcome = Outcome {
        status: RunStatus::Cancelled,
        output: None,
        error: Some(serde_json::json!({"code": cancel::CODE, "message": cancel::MESSAGE})),
        steps: vec![],
        started_at: now,
        finished_at: now,
        audit: vec![],
    };
    let reply = reply_to
        .and_then(|to| PendingReply::new(replies, &to, reply::from_outcome(msg.run_id, None, &outcome)).map(Box::new));
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

/// For a message that may continue a run (a redelivery, a continuation):
/// takes the run over on this worker's lease and says where it goes on (its
/// checkpoints; none if it never got past the running mark), or `Done` if it
/// is final or gone (retention).
async fn resume_point(worker: &Worker, msg: &RunFlowV1) -> Result<Check, StoreError> {
    let (company_id, run_id) = (msg.company_id.into(), msg.run_id.into());
    let mut tx = db::tenant_tx(&worker.pool, msg.company_id).await?;
    let lease = worker.config.worker_lease;
    let Some(taken) = delivery::take_over(&mut tx, company_id, run_id, worker.id, lease).await? else {
        db::commit(tx).await?;
        return Ok(Check::Done);
    };
    if taken.cancel_requested {
        db::commit(tx).await?;
        return Ok(Check::CancelRequested);
    }
    let saved = checkpoints::load(&mut tx, company_id, run_id).await?;
    db::commit(tx).await?;
    Ok(match saved {
        None => Check::Done,
        Some(saved) if RunStatus::is_final(saved.status) => Check::Done,
        Some(saved) => Check::Resume(Resume {
            steps: saved.steps,
            waits: saved.waits,
            started_at: saved.started_at.or(taken.started_at),
        }),
    })
}

/// Parks a run on a long wait: its checkpoint (with the wait) is written,
/// its message goes to a delay queue, and only then is this delivery acked,
/// freeing its prefetch slot. A nack would count against the queue's
/// delivery limit, so it is used only when the parking could not be
/// recorded: the redelivered run then resumes from what was.
async fn park(
    worker: &Worker,
    msg: &RunFlowV1,
    journal: &crate::checkpoints::Journal,
    checkpoint: floq_shared::runs::checkpoints::Checkpoint,
    delivery: Delivery,
) {
    let Some(wake_at) = checkpoint.wait.as_ref().map(|w| w.wake_at) else {
        requeue(&delivery).await;
        return;
    };
    if !journal.flush(checkpoint).await {
        tracing::warn!("cannot checkpoint a run to park it; returning it to the queue");
        requeue(&delivery).await;
        return;
    }
    let left = (wake_at - Utc::now()).to_std().unwrap_or_default();
    let envelope = Envelope::RunFlowV1(msg.clone());
    let sent = match worker.parking.queue_for(left) {
        Some(queue) => {
            worker
                .publisher
                .park(queue, &envelope, wake_at.timestamp_millis())
                .await
        }
        // Already (nearly) due: straight back.
        None => worker.publisher.resume(std::slice::from_ref(&envelope)).await,
    };
    match sent {
        Ok(()) => {
            METRICS.runs_parked.inc();
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot park a run; returning it to the queue");
            requeue(&delivery).await;
        }
    }
}

/// Whether another copy of a first delivery may exist: the reaper publishes
/// one for a run still `queued` past `FLOQ_REAPER_QUEUED_AFTER_MS`, the
/// outbox sweep one for a run whose outbox row outlived
/// `FLOQ_OUTBOX_SWEEP_AFTER_MS` (its publish was not confirmed, or the row's
/// delete failed, while the original may still arrive). Such a copy claims
/// the run first. Read from the UUID v7 run id and the sweeps this worker
/// heard of (`swept.v1`): no database round trip for a message that did not
/// wait, nor for one accepted after the last sweep.
fn possibly_republished(worker: &Worker, msg: &RunFlowV1) -> bool {
    let Some(ts) = msg.run_id.get_timestamp() else {
        return false;
    };
    let (secs, nanos) = ts.to_unix();
    let accepted = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    let Ok(age) = accepted.elapsed() else {
        return false;
    };
    age > worker.config.reaper_queued_after / 2
        || (age > worker.config.outbox_sweep_after / 2 && worker.control.may_be_swept(accepted))
}

/// The error code of a run whose execution panicked in the worker.
pub const WORKER_PANICKED: &str = "worker_panicked";

/// Test builds only: a run whose input asks for it panics, as a node with a bug would.
#[cfg(feature = "failpoints")]
fn fail_point(input: &serde_json::Value) {
    if input.get("floq_fail_point").and_then(serde_json::Value::as_str) == Some("panic") {
        panic!("fail point: a panicking node");
    }
}

/// For a message the outbox sweep published again: claims the run (`queued`
/// → `running`), or says another copy has it (running or finished). A crashed
/// first copy is redelivered by the broker and runs then.
async fn claimed_elsewhere(worker: &Worker, msg: &RunFlowV1) -> Result<Check, StoreError> {
    let (company_id, run_id) = (msg.company_id.into(), msg.run_id.into());
    let mut tx = db::tenant_tx(&worker.pool, msg.company_id).await?;
    if !delivery::claim(&mut tx, company_id, run_id, worker.id).await? {
        db::commit(tx).await?;
        return Ok(Check::Done);
    }
    // A run the reaper put back in the queue may have run before: it goes on after its checkpoints, never from
    // its first node again.
    let saved = checkpoints::load(&mut tx, company_id, run_id).await?;
    db::commit(tx).await?;
    Ok(match saved {
        Some(saved) if !saved.steps.is_empty() || !saved.waits.is_empty() => Check::Resume(Resume {
            steps: saved.steps,
            waits: saved.waits,
            started_at: saved.started_at,
        }),
        _ => Check::Fresh,
    })
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
