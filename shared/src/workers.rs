//! The `workers` table: one row per worker process, its lease. A worker
//! writes its own heartbeat ([`crate::db::Duty::WorkerLease`]); the reaper
//! reads leases through `runs::lost` and forgets long-dead workers here
//! ([`crate::db::Duty::Reaper`]). The table holds no tenant data and tenant
//! roles have no grant on it.

use std::time::Duration;

use uuid::Uuid;

use crate::db::{StoreError, Tx};

/// Registers a worker, or renews its lease (the worker's lease duty).
pub async fn beat(tx: &mut Tx, worker_id: Uuid, hostname: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workers (id, hostname) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(worker_id)
    .bind(hostname)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Gives a stopping worker's lease up at once (the worker's lease duty): the
/// runs it handed back are taken over by the next worker without waiting for
/// the lease to lapse.
pub async fn release(tx: &mut Tx, worker_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("UPDATE workers SET heartbeat_at = '-infinity' WHERE id = $1")
        .bind(worker_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Forgets workers silent for longer than `after` (the reaper duty); their
/// runs were reaped within a lease, long before.
pub async fn forget_dead(tx: &mut Tx, after: Duration) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1)")
        .bind(after.as_secs_f64())
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}
