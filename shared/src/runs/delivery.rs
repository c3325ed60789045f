//! What the worker asks of a run when its message arrives: whether a
//! repeated message's run is already finished or claimed by another copy,
//! and the input of a run whose message did not carry it. Each call runs in
//! the caller's tenant transaction (`db::tenant_tx` for the message's
//! company) and names the company explicitly as well. Finishing runs is
//! [`super::outcomes`]'s; nothing here writes an outcome.

use serde_json::Value;
use uuid::Uuid;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};
use crate::run::RunStatus;

/// The run's status; `None` once it is gone (retention, a deleted company).
pub async fn status(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Option<RunStatus>, StoreError> {
    sqlx::query_scalar("SELECT status FROM runs WHERE id = $1 AND company_id = $2")
        .bind(run_id)
        .bind(company_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// What a repeated message finds of a run it takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Found {
    /// A cancel was asked while it ran: the redelivery finishes it `cancelled` without running it.
    pub cancel_requested: bool,
    /// When it first started: a deadline counts from there.
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Claims a `queued` run for this copy of its message (`queued` → `running`)
/// on `worker_id`'s lease. Returns `false` when the run is not queued
/// (another copy has it, or it is finished or gone).
pub async fn claim(tx: &mut Tx, company_id: CompanyId, run_id: RunId, worker_id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE runs SET status = 'running', started_at = now(), worker_id = $3
          WHERE id = $1 AND company_id = $2 AND status = 'queued'",
    )
    .bind(run_id)
    .bind(company_id)
    .bind(worker_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes an unfinished run over for `worker_id` (a redelivery, or a
/// continuation after its worker was lost): it becomes `running` on this
/// worker's lease. Returns `None` when the run is final or gone, or held by
/// another worker whose lease is current (younger than `lease`): a broker
/// that lost that worker's channel hands its messages out again while the
/// run goes on there, and it must not run twice.
pub async fn take_over(
    tx: &mut Tx,
    company_id: CompanyId,
    run_id: RunId,
    worker_id: Uuid,
    lease: std::time::Duration,
) -> Result<Option<Found>, StoreError> {
    sqlx::query_as(
        "UPDATE runs SET status = 'running', started_at = coalesce(started_at, now()), worker_id = $3
          WHERE id = $1 AND company_id = $2 AND status IN ('queued', 'running')
            AND (worker_id IS NULL OR worker_id = $3
                 OR NOT floq_lease_alive(worker_id, make_interval(secs => $4)))
      RETURNING cancel_requested_at IS NOT NULL AS cancel_requested, started_at",
    )
    .bind(run_id)
    .bind(company_id)
    .bind(worker_id)
    .bind(lease.as_secs_f64())
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// The run's input; `None` once the run is gone.
pub async fn input(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Option<Value>, StoreError> {
    sqlx::query_scalar("SELECT input FROM runs WHERE id = $1 AND company_id = $2")
        .bind(run_id)
        .bind(company_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}
