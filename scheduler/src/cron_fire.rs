//! Cron firing: every due schedule creates its runs through `runs::enqueue`,
//! as API and webhook runs are (trigger `cron`, the same outbox message and
//! `run.create` entry), one transaction per schedule under its tenant.
//! A fire is keyed by (schedule, tick), so a tick fires exactly once even
//! with several schedulers or across a leader fail-over.
//!
//! Ticks a little late (under [`GRACE`]) are caught up one by one; beyond
//! that the schedule's misfire policy applies: `skip` drops the missed ticks,
//! `fire_once` fires once for all of them.
//!
//! While the run queues and the outbox are past `FLOQ_BACKLOG_MAX` nothing
//! fires: due schedules stay due (counted in
//! `floq_backpressure_rejections_total{reason="cron_deferred"}` per pass), so
//! a short spell of backpressure delays their ticks and a long one makes
//! them misfires, handled by each schedule's policy. With the broker down,
//! fires go on into the outbox (its backlog counts against the bound).

use chrono::{DateTime, Duration, Utc};
use floq_shared::db::StoreError;
use serde_json::json;
use uuid::Uuid;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::backlog::Backlog;
use floq_shared::cron::CronSchedule;
use floq_shared::db;
use floq_shared::ids::RunId;
use floq_shared::queue::{Envelope, Publisher};
use floq_shared::run::Trigger;
use floq_shared::schedules::{self, Advance, Due, FireKey, Misfire};
use floq_shared::telemetry::METRICS;
use floq_shared::{outbox, runs};

pub use floq_shared::schedules::FIRE_RECORD_KEEP;

/// Late ticks within this are still fired as ticks, not misfires.
pub const GRACE: Duration = Duration::seconds(30);
/// Catch-up is bounded: at most this many ticks per schedule per pass.
const MAX_TICKS: usize = 100;

/// What one pass does with a due schedule.
#[derive(Debug, PartialEq)]
struct Plan {
    /// Ticks to fire, oldest first.
    to_fire: Vec<DateTime<Utc>>,
    /// Ticks missed by more than [`GRACE`].
    missed: usize,
    next_fire_at: Option<DateTime<Utc>>,
}

/// The ticks from `next_fire_at` up to `now`: those within [`GRACE`] fire
/// one by one; older ones are misfires, dropped or (`fire_once`) fired once
/// as the latest of them.
fn plan(cron: &CronSchedule, next_fire_at: DateTime<Utc>, misfire: Misfire, now: DateTime<Utc>) -> Plan {
    let mut ticks = Vec::new();
    let mut tick = next_fire_at;
    while tick <= now && ticks.len() < MAX_TICKS {
        ticks.push(tick);
        match cron.next_after(tick) {
            Some(next) => tick = next,
            None => break,
        }
    }
    let next_fire_at = cron.next_after(now.max(*ticks.last().unwrap_or(&now)));
    let (late, missed): (Vec<_>, Vec<_>) = ticks.into_iter().partition(|t| now - *t <= GRACE);
    let mut to_fire = late;
    if misfire == Misfire::FireOnce
        && let Some(last_missed) = missed.last()
    {
        to_fire.insert(0, *last_missed);
    }
    Plan {
        to_fire,
        missed: missed.len(),
        next_fire_at,
    }
}

/// Fires every due schedule; returns how many runs it started.
pub async fn fire_due(pool: &db::Pool, publisher: &Publisher, backlog: &Backlog) -> anyhow::Result<usize> {
    let mut tx = db::duty_tx(pool, db::Duty::CronDue).await?;
    let due = schedules::due(&mut tx).await?;
    db::commit(tx).await?;
    if !due.is_empty() && backlog.global_full() {
        METRICS
            .backpressure_rejections
            .with_label_values(&["cron_deferred"])
            .inc_by(due.len() as u64);
        tracing::debug!(schedules = due.len(), "the backlog is full; cron fires wait");
        return Ok(0);
    }
    let mut fired = 0;
    for schedule in due {
        match fire(pool, publisher, &schedule).await {
            Ok(n) => fired += n,
            Err(e) => tracing::warn!(schedule = %schedule.id, error = format!("{e:#}"), "firing a schedule failed"),
        }
    }
    Ok(fired)
}

