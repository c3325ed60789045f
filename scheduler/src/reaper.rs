//! The reaper (a leader duty): finds runs that lost their way and sends them
//! on, so no run stays unfinished without a reason an operator can read.
//!
//! * A run `running` on a worker whose lease (heartbeat) is older than
//!   `FLOQ_WORKER_LEASE_MS` goes back to the queue as a continuation
//!   (`Publisher::resume`) with one more attempt, or fails `worker_lost` once
//!   it has had `FLOQ_QUEUE_DELIVERY_LIMIT` attempts.
//! * A run still `queued` `FLOQ_REAPER_QUEUED_AFTER_MS` after acceptance
//!   whose outbox row is gone (its message was published, then lost: a
//!   purged queue, a broker that lost it) is published again
//!   (`Publisher::republish`: the copy claims the run only while it is still
//!   queued, and a worker also claims any first delivery older than half
//!   that bound, so the original, if it was only slow, and the copy never
//!   both run).
//!
//! A heartbeat is only evidence of death if the workers could have written
//! one: after a database outage every heartbeat is old, although the workers
//! are alive and beat again within a third of a lease. So the reaper judges
//! leases only once it has itself watched the database without a gap for a
//! whole lease (a new leadership, or a tick that failed or came late, starts
//! that watch again), and a run of a live worker is never handed on because
//! the database, not the worker, was away.
//!
//! Runs are found across companies by id only (the reaper duty, through the
//! functions of migration 0025) and sent on in their own tenant transaction,
//! each moved only from the state it was found in; the message is published
//! before that transaction commits, so a failed publish leaves the run to
//! the next tick.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::db::{self, Duty, Pool};
use floq_shared::ids::{CompanyId, RunId};
use floq_shared::queue::Publisher;
use floq_shared::runs::{lost, outcomes};
use floq_shared::telemetry::METRICS;
use floq_shared::{Config, workers};

/// The error code of a run whose worker was lost once it had no attempts left.
pub const WORKER_LOST: &str = "worker_lost";

/// Lost running runs handled per tick.
const RUNNING_BATCH: i64 = 500;
/// Runs one tick's pass over recently aged queued runs reads at most.
const QUEUED_SCAN: i64 = 50_000;
/// Workers silent this long are forgotten; their runs were reaped long before.
const FORGET_WORKERS_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// How often the reaper runs: a few times per lease, at most every 10 s.
pub fn interval(config: &Config) -> Duration {
    (config.worker_lease / 2).clamp(Duration::from_millis(250), Duration::from_secs(10))
}

/// The reaper's memory between ticks of one leadership: how far its pass
/// over queued runs has come (a run id; ids are UUID v7, so time-ordered).
pub struct Reaper {
    scanned_to: Uuid,
    watch: Watch,
}

impl Reaper {
    /// A new leader looks back one more bound, to cover runs that aged while no one led.
    pub fn new(config: &Config) -> Self {
        Self {
            scanned_to: v7_bound(SystemTime::now() - config.reaper_queued_after * 2, false),
            watch: Watch::new(Instant::now(), config.worker_lease, interval(config)),
        }
    }

    pub async fn tick(&mut self, pool: &Pool, publisher: &Publisher, config: &Config) -> anyhow::Result<()> {
        let result = self.tick_once(pool, publisher, config).await;
        self.watch.ticked(Instant::now(), result.is_ok());
        result
    }

    async fn tick_once(&mut self, pool: &Pool, publisher: &Publisher, config: &Config) -> anyhow::Result<()> {
        if self.watch.may_judge_leases(Instant::now()) {
            self.running(pool, publisher, config).await?;
        } else {
            tracing::debug!("not judging worker leases until the reaper has watched the database for a whole lease");
        }
        self.queued(pool, publisher, config).await?;
        let mut tx = db::duty_tx(pool, Duty::Reaper).await?;
        workers::forget_dead(&mut tx, FORGET_WORKERS_AFTER).await?;
        db::commit(tx).await?;
        Ok(())
    }

    async fn running(&mut self, pool: &Pool, publisher: &Publisher, config: &Config) -> anyhow::Result<()> {
        let asked = Instant::now();
        let mut tx = db::duty_tx(pool, Duty::Reaper).await?;
        let found = lost::running(&mut tx, config.worker_lease, RUNNING_BATCH).await?;
        db::commit(tx).await?;
        if asked.elapsed() > self.watch.gap {
            // The database hung while answering (frozen, overloaded): the heartbeats it judged are not evidence.
            self.watch.restart(Instant::now());
            return Ok(());
        }
        let max_attempts = i32::try_from(config.queue_delivery_limit).unwrap_or(i32::MAX);
        for run in found {
            let (company_id, run_id) = (CompanyId(run.company_id), RunId(run.run_id));
            let mut tx = db::tenant_tx(pool, run.company_id).await?;
            let action = match lost::requeue_running(&mut tx, company_id, run_id, run.worker_id, max_attempts).await? {
                Some(envelope) => {
                    publisher.resume(std::slice::from_ref(&envelope)).await?;
                    "resumed"
                }
                None => {
                    let error = json!({
                        "code": WORKER_LOST,
                        "message": format!(
                            "the worker running this run stopped renewing its lease (FLOQ_WORKER_LEASE_MS) \
                             and the run had used all {max_attempts} attempts (FLOQ_QUEUE_DELIVERY_LIMIT)"
                        ),
                    });
                    if !outcomes::fail_lost(&mut tx, company_id, run_id, run.worker_id, &error).await? {
                        // Another worker took it over meanwhile.
                        continue;
                    }
                    "failed"
                }
            };
            audit::append(
                &mut tx,
                &[entry(run.company_id, run.run_id, action, Some(run.worker_id))],
            )
            .await?;
            db::commit(tx).await?;
            METRICS.runs_reaped.with_label_values(&[action]).inc();
            tracing::warn!(run.id = %run.run_id, company.id = %run.company_id, worker.id = %run.worker_id, action,
                "reaped a run whose worker's lease expired");
        }
        Ok(())
    }

