//! Backpressure: how far runs are backed up, sampled in the background so
//! that a trigger pays nothing but a few atomic loads to be refused.
//!
//! Every [`SAMPLE_INTERVAL`] a replica (API or scheduler) reads the run
//! queues' depth (a passive declare per queue) and the outbox backlog (one
//! count, bounded by `FLOQ_BACKLOG_MAX`). Past `FLOQ_BACKLOG_MAX` together,
//! triggers are refused with `backlog_full`. A company's own backlog is
//! counted only when its shard queue plus the outbox could hold more than
//! `FLOQ_COMPANY_BACKLOG_MAX` (any company's backlog is at most that): the
//! companies whose triggers arrived in that state are counted in the
//! database at the next sample, at most [`COUNTS_PER_SAMPLE`] of them, and
//! those over the bound are refused with `company_backlog_full` until a
//! sample finds them under it again.
//!
//! While the broker is unreachable the last queue depths stand and the
//! outbox (where accepted runs then wait) keeps growing up to the bound.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Config;
use crate::db::{self, Pool};
use crate::queue::{self, Topology};
use crate::telemetry::METRICS;

pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// Companies whose backlog one sample counts in the database, at most.
pub const COUNTS_PER_SAMPLE: usize = 32;
/// What a refused trigger is told to wait (`Retry-After`), in seconds.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Why a trigger is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    /// The run queues and the outbox together hold more than `FLOQ_BACKLOG_MAX`.
    Full,
    /// The company has more than `FLOQ_COMPANY_BACKLOG_MAX` runs queued.
    CompanyFull,
}

impl Pressure {
    /// The error code and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Full => "backlog_full",
            Pressure::CompanyFull => "company_backlog_full",
        }
    }
}

pub struct Backlog {
    topology: Topology,
    amqp_url: String,
    delivery_limit: u32,
    global_max: u64,
    company_max: u64,
    /// Messages ready per run queue ([`Topology::run_queues`] order), as last sampled.
    depths: Vec<AtomicU64>,
    queued: AtomicU64,
    outbox: AtomicU64,
    broker_up: AtomicBool,
    /// Whether the sampler ever reached the broker: a connection after that is a reconnect.
    ever_connected: AtomicBool,
    /// Companies that triggered while their shard could hold more than their bound.
    suspects: Mutex<HashSet<Uuid>>,
    /// Companies the last count found over their bound.
    over: RwLock<HashSet<Uuid>>,
}

impl Backlog {
    pub fn new(config: &Config) -> Arc<Self> {
        let topology = Topology::from_config(config);
        let depths = topology.run_queues().map(|_| AtomicU64::new(0)).collect();
        Arc::new(Self {
            topology,
            amqp_url: config.amqp_url.expose().to_string(),
            delivery_limit: config.queue_delivery_limit,
            global_max: config.backlog_max,
            company_max: config.company_backlog_max,
            depths,
            queued: AtomicU64::new(0),
            outbox: AtomicU64::new(0),
            // Until the first sample says otherwise.
            broker_up: AtomicBool::new(true),
            ever_connected: AtomicBool::new(false),
            suspects: Mutex::default(),
            over: RwLock::default(),
        })
    }

