//! The one home of the `idempotency_keys` table: an `Idempotency-Key` names
//! the first run a flow was started with under it, for 24 hours. The
//! acceptor claims keys inside its batch's tenant transaction; retention
//! forgets expired ones as its duty. Nothing here creates runs.

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowId, RunId};

/// Claims `key` for `run_id`, or answers the run that already holds it.
/// A concurrent duplicate in another transaction waits on the key row, then
/// sees the winner's run; a key older than 24 hours is taken over.
pub async fn claim(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    key: &str,
    run_id: RunId,
) -> Result<Option<RunId>, StoreError> {
    let claimed: Option<RunId> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (company_id, flow_id, key, run_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (company_id, flow_id, key) DO UPDATE SET run_id = excluded.run_id, created_at = now()
            WHERE idempotency_keys.created_at < now() - interval '24 hours'
         RETURNING run_id",
    )
    .bind(company_id)
    .bind(flow_id)
    .bind(key)
    .bind(run_id)
    .fetch_optional(&mut **tx)
    .await?;
    if claimed.is_some() {
        return Ok(None);
    }
    let prior: RunId =
        sqlx::query_scalar("SELECT run_id FROM idempotency_keys WHERE company_id = $1 AND flow_id = $2 AND key = $3")
            .bind(company_id)
            .bind(flow_id)
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
    Ok(Some(prior))
}

/// Forgets the keys claimed for runs that were not created, so they do not
/// keep pointing at a run that never existed.
pub async fn release(tx: &mut Tx, company_id: CompanyId, runs: &[RunId]) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM idempotency_keys WHERE company_id = $1 AND run_id = ANY($2)")
        .bind(company_id)
        .bind(runs)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Keys past their 24 hours, for the retention duty; returns how many went.
pub async fn delete_expired(tx: &mut Tx) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}