    async fn queued(&mut self, pool: &Pool, publisher: &Publisher, config: &Config) -> anyhow::Result<()> {
        let aged = SystemTime::now() - config.reaper_queued_after;
        let mut tx = db::duty_tx(pool, Duty::Reaper).await?;
        let found = lost::queued(
            &mut tx,
            self.scanned_to,
            v7_bound(aged, true),
            QUEUED_SCAN,
            Utc::now() - config.reaper_queued_after,
        )
        .await?;
        db::commit(tx).await?;
        let mut by_company: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for (company_id, run_id) in found.runs {
            by_company.entry(company_id).or_default().push(run_id);
        }
        for (company_id, runs) in by_company {
            let mut tx = db::tenant_tx(pool, company_id).await?;
            let mut envelopes = Vec::with_capacity(runs.len());
            for run_id in runs {
                if let Some(envelope) = lost::requeue_queued(&mut tx, CompanyId(company_id), RunId(run_id)).await? {
                    envelopes.push(envelope);
                }
            }
            if envelopes.is_empty() {
                continue;
            }
            publisher.republish(&envelopes).await?;
            let entries: Vec<Entry> = envelopes
                .iter()
                .map(|e| entry(company_id, e.run_id(), "republished", None))
                .collect();
            audit::append(&mut tx, &entries).await?;
            db::commit(tx).await?;
            METRICS
                .runs_reaped
                .with_label_values(&["republished"])
                .inc_by(envelopes.len() as u64);
            tracing::warn!(company.id = %company_id, runs = envelopes.len(),
                "republished runs still queued long after their message was published");
        }
        // Only once everything found is sent on: a failure above scans the same range again.
        if let Some(to) = found.scanned_to {
            self.scanned_to = to;
        }
        Ok(())
    }
}

/// Since when the reaper has watched the database without a gap: leases
/// are judged only after one whole lease of watching.
#[derive(Debug)]
struct Watch {
    since: Instant,
    last_ok: Instant,
    lease: Duration,
    /// A gap longer than this between good ticks means the database (or this
    /// process) was away: the watch starts again.
    gap: Duration,
}

impl Watch {
    fn new(now: Instant, lease: Duration, interval: Duration) -> Self {
        Self {
            since: now,
            last_ok: now,
            lease,
            gap: interval * 2 + Duration::from_secs(1),
        }
    }

    fn restart(&mut self, now: Instant) {
        self.since = now;
    }

    fn ticked(&mut self, now: Instant, ok: bool) {
        if !ok {
            self.restart(now);
            return;
        }
        if now.duration_since(self.last_ok) > self.gap {
            self.since = now;
        }
        self.last_ok = now;
    }

    fn may_judge_leases(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= self.lease && now.duration_since(self.last_ok) <= self.gap
    }
}

fn entry(company_id: Uuid, run_id: Uuid, action: &str, worker_id: Option<Uuid>) -> Entry {
    Entry::new(company_id, Actor::system("scheduler"), "job.reaper")
        .resource("run", run_id)
        .details(json!({"action": action, "worker_id": worker_id}))
}

/// The lowest (or highest) UUID v7 of the millisecond `at`: run ids sort by
/// acceptance time, so this bounds a range of runs by time.
fn v7_bound(at: SystemTime, highest: bool) -> Uuid {
    let ms = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let mut bytes = [if highest { 0xff } else { 0 }; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_judged_only_after_a_whole_lease_of_watching_without_a_gap() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut watch = Watch::new(t0, s(30), s(10));
        assert!(!watch.may_judge_leases(t0 + s(5)), "a new leader waits");
        for t in [10, 20, 30] {
            watch.ticked(t0 + s(t), true);
        }
        assert!(watch.may_judge_leases(t0 + s(30)));
        // The database was away for 60 s: the ticks failed, then came back.
        watch.ticked(t0 + s(40), false);
        assert!(!watch.may_judge_leases(t0 + s(50)));
        watch.ticked(t0 + s(100), true);
        assert!(
            !watch.may_judge_leases(t0 + s(110)),
            "every heartbeat is old after an outage"
        );
        for t in [110, 120, 130] {
            watch.ticked(t0 + s(t), true);
        }
        assert!(watch.may_judge_leases(t0 + s(130)));
        // A tick that hung (a frozen database) counts as a gap too.
        watch.ticked(t0 + s(200), true);
        assert!(!watch.may_judge_leases(t0 + s(200)));
        for t in [210, 220, 230] {
            watch.ticked(t0 + s(t), true);
        }
        assert!(watch.may_judge_leases(t0 + s(230)));
    }

    #[test]
    fn bounds_enclose_every_run_id_of_their_millisecond() {
        let now = SystemTime::now();
        let id = Uuid::now_v7();
        let (lo, hi) = (
            v7_bound(now - Duration::from_millis(5), false),
            v7_bound(now + Duration::from_millis(5), true),
        );
        assert!(lo < id && id < hi, "{lo} < {id} < {hi}");
        assert!(v7_bound(now - Duration::from_secs(1), true) < id);
    }
}
