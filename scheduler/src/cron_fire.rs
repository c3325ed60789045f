//! Cron firing: every due schedule creates its runs through `runs::enqueue`,
//! as API and webhook runs are (trigger `cron`, the same outbox message and
//! `run.create` entry), one transaction per schedule under its tenant.
//! A fire is keyed by (schedule, tick), so a tick fires exactly once even
//! with several schedulers or across a leader fail-over.
//!
//! Ticks a little late (under [`GRACE`]) are caught up one by one; beyond
//! that the schedule's misfire policy applies: `skip` drops the missed ticks,
//! `fire_once` fires once for all of them.

use chrono::{DateTime, Duration, Utc};
use floq_shared::db::StoreError;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::cron::CronSchedule;
use floq_shared::db;
use floq_shared::queue::{Envelope, Publisher};
use floq_shared::run::Trigger;
use floq_shared::runs;

/// Late ticks within this are still fired as ticks, not misfires.
pub const GRACE: Duration = Duration::seconds(30);
/// Catch-up is bounded: at most this many ticks per schedule per pass.
const MAX_TICKS: usize = 100;
/// How long a fire record is kept. It keys its tick only until the fire's
/// transaction moves `next_fire_at` past that tick (no pass looks at an
/// earlier tick again); a day leaves room for inspection. The row-level
/// policy in `migrations/0019_bounded_work.sql` says the same.
pub const FIRE_RECORD_KEEP: Duration = Duration::days(1);

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    company_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct Schedule {
    flow_id: Uuid,
    cron: String,
    timezone: String,
    misfire: String,
    next_fire_at: DateTime<Utc>,
}

/// Fires every due schedule; returns how many runs it started.
pub async fn fire_due(pool: &PgPool, publisher: &Publisher) -> anyhow::Result<usize> {
    let mut tx = db::duty_tx(pool, db::Duty::CronDue).await?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT id, company_id FROM schedules WHERE enabled AND next_fire_at <= now() ORDER BY next_fire_at LIMIT 500",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut fired = 0;
    for schedule in due {
        match fire(pool, publisher, &schedule).await {
            Ok(n) => fired += n,
            Err(e) => tracing::warn!(schedule = %schedule.id, error = format!("{e:#}"), "firing a schedule failed"),
        }
    }
    Ok(fired)
}

async fn fire(pool: &PgPool, publisher: &Publisher, due: &Due) -> anyhow::Result<usize> {
    let mut tx = db::tenant_tx(pool, due.company_id).await?;
    // The row lock keeps two passes off one schedule; the fire key keeps them off one tick.
    let Some(s): Option<Schedule> = sqlx::query_as(
        "SELECT flow_id, cron, timezone, misfire, next_fire_at FROM schedules
          WHERE id = $1 AND enabled AND next_fire_at <= now() FOR UPDATE SKIP LOCKED",
    )
    .bind(due.id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(0);
    };
    let cron = CronSchedule::parse(&s.cron, &s.timezone)?;
    let now = Utc::now();
    let mut ticks = Vec::new();
    let mut tick = s.next_fire_at;
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
    if s.misfire == "fire_once"
        && let Some(last_missed) = missed.last()
    {
        to_fire.insert(0, *last_missed);
    }
    let mut envelopes = Vec::new();
    let mut entries = Vec::new();
    for tick in &to_fire {
        let claimed = sqlx::query(
            "INSERT INTO schedule_fires (schedule_id, company_id, tick) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(due.id)
        .bind(due.company_id)
        .bind(tick)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            continue;
        }
        let run_id = Uuid::now_v7();
        let input = json!({"schedule_id": due.id, "tick": tick});
        let run = runs::NewRun {
            id: run_id,
            flow_id: s.flow_id,
            trigger: Trigger::Cron,
            input: &input,
            grantee: None,
        };
        let created = runs::enqueue(&mut tx, due.company_id, std::slice::from_ref(&run))
            .await?
            .pop();
        if let Some(run) = &created {
            // The same entry an API or webhook run gets.
            entries.push(
                Entry::new(due.company_id, Actor::system("scheduler"), "run.create")
                    .resource("run", run_id)
                    .details(json!({
                        "flow_id": s.flow_id,
                        "trigger": Trigger::Cron,
                        "input": audit::shape(&input),
                        "version": run.version,
                    })),
            );
        }
        let drift_ms = (now - *tick).num_milliseconds();
        sqlx::query("UPDATE schedule_fires SET run_id = $3 WHERE schedule_id = $1 AND tick = $2")
            .bind(due.id)
            .bind(tick)
            .bind(created.as_ref().map(|_| run_id))
            .execute(&mut *tx)
            .await?;
        entries.push(
            Entry::new(due.company_id, Actor::system("scheduler"), "job.cron_fire")
                .resource("schedule", due.id)
                .details(json!({
                    "flow_id": s.flow_id,
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
    let last_fired = to_fire.last().copied();
    sqlx::query(
        "UPDATE schedules SET next_fire_at = $2, last_tick = COALESCE($3, last_tick),
                last_fired_at = CASE WHEN $3 IS NULL THEN last_fired_at ELSE now() END,
                last_drift_ms = COALESCE($4, last_drift_ms)
          WHERE id = $1",
    )
    .bind(due.id)
    .bind(next_fire_at)
    .bind(last_fired)
    .bind(last_fired.map(|t| (now - t).num_milliseconds()))
    .execute(&mut *tx)
    .await?;
    if !missed.is_empty() {
        entries.push(
            Entry::new(due.company_id, Actor::system("scheduler"), "job.cron_misfire")
                .resource("schedule", due.id)
                .details(json!({"missed_ticks": missed.len(), "policy": s.misfire})),
        );
    }
    audit::append(&mut tx, &entries).await?;
    tx.commit().await?;
    let fired = envelopes.len();
    if !envelopes.is_empty() {
        let messages: Vec<Envelope> = envelopes.iter().map(|(_, e)| e.clone()).collect();
        // On failure the rows stay in the outbox and the sweep publishes them.
        if publisher.publish(&messages).await.is_ok() {
            let ids: Vec<i64> = envelopes.iter().map(|(id, _)| *id).collect();
            let mut tx = db::tenant_tx(pool, due.company_id).await?;
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(fired)
}

/// Deletes up to `limit` fire records older than [`FIRE_RECORD_KEEP`], oldest
/// first (one range of `schedule_fires_age_idx`); returns how many went.
/// Runs as the retention duty, in the caller's transaction.
pub async fn delete_old_fires(tx: &mut db::Tx, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM schedule_fires WHERE (schedule_id, tick) IN (
            SELECT schedule_id, tick FROM schedule_fires WHERE fired_at < now() - make_interval(secs => $1)
             ORDER BY fired_at LIMIT $2)",
    )
    .bind(FIRE_RECORD_KEEP.num_seconds() as f64)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
