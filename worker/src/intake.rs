//! Takes runs from the broker and shares this worker's capacity fairly
//! between companies (design §5, "noisy neighbours").
//!
//! One consumer per shard queue (and one on the queue from before sharding),
//! each with its own prefetch, so a company flooding its shard cannot fill
//! the window of the others. Deliveries wait here, per company, and start
//! when an execution slot is free (`FLOQ_WORKER_PREFETCH` slots), taking the
//! companies in turn (round-robin, one run each per turn) and skipping a
//! company that already holds `FLOQ_WORKER_COMPANY_CONCURRENCY` slots, so one
//! company's long runs never take every slot. Each delivery is then handled
//! by [`consumer::handle`], as before.
//!
//! On shutdown the consumers are cancelled at once; what waits here and was
//! never started, and what is still running when `FLOQ_SHUTDOWN_GRACE_MS`
//! ends, is handed back as a continuation ([`Publisher::resume`]) and acked,
//! so it does not count against the queue's delivery limit and goes on from
//! its checkpoint on another worker.
//!
//! Companies that hash to the same shard share its order on the broker: a
//! backlog of one delays the other by up to that shard's prefetch window
//! (it still gets slots once its runs reach this worker).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::consumer::{self, Worker};
use floq_shared::queue::{self, Envelope, Publisher, Topology};
use floq_shared::telemetry::METRICS;

