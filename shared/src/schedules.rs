//! Cron schedules of flows and the record of each tick fired: the one home
//! of the `schedules` and `schedule_fires` tables' statements. The API
//! creates, lists and deletes schedules; the scheduler finds due ones (as the
//! [`Duty::CronDue`](crate::db::Duty) role), fires each under its tenant and
//! trims old fire records (as the retention duty). When a tick fires is
//! decided by [`crate::cron`], not here.
//!
//! Tenant statements run in the caller's tenant transaction and name the
//! company explicitly; the two cross-tenant ones ([`due`],
//! [`delete_old_fires`]) read only what their duty's policies admit. This
//! module never starts runs (`crate::runs` does) and never evaluates cron
//! expressions.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowId, RunId, ScheduleId};
use crate::run::text_enum;

text_enum! {
    /// What a schedule does about ticks it missed by more than the grace
    /// (`schedules.misfire`).
    Misfire {
        /// Drops them.
        Skip => "skip",
        /// Fires once for all of them.
        FireOnce => "fire_once",
    }
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Schedule {
    pub id: ScheduleId,
    pub flow_id: FlowId,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    pub misfire: Misfire,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_tick: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_drift_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, flow_id, cron, timezone, enabled, misfire, next_fire_at, last_tick, last_fired_at, \
                       last_drift_ms, created_at";

/// A schedule to create; its expression and zone already parsed.
pub struct NewSchedule<'a> {
    pub id: ScheduleId,
    pub company_id: CompanyId,
    pub flow_id: FlowId,
    pub cron: &'a str,
    pub timezone: &'a str,
    pub enabled: bool,
    pub misfire: Misfire,
    pub next_fire_at: Option<DateTime<Utc>>,
}

pub async fn create(tx: &mut Tx, new: NewSchedule<'_>) -> Result<Schedule, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO schedules (id, company_id, flow_id, cron, timezone, enabled, misfire, next_fire_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    )))
    .bind(new.id)
    .bind(new.company_id)
    .bind(new.flow_id)
    .bind(new.cron)
    .bind(new.timezone)
    .bind(new.enabled)
    .bind(new.misfire)
    .bind(new.next_fire_at)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// One page of a flow's schedules, newest first (by v7 id), before `before`;
/// one range of `schedules (company_id, flow_id, id)`.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    before: ScheduleId,
    limit: i64,
) -> Result<Vec<Schedule>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedules WHERE company_id = $1 AND flow_id = $2 AND id < $3
          ORDER BY id DESC LIMIT $4"
    )))
    .bind(company_id)
    .bind(flow_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// One of a flow's schedules; `None` if there is none. `for_update` locks
/// it (a fire pass holding it is waited for) so a change's before-image is
/// the row it changes.
pub async fn find(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    id: ScheduleId,
    for_update: bool,
) -> Result<Option<Schedule>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedules WHERE company_id = $1 AND id = $2 AND flow_id = $3{lock}"
    )))
    .bind(company_id)
    .bind(id)
    .bind(flow_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Pauses (`enabled = false`: [`due`] and [`lock_due`] pass it by) or
/// resumes a schedule. Resuming sets the next tick the caller computed from
/// now, so ticks that fell in the pause are not misfires to catch up.
pub async fn set_enabled(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    id: ScheduleId,
    enabled: bool,
    next_fire_at: Option<DateTime<Utc>>,
) -> Result<Option<Schedule>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE schedules SET enabled = $4, next_fire_at = CASE WHEN $4 THEN $5 ELSE next_fire_at END
          WHERE company_id = $1 AND id = $2 AND flow_id = $3 RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(id)
    .bind(flow_id)
    .bind(enabled)
    .bind(next_fire_at)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Deletes a flow's schedule (its fire records go with it); `None` if there was none.
pub async fn delete(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    id: ScheduleId,
) -> Result<Option<Schedule>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM schedules WHERE company_id = $1 AND id = $2 AND flow_id = $3 RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(id)
    .bind(flow_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A schedule whose next tick has come, in any company.
#[derive(Clone, Copy, Debug, sqlx::FromRow)]
pub struct Due {
    pub id: ScheduleId,
    pub company_id: CompanyId,
}

/// How many due schedules one pass looks at.
pub const DUE_BATCH: i64 = 500;

/// Enabled schedules whose next tick has come, the most overdue first, across
/// companies: in a [`Duty::CronDue`](crate::db::Duty) transaction.
pub async fn due(tx: &mut Tx) -> Result<Vec<Due>, StoreError> {
    sqlx::query_as(
        "SELECT id, company_id FROM schedules WHERE enabled AND next_fire_at <= now() ORDER BY next_fire_at LIMIT $1",
    )
    .bind(DUE_BATCH)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// What firing a schedule needs to know.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Firing {
    pub flow_id: FlowId,
    pub cron: String,
    pub timezone: String,
    pub misfire: Misfire,
    pub next_fire_at: DateTime<Utc>,
}

/// Locks a schedule that is still due, for firing; `None` if it no longer is
/// or another pass holds it (`SKIP LOCKED`: the row lock keeps two passes off
/// one schedule, the [`FireKey`] keeps them off one tick).
pub async fn lock_due(tx: &mut Tx, due: Due) -> Result<Option<Firing>, StoreError> {
    sqlx::query_as(
        "SELECT flow_id, cron, timezone, misfire, next_fire_at FROM schedules
          WHERE company_id = $1 AND id = $2 AND enabled AND next_fire_at <= now() FOR UPDATE SKIP LOCKED",
    )
    .bind(due.company_id)
    .bind(due.id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// What a fire record is keyed by (`schedule_fires`' primary key): a tick
/// fires once per schedule, whichever scheduler gets to it, because a
/// second claim of the same key finds the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FireKey {
    pub schedule_id: ScheduleId,
    pub tick: DateTime<Utc>,
}

/// Claims a tick for firing; `false` if it was fired already.
pub async fn claim_fire(tx: &mut Tx, company_id: CompanyId, key: FireKey) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO schedule_fires (schedule_id, company_id, tick) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(key.schedule_id)
    .bind(company_id)
    .bind(key.tick)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the run a claimed tick started (`None`: the flow had no deployed version).
pub async fn record_fire(
    tx: &mut Tx,
    company_id: CompanyId,
    key: FireKey,
    run_id: Option<RunId>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE schedule_fires SET run_id = $4 WHERE company_id = $1 AND schedule_id = $2 AND tick = $3")
        .bind(company_id)
        .bind(key.schedule_id)
        .bind(key.tick)
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Where a fired schedule stands after a pass.
pub struct Advance {
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The last tick fired in the pass, and how late it fired; `None` keeps the previous ones.
    pub fired: Option<(DateTime<Utc>, i64)>,
}

/// Moves a locked schedule past the ticks a pass dealt with.
pub async fn advance(tx: &mut Tx, company_id: CompanyId, id: ScheduleId, advance: Advance) -> Result<(), StoreError> {
    let (last_tick, drift_ms) = advance.fired.unzip();
    sqlx::query(
        "UPDATE schedules SET next_fire_at = $3, last_tick = COALESCE($4, last_tick),
                last_fired_at = CASE WHEN $4 IS NULL THEN last_fired_at ELSE now() END,
                last_drift_ms = COALESCE($5, last_drift_ms)
          WHERE company_id = $1 AND id = $2",
    )
    .bind(company_id)
    .bind(id)
    .bind(advance.next_fire_at)
    .bind(last_tick)
    .bind(drift_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How long a fire record is kept. It keys its tick only until the fire's
/// transaction moves `next_fire_at` past that tick (no pass looks at an
/// earlier tick again); a day leaves room for inspection. The row-level
/// policy in `migrations/0019_bounded_work.sql` says the same.
pub const FIRE_RECORD_KEEP: Duration = Duration::days(1);

/// Deletes up to `limit` fire records older than [`FIRE_RECORD_KEEP`], oldest
/// first (one range of `schedule_fires_age_idx`); returns how many went.
/// Runs as the retention duty, in the caller's transaction.
pub async fn delete_old_fires(tx: &mut Tx, limit: i64) -> Result<u64, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misfire_policies_are_the_columns_text() {
        assert_eq!(Misfire::ALL, &[Misfire::Skip, Misfire::FireOnce]);
        for m in Misfire::ALL {
            assert_eq!(m.as_str().parse::<Misfire>(), Ok(*m));
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
    }

    #[test]
    fn a_fire_key_is_the_schedule_and_the_instant_whatever_the_zone_it_was_computed_in() {
        let schedule_id = ScheduleId(uuid::Uuid::now_v7());
        let tick: DateTime<Utc> = "2026-03-29T01:00:00Z".parse().unwrap();
        let berlin = tick.with_timezone(&chrono_tz::Europe::Berlin);
        let a = FireKey { schedule_id, tick };
        let b = FireKey {
            schedule_id,
            tick: berlin.with_timezone(&Utc),
        };
        assert_eq!(a, b);
        let other = FireKey {
            schedule_id: ScheduleId(uuid::Uuid::now_v7()),
            tick,
        };
        assert_ne!(a, other);
    }
}
