//! Cancelling runs: the API's request (a queued run ends `cancelled` at once,
//! a running one records `cancel_requested_at` for its worker and for any
//! redelivery of its message), and the run ids workers refuse to start.
//! The worker's own `cancelled` outcome is [`super::outcomes`]'s.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::query::{RUN_COLUMNS, Run};
use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};
use crate::run::RunStatus;

/// The error a run cancelled before it ran holds (a worker that interrupts a
/// run stores the same code).
pub const CODE: &str = "cancelled";
pub const MESSAGE: &str = "the run was cancelled";

/// Cancels an unfinished run of `company_id` in the caller's tenant
/// transaction and notes its id for workers; `None` if the run is finished
/// (or gone). A repeated cancel keeps the first request's time.
pub async fn request(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Option<Run>, StoreError> {
    // A parked run (waiting in a delay queue, held by no worker) is cancelled at once like a queued one: no worker
    // would hear the broadcast, and its wake message finds it final.
    let run: Option<Run> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE runs
            SET cancel_requested_at = COALESCE(cancel_requested_at, now()),
                status = CASE WHEN target.now THEN 'cancelled' ELSE status END,
                finished_at = CASE WHEN target.now THEN now() ELSE finished_at END,
                error = CASE WHEN target.now THEN jsonb_build_object('code', $3::text, 'message', $4::text)
                        ELSE error END
           FROM (SELECT r.id AS run,
                        r.status = 'queued'
                        OR (r.worker_id IS NULL AND EXISTS (
                              SELECT 1 FROM run_waits w
                               WHERE w.run_id = r.id AND w.company_id = r.company_id AND w.wake_at > now())) AS now
                   FROM runs r
                  WHERE r.company_id = $1 AND r.id = $2 AND r.status IN ('queued', 'running')
                    FOR UPDATE) AS target
          WHERE runs.id = target.run AND runs.company_id = $1
      RETURNING {RUN_COLUMNS}"
    )))
    .bind(company_id)
    .bind(run_id)
    .bind(CODE)
    .bind(MESSAGE)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(cancelled) = run.as_ref().filter(|r| r.status == RunStatus::Cancelled) {
        // Only a parked run has waits ahead of it; a queued one ran nothing.
        super::steps::cancel_waits(
            tx,
            company_id,
            run_id,
            cancelled.error.as_ref().unwrap_or(&serde_json::Value::Null),
        )
        .await?;
    }
    if run.is_some() {
        // Through a SECURITY DEFINER function: see migrations/0024.
        sqlx::query("SELECT floq_note_cancel($1)")
            .bind(run_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(run)
}

/// The newest run ids cancelled since `since`, at most `limit`, of every
/// company (ids alone: nothing else of a run is readable this way). Any
/// transaction will do; the function needs no tenant.
pub async fn recent(tx: &mut Tx, since: DateTime<Utc>, limit: i32) -> Result<Vec<Uuid>, StoreError> {
    sqlx::query_scalar("SELECT floq_recent_cancels($1, $2)")
        .bind(since)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::from)
}