async fn fire(pool: &db::Pool, publisher: &Publisher, due: &Due) -> anyhow::Result<usize> {
    let company_id = due.company_id.as_uuid();
    let schedule_id = due.id.as_uuid();
    let mut tx = db::tenant_tx(pool, company_id).await?;
    let Some(s) = schedules::lock_due(&mut tx, *due).await? else {
        return Ok(0);
    };
    let cron = CronSchedule::parse(&s.cron, &s.timezone)?;
    let now = Utc::now();
    let Plan {
        to_fire,
        missed,
        next_fire_at,
    } = plan(&cron, s.next_fire_at, s.misfire, now);
    let flow_id = s.flow_id.as_uuid();
    let mut envelopes = Vec::new();
    let mut entries = Vec::new();
    for tick in &to_fire {
        let key = FireKey {
            schedule_id: due.id,
            tick: *tick,
        };
        if !schedules::claim_fire(&mut tx, due.company_id, key).await? {
            continue;
        }
        let run_id = Uuid::now_v7();
        let input = json!({"schedule_id": schedule_id, "tick": tick});
        let run = runs::NewRun {
            id: run_id,
            flow_id,
            trigger: Trigger::Cron,
            input: &input,
            grantee: None,
            version: None,
            retry_of: None,
            traceparent: None,
        };
        let created = runs::enqueue(&mut tx, company_id, std::slice::from_ref(&run))
            .await?
            .pop();
        if let Some(run) = &created {
            // The same entry an API or webhook run gets.
            entries.push(
                Entry::new(company_id, Actor::system("scheduler"), "run.create")
                    .resource("run", run_id)
                    .details(json!({
                        "flow_id": flow_id,
                        "trigger": Trigger::Cron,
                        "input": audit::shape(&input),
                        "version": run.version,
                    })),
            );
        }
        let drift_ms = (now - *tick).num_milliseconds();
        schedules::record_fire(&mut tx, due.company_id, key, created.as_ref().map(|_| RunId(run_id))).await?;
        entries.push(
            Entry::new(company_id, Actor::system("scheduler"), "job.cron_fire")
                .resource("schedule", schedule_id)
                .details(json!({
                    "flow_id": flow_id,
                    "tick": tick,
                    "run_id": created.as_ref().map(|_| run_id),
                    "drift_ms": drift_ms,
                    "skipped_reason": if created.is_none() { Some("the flow has no deployed version") } else { None },
                })),
        );
        if let Some(run) = created {
            envelopes.push((run.outbox_id, run.envelope));
        }
    }
    let advance = Advance {
        next_fire_at,
        fired: to_fire.last().map(|t| (*t, (now - *t).num_milliseconds())),
    };
    schedules::advance(&mut tx, due.company_id, due.id, advance).await?;
    if missed > 0 {
        entries.push(
            Entry::new(company_id, Actor::system("scheduler"), "job.cron_misfire")
                .resource("schedule", schedule_id)
                .details(json!({"missed_ticks": missed, "policy": s.misfire})),
        );
    }
    audit::append(&mut tx, &entries).await?;
    db::commit(tx).await?;
    let fired = envelopes.len();
    if !envelopes.is_empty() {
        let messages: Vec<Envelope> = envelopes.iter().map(|(_, e)| e.clone()).collect();
        // On failure the rows stay in the outbox and the sweep publishes them.
        if publisher.publish(&messages).await.is_ok() {
            let ids: Vec<i64> = envelopes.iter().map(|(id, _)| *id).collect();
            let mut tx = db::tenant_tx(pool, company_id).await?;
            outbox::delete_published(&mut tx, company_id.into(), &ids).await?;
            db::commit(tx).await?;
        }
    }
    Ok(fired)
}

/// Trims old fire records (see [`schedules::delete_old_fires`]), as the retention duty.
pub async fn delete_old_fires(tx: &mut db::Tx, limit: i64) -> Result<u64, StoreError> {
    schedules::delete_old_fires(tx, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_tick_within_the_grace_fires_and_the_next_is_after_now() {
        let cron = CronSchedule::parse("*/5 * * * *", "UTC").unwrap();
        let p = plan(
            &cron,
            utc("2026-01-10T10:05:00Z"),
            Misfire::Skip,
            utc("2026-01-10T10:05:20Z"),
        );
        assert_eq!(p.to_fire, [utc("2026-01-10T10:05:00Z")]);
        assert_eq!(p.missed, 0);
        assert_eq!(p.next_fire_at, Some(utc("2026-01-10T10:10:00Z")));
    }

    #[test]
    fn missed_ticks_are_dropped_or_fired_once_by_policy() {
        let cron = CronSchedule::parse("*/5 * * * *", "UTC").unwrap();
        let (from, now) = (utc("2026-01-10T10:00:00Z"), utc("2026-01-10T10:17:00Z"));
        let skip = plan(&cron, from, Misfire::Skip, now);
        assert_eq!((skip.to_fire.len(), skip.missed), (0, 4));
        assert_eq!(skip.next_fire_at, Some(utc("2026-01-10T10:20:00Z")));
        let once = plan(&cron, from, Misfire::FireOnce, now);
        assert_eq!(once.to_fire, [utc("2026-01-10T10:15:00Z")]);
        assert_eq!(once.next_fire_at, skip.next_fire_at);
    }

    /// Fall back in Berlin (2026-10-25, 03:00 CEST → 02:00 CET): 02:30 local
    /// happens twice and fires once, so a pass planning across the change
    /// claims one fire key for it, and a second pass over the same span plans
    /// the same keys (which the first already claimed).
    #[test]
    fn across_fall_back_each_wall_clock_tick_has_one_fire_key() {
        let cron = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let first = utc("2026-10-25T00:30:00Z"); // 02:30 CEST
        let now = first + Duration::seconds(10);
        let p = plan(&cron, first, Misfire::Skip, now);
        assert_eq!(p.to_fire, [first]);
        // The repeated 02:30 (01:30Z, CET) is not a tick: the next is the next day's.
        assert_eq!(p.next_fire_at, Some(utc("2026-10-26T01:30:00Z")));
        let schedule_id = floq_shared::ids::ScheduleId(Uuid::now_v7());
        let keys = |p: &Plan| -> Vec<FireKey> {
            p.to_fire
                .iter()
                .map(|tick| FireKey {
                    schedule_id,
                    tick: *tick,
                })
                .collect()
        };
        assert_eq!(keys(&plan(&cron, first, Misfire::Skip, now)), keys(&p));
    }

    /// Spring forward in Berlin (2026-03-29, 02:00 CET → 03:00 CEST): 02:30
    /// local does not exist and fires once, at 03:00 CEST.
    #[test]
    fn across_spring_forward_the_skipped_tick_fires_once_after_the_gap() {
        let cron = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let before = utc("2026-03-28T01:30:00Z"); // 02:30 CET the day before
        let next = cron.next_after(before).unwrap();
        assert_eq!(next, utc("2026-03-29T01:00:00Z")); // 03:00 CEST
        let p = plan(&cron, next, Misfire::Skip, next + Duration::seconds(1));
        assert_eq!(p.to_fire, [next]);
        assert_eq!(p.next_fire_at, Some(utc("2026-03-30T00:30:00Z")));
    }
}