    /// Whether a run of this company may be accepted now. No I/O.
    pub fn check(&self, company_id: Uuid) -> Result<(), Pressure> {
        if self.global_full() {
            return Err(Pressure::Full);
        }
        if self.company_could_be_over(company_id) {
            self.suspects
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(company_id);
            if self
                .over
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&company_id)
            {
                return Err(Pressure::CompanyFull);
            }
        }
        Ok(())
    }

    /// The queues and the outbox together are past `FLOQ_BACKLOG_MAX`.
    pub fn global_full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) + self.outbox.load(Ordering::Relaxed) > self.global_max
    }

    /// Whether the last sample reached the broker.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// A company's backlog is at most its shard's depth plus the outbox.
    fn company_could_be_over(&self, company_id: Uuid) -> bool {
        let shard = self.topology.shard_of(company_id);
        self.depths[shard].load(Ordering::Relaxed) + self.outbox.load(Ordering::Relaxed) > self.company_max
    }

    /// Samples every [`SAMPLE_INTERVAL`] until `shutdown`.
    pub fn spawn(self: &Arc<Self>, pool: Pool, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut broker: Option<(Connection, Channel)> = None;
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                this.sample(&pool, &mut broker).await;
            }
            if let Some((conn, _)) = broker {
                let _ = conn.close(0, "shutting down".into()).await;
            }
        })
    }

    async fn sample(&self, pool: &Pool, broker: &mut Option<(Connection, Channel)>) {
        match self.sample_queues(broker).await {
            Ok(()) => {
                self.broker_up.store(true, Ordering::Relaxed);
                METRICS.broker_up.set(1);
            }
            Err(e) => {
                METRICS.broker_up.set(0);
                if self.broker_up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot sample the run queues: the broker is unreachable; accepting into the outbox");
                }
                *broker = None;
            }
        }
        match self.sample_outbox(pool).await {
            Ok(n) => {
                self.outbox.store(n, Ordering::Relaxed);
                METRICS.outbox_backlog.set(n as i64);
            }
            Err(e) => tracing::debug!(error = %e, "cannot sample the outbox backlog; keeping the last figure"),
        }
        self.count_companies(pool).await;
    }

    async fn sample_queues(&self, broker: &mut Option<(Connection, Channel)>) -> anyhow::Result<()> {
        if broker
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            let reconnecting = broker.is_some() || self.ever_connected.swap(true, Ordering::Relaxed);
            *broker = None;
            let conn = queue::connect(&self.amqp_url).await?;
            let channel = conn.create_channel().await?;
            if reconnecting {
                METRICS.broker_reconnects.with_label_values(&["sampler"]).inc();
            }
            // Declared here too, so a replica that started while the broker was down finds its queues.
            self.topology.declare(&channel, self.delivery_limit).await?;
            *broker = Some((conn, channel));
        }
        let Some((_, channel)) = broker.as_ref() else {
            return Ok(());
        };
        let (mut total, mut consumers) = (0, 0);
        for (queue, slot) in self.topology.run_queues().zip(&self.depths) {
            let declared = channel
                .queue_declare(
                    queue.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await?;
            let depth = u64::from(declared.message_count());
            slot.store(depth, Ordering::Relaxed);
            total += depth;
            consumers += i64::from(declared.consumer_count());
        }
        self.queued.store(total, Ordering::Relaxed);
        METRICS.queue_jobs_waiting.set(total as i64);
        METRICS.queue_consumers.set(consumers);
        Ok(())
    }

    async fn sample_outbox(&self, pool: &Pool) -> Result<u64, db::StoreError> {
        let limit = i64::try_from(self.global_max.saturating_add(1)).unwrap_or(i64::MAX);
        let mut tx = db::duty_tx(pool, db::Duty::OutboxSweep).await?;
        let n = crate::outbox::pending_up_to(&mut tx, limit).await?;
        db::commit(tx).await?;
        Ok(n.max(0) as u64)
    }

    /// Counts the suspects, and those already over (to release them), in the database.
    async fn count_companies(&self, pool: &Pool) {
        let mut todo: Vec<Uuid> = self
            .over
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        {
            let mut suspects = self.suspects.lock().unwrap_or_else(PoisonError::into_inner);
            let room = COUNTS_PER_SAMPLE.saturating_sub(todo.len());
            let picked: Vec<Uuid> = suspects.iter().copied().take(room).collect();
            for c in &picked {
                suspects.remove(c);
            }
            todo.extend(picked);
        }
        if todo.is_empty() {
            return;
        }
        // A window a little past the bound: passing it shows among the newest runs.
        let window = i64::try_from(self.company_max.saturating_mul(2).saturating_add(1)).unwrap_or(i64::MAX);
        let mut over = HashSet::new();
        for company in todo {
            if !self.company_could_be_over(company) {
                continue;
            }
            let counted = async {
                let mut tx = db::tenant_tx(pool, company).await?;
                let n = crate::runs::backlog::queued_among_newest(&mut tx, company, window).await?;
                db::commit(tx).await?;
                Ok::<_, db::StoreError>(n)
            };
            match counted.await {
                Ok(n) if n.max(0) as u64 > self.company_max => {
                    over.insert(company);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, company.id = %company, "cannot count a company's backlog");
                    if self
                        .over
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&company)
                    {
                        over.insert(company);
                    }
                }
            }
        }
        *self.over.write().unwrap_or_else(PoisonError::into_inner) = over;
    }
}