/// Consumes until `shutdown`, reconnecting after broker failures. Returns the
/// last connection, to be closed only once the outcome writer has acked
/// what finished during the drain.
pub async fn consume(
    worker: Arc<Worker>,
    topology: Topology,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
    broker_up: Arc<AtomicBool>,
) -> Option<Connection> {
    let mut intake = Intake::new(&worker, &topology);
    let mut last = None;
    while !shutdown.is_cancelled() {
        match consume_once(&worker, &topology, &publisher, &shutdown, &mut intake, &broker_up).await {
            Ok(conn) => last = Some(conn),
            Err(e) => {
                broker_up.store(false, Ordering::Relaxed);
                METRICS.broker_up.set(0);
                // Whatever waited here belonged to the lost channel: the broker delivers it again.
                intake.forget_waiting();
                tracing::error!(error = %e, "consuming from RabbitMQ failed; reconnecting in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    // Runs started on a channel that was lost since: their messages are back on the broker already.
    intake.drain(&worker, &publisher).await;
    last
}

/// A delivery waiting for a slot, or one running.
struct Held {
    company: Uuid,
    shard: usize,
    delivery: Delivery,
}

/// What the intake keeps of a running delivery, to hand it back if the grace runs out.
struct Running {
    company: Uuid,
    shard: usize,
    acker: Acker,
    data: Vec<u8>,
}

struct Intake {
    /// Whether a connection consumed before: the next one is a reconnect.
    consumed_before: bool,
    slots: usize,
    company_cap: usize,
    /// Labels for the per-shard metrics (the last is the queue from before sharding).
    shard_labels: Vec<String>,
    waiting: HashMap<Uuid, VecDeque<Held>>,
    /// Companies with waiting deliveries, in the order they get their next turn.
    turns: VecDeque<Uuid>,
    in_flight: HashMap<Uuid, usize>,
    tasks: JoinSet<()>,
    running: HashMap<tokio::task::Id, Running>,
}

impl Intake {
    fn new(worker: &Worker, topology: &Topology) -> Self {
        let slots = usize::from(worker.config.worker_prefetch.max(1));
        let mut shard_labels: Vec<String> = (0..topology.shards.len()).map(|n| n.to_string()).collect();
        shard_labels.push("legacy".into());
        Self {
            consumed_before: false,
            slots,
            company_cap: usize::from(worker.config.worker_company_concurrency).clamp(1, slots),
            shard_labels,
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            in_flight: HashMap::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
        }
    }

    /// Each shard's prefetch: a company's share of the slots plus an even
    /// share of the rest, so a shard holding one busy company keeps enough
    /// waiting to fill its share, and the others' windows stay open.
    fn shard_prefetch(&self, queues: usize) -> u16 {
        let window = self.company_cap + self.slots.div_ceil(queues.max(1));
        window.min(self.slots).clamp(1, usize::from(u16::MAX)) as u16
    }

    fn waiting_len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    fn hold(&mut self, shard: usize, delivery: Delivery) {
        let company = company_of(&delivery.data);
        let queue = self.waiting.entry(company).or_default();
        if queue.is_empty() {
            self.turns.push_back(company);
        }
        queue.push_back(Held {
            company,
            shard,
            delivery,
        });
        METRICS.worker_waiting.inc();
    }

    /// Starts waiting deliveries while slots are free: companies in turn,
    /// skipping those at their cap.
    fn dispatch(&mut self, worker: &Arc<Worker>, replies: &Channel) {
        let mut passed = 0;
        while self.tasks.len() < self.slots && passed < self.turns.len() {
            let Some(company) = self.turns.pop_front() else { break };
            let held = self.in_flight.get(&company).copied().unwrap_or(0);
            if held >= self.company_cap {
                self.turns.push_back(company);
                passed += 1;
                continue;
            }
            passed = 0;
            let Some(queue) = self.waiting.get_mut(&company) else {
                continue;
            };
            let Some(next) = queue.pop_front() else { continue };
            if queue.is_empty() {
                self.waiting.remove(&company);
            } else {
                self.turns.push_back(company);
            }
            METRICS.worker_waiting.dec();
            self.start(worker, replies, next);
        }
        if passed > 0 && self.tasks.len() < self.slots {
            // Free slots, and every company with waiting runs is at its cap.
            for company in &self.turns {
                if let Some(shard) = self.waiting.get(company).and_then(|q| q.front()).map(|h| h.shard) {
                    METRICS
                        .worker_company_at_cap
                        .with_label_values(&[self.shard_labels[shard].as_str()])
                        .inc();
                }
            }
        }
    }

    fn start(&mut self, worker: &Arc<Worker>, replies: &Channel, held: Held) {
        let Held {
            company,
            shard,
            delivery,
        } = held;
        *self.in_flight.entry(company).or_default() += 1;
        let label = self.shard_labels[shard].as_str();
        METRICS.worker_runs_started.with_label_values(&[label]).inc();
        METRICS.worker_shard_inflight.with_label_values(&[label]).inc();
        let running = Running {
            company,
            shard,
            acker: delivery.acker.clone(),
            data: delivery.data.clone(),
        };
        let (worker, replies) = (worker.clone(), replies.clone());
        let task = self
            .tasks
            .spawn(async move { consumer::handle(&worker, &replies, delivery).await });
        self.running.insert(task.id(), running);
    }

    fn finished(&mut self, id: tokio::task::Id) {
        let Some(done) = self.running.remove(&id) else { return };
        METRICS
            .worker_shard_inflight
            .with_label_values(&[self.shard_labels[done.shard].as_str()])
            .dec();
        if let Some(n) = self.in_flight.get_mut(&done.company) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&done.company);
            }
        }
    }

    fn forget_waiting(&mut self) {
        METRICS.worker_waiting.sub(self.waiting_len() as i64);
        self.waiting.clear();
        self.turns.clear();
    }

    /// Hands back what waits here (never started) and returns once it is on the broker.
    async fn hand_back_waiting(&mut self, publisher: &Publisher) {
        let held: Vec<Held> = self.waiting.drain().flat_map(|(_, q)| q).collect();
        self.turns.clear();
        METRICS.worker_waiting.sub(held.len() as i64);
        let back: Vec<(Acker, Vec<u8>)> = held.into_iter().map(|h| (h.delivery.acker, h.delivery.data)).collect();
        hand_back(publisher, back, "waiting").await;
    }

    /// Lets running runs finish within the grace, then hands back the rest.
    async fn drain(&mut self, worker: &Worker, publisher: &Publisher) {
        let grace = worker.config.shutdown_grace;
        let finished = tokio::time::timeout(grace, async {
            while let Some(done) = self.tasks.join_next_with_id().await {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                self.finished(id);
            }
        })
        .await;
        if finished.is_ok() {
            return;
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let back: Vec<(Acker, Vec<u8>)> = self
            .running
            .drain()
            .map(|(_, r)| (r.acker, r.data))
            .filter(|(acker, _)| acker.usable())
            .collect();
        tracing::warn!(
            runs = back.len(),
            grace_ms = grace.as_millis() as u64,
            "runs still in flight when the shutdown grace ended; handing them back"
        );
        hand_back(publisher, back, "running").await;
    }
}

/// Publishes a continuation of each message, then acks the original: the
/// run goes on elsewhere without a delivery counted against its limit. If
/// the broker does not confirm, nothing is acked and the broker returns the
/// originals when the channel closes.
async fn hand_back(publisher: &Publisher, back: Vec<(Acker, Vec<u8>)>, what: &'static str) {
    if back.is_empty() {
        return;
    }
    let mut envelopes = Vec::with_capacity(back.len());
    let mut ackers = Vec::with_capacity(back.len());
    for (acker, data) in back {
        match serde_json::from_slice::<Envelope>(&data) {
            Ok(envelope) => {
                envelopes.push(envelope);
                ackers.push(acker);
            }
            // As `consumer::handle` would: an undecodable message goes to the dead letters.
            Err(_) => {
                let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
            }
        }
    }
    match publisher.resume(&envelopes).await {
        Ok(()) => {
            for acker in ackers {
                let _ = acker.ack(BasicAckOptions::default()).await;
            }
            METRICS
                .worker_handed_back
                .with_label_values(&[what])
                .inc_by(envelopes.len() as u64);
            tracing::info!(runs = envelopes.len(), what, "handed runs back to the queue");
        }
        Err(e) => tracing::warn!(
            error = %e,
            runs = envelopes.len(),
            "cannot hand runs back; the broker returns them when the channel closes"
        ),
    }
}

/// The company a message belongs to, without decoding all of it; an
/// undecodable message gets the nil id (its handling only dead-letters it).
fn company_of(data: &[u8]) -> Uuid {
    #[derive(serde::Deserialize)]
    struct Peek {
        company_id: Uuid,
    }
    serde_json::from_slice::<Peek>(data).map_or(Uuid::nil(), |p| p.company_id)
}

async fn consume_once(
    worker: &Arc<Worker>,
    topology: &Topology,
    publisher: &Publisher,
    shutdown: &CancellationToken,
    intake: &mut Intake,
    broker_up: &AtomicBool,
) -> anyhow::Result<Connection> {
    let conn = queue::connect(worker.config.amqp_url.expose()).await?;
    let channel = conn.create_channel().await?;
    // Replies to synchronous callers go out here, apart from the deliveries' channel.
    let replies = conn.create_channel().await?;
    topology.declare(&channel, worker.config.queue_delivery_limit).await?;
    let queues: Vec<&str> = topology.run_queues().collect();
    let prefetch = intake.shard_prefetch(queues.len());
    // Without `global`, a prefetch applies to each consumer created after it on the channel.
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut tags = Vec::with_capacity(queues.len());
    let mut consumers = Vec::with_capacity(queues.len());
    let id = Uuid::new_v4();
    for (shard, queue) in queues.iter().enumerate() {
        let tag = format!("floq-worker-{id}-{shard}");
        let consumer = channel
            .basic_consume(
                (*queue).into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tags.push(tag);
        consumers.push(consumer.map(move |d| (shard, d)));
    }
    let mut deliveries = futures_util::stream::select_all(consumers);
    broker_up.store(true, Ordering::Relaxed);
    METRICS.broker_up.set(1);
    if std::mem::replace(&mut intake.consumed_before, true) {
        METRICS.broker_reconnects.with_label_values(&["consumer"]).inc();
    }
    tracing::info!(
        queues = queues.len(),
        prefetch,
        slots = intake.slots,
        company_cap = intake.company_cap,
        "consuming runs"
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => match next {
                Some((shard, Ok(delivery))) => {
                    intake.hold(shard, delivery);
                    intake.dispatch(worker, &replies);
                }
                Some((_, Err(e))) => return Err(e.into()),
                None => anyhow::bail!("the broker closed the consumers"),
            },
            Some(done) = intake.tasks.join_next_with_id(), if !intake.tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                intake.finished(id);
                intake.dispatch(worker, &replies);
            }
        }
    }
    // Stop taking work at once; what is already on its way still arrives, and is handed back with the rest.
    for tag in &tags {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    while let Ok(Some((shard, Ok(delivery)))) =
        tokio::time::timeout(Duration::from_millis(100), deliveries.next()).await
    {
        intake.hold(shard, delivery);
    }
    intake.hand_back_waiting(publisher).await;
    // The channel stays open while in-flight runs finish, so their acks land.
    intake.drain(worker, publisher).await;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_company_is_read_from_the_message_or_is_nil() {
        let company = Uuid::now_v7();
        let message = serde_json::json!({"kind": "run_flow.v1", "run_id": Uuid::now_v7(), "company_id": company});
        assert_eq!(company_of(message.to_string().as_bytes()), company);
        assert_eq!(company_of(b"{\"kind\": \"run_flow.v99\"}"), Uuid::nil());
        assert_eq!(company_of(b"\xff"), Uuid::nil());
    }
}
