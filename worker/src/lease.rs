//! This worker's lease: a heartbeat row in `workers`, renewed every third of
//! `FLOQ_WORKER_LEASE_MS`. Runs past their running mark carry this worker's
//! id; when the heartbeat stops (the process died, or lost the database for
//! longer than a lease), the scheduler's reaper hands them on.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use floq_shared::db::{self, Duty, Pool, StoreError};
use floq_shared::workers;

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_default()
}

/// Writes the heartbeat once.
pub async fn beat(pool: &Pool, worker_id: Uuid) -> Result<(), StoreError> {
    let mut tx = db::duty_tx(pool, Duty::WorkerLease).await?;
    workers::beat(&mut tx, worker_id, &hostname()).await?;
    db::commit(tx).await
}

/// Gives the lease up: this worker holds no run any more (a clean stop).
pub async fn release(pool: &Pool, worker_id: Uuid) -> Result<(), StoreError> {
    let mut tx = db::duty_tx(pool, Duty::WorkerLease).await?;
    workers::release(&mut tx, worker_id).await?;
    db::commit(tx).await
}

/// Renews the lease until `stop`.
pub async fn keep(pool: Pool, worker_id: Uuid, lease: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = beat(&pool, worker_id).await {
            tracing::warn!(error = %e, "cannot renew this worker's lease; retrying");
        }
    }
}
