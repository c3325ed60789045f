//! Runs that lost their way (the scheduler's reaper): found across companies
//! only by id, through the SECURITY DEFINER functions of migration 0025 in a
//! [`crate::db::Duty::Reaper`] transaction, then sent on again one by one in
//! the run's own tenant transaction. Each tenant-side call moves a run only
//! from the state the reaper found it in, so a worker that took the run over
//! meanwhile keeps it. Failing a run out of attempts is
//! [`super::outcomes::fail_lost`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};
use crate::queue::{Envelope, INLINE_INPUT_MAX, RunFlowV1};
use crate::run::Trigger;

/// A run `running` on a worker whose lease expired.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct LostRunning {
    pub company_id: Uuid,
    pub run_id: Uuid,
    pub worker_id: Uuid,
}

/// Up to `limit` runs held by workers whose heartbeat is older than `lease` (the reaper duty).
pub async fn running(tx: &mut Tx, lease: Duration, limit: i64) -> Result<Vec<LostRunning>, StoreError> {
    sqlx::query_as("SELECT company_id, run_id, worker_id FROM floq_lost_running(make_interval(secs => $1), $2)")
        .bind(lease.as_secs_f64())
        .bind(limit as i32)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// What one pass over queued runs found.
#[derive(Debug, Default)]
pub struct LostQueued {
    /// The last run id the pass covered; the next pass starts after it.
    pub scanned_to: Option<Uuid>,
    /// (company, run) of runs still queued although their message was published.
    pub runs: Vec<(Uuid, Uuid)>,
}

/// Scans up to `limit` runs accepted after run id `after` and no later than
/// `upper` for ones still `queued` whose outbox row is gone (their message
/// was published), and finds runs the reaper requeued before
/// `requeued_before` that are still queued (the reaper duty).
pub async fn queued(
    tx: &mut Tx,
    after: Uuid,
    upper: Uuid,
    limit: i64,
    requeued_before: DateTime<Utc>,
) -> Result<LostQueued, StoreError> {
    let (scanned_to, companies, runs): (Option<Uuid>, Vec<Uuid>, Vec<Uuid>) =
        sqlx::query_as("SELECT scanned_to, company_ids, run_ids FROM floq_lost_queued($1, $2, $3, $4)")
            .bind(after)
            .bind(upper)
            .bind(limit as i32)
            .bind(requeued_before)
            .fetch_one(&mut **tx)
            .await?;
    Ok(LostQueued {
        scanned_to,
        runs: companies.into_iter().zip(runs).collect(),
    })
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    flow_id: Uuid,
    version: i32,
    attempt: i32,
    trigger: Trigger,
    input: Option<serde_json::Value>,
}

impl MessageRow {
    fn envelope(self, company_id: CompanyId) -> Envelope {
        Envelope::RunFlowV1(RunFlowV1 {
            run_id: self.id,
            company_id: company_id.into(),
            flow_id: self.flow_id,
            version: self.version,
            attempt: self.attempt,
            trigger: self.trigger,
            input: self.input,
            traceparent: None,
        })
    }
}

/// The columns of a run's message; the input only when small enough to travel inline.
const MESSAGE: &str = "id, flow_id, version, attempt, trigger,
    CASE WHEN octet_length(input::text) <= $3 THEN input END AS input";

/// Marks a still-queued run as requeued now and returns its message, to be
/// published again; `None` if it is no longer queued.
pub async fn requeue_queued(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Option<Envelope>, StoreError> {
    let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE runs SET requeued_at = now()
          WHERE id = $1 AND company_id = $2 AND status = 'queued'
          RETURNING {MESSAGE}"
    )))
    .bind(run_id)
    .bind(company_id)
    .bind(INLINE_INPUT_MAX)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| r.envelope(company_id)))
}

/// Hands a run held by lost worker `worker_id` back to the queue (`queued`,
/// no worker, one more attempt) if it has had fewer than `max_attempts`, and
/// returns its continuation's message; `None` if it is out of attempts or no
/// longer held by that worker.
pub async fn requeue_running(
    tx: &mut Tx,
    company_id: CompanyId,
    run_id: RunId,
    worker_id: Uuid,
    max_attempts: i32,
) -> Result<Option<Envelope>, StoreError> {
    let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE runs SET status = 'queued', worker_id = NULL, attempt = attempt + 1, requeued_at = now()
          WHERE id = $1 AND company_id = $2 AND status = 'running' AND worker_id = $4 AND attempt < $5
          RETURNING {MESSAGE}"
    )))
    .bind(run_id)
    .bind(company_id)
    .bind(INLINE_INPUT_MAX)
    .bind(worker_id)
    .bind(max_attempts)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| r.envelope(company_id)))
}
