//! What a webhook call that waited for its run reads back when the run's
//! reply was too large to travel on the broker: the one part its answer is
//! made of. Reads only, in the caller's tenant transaction, naming the
//! company; it never writes runs or steps (the worker's outcome writer does).

use serde_json::Value;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};

/// The output of a run's step (a `respond` node's reply); `None` if the step or its output is missing.
pub async fn step_output(
    tx: &mut Tx,
    company_id: CompanyId,
    run_id: RunId,
    node_id: &str,
) -> Result<Option<Value>, StoreError> {
    let output: Option<Option<Value>> =
        sqlx::query_scalar("SELECT output FROM run_steps WHERE company_id = $1 AND run_id = $2 AND node_id = $3")
            .bind(company_id)
            .bind(run_id)
            .bind(node_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(output.flatten())
}

/// A run's output; `None` if the run or its output is missing.
pub async fn run_output(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Option<Value>, StoreError> {
    let output: Option<Option<Value>> = sqlx::query_scalar("SELECT output FROM runs WHERE company_id = $1 AND id = $2")
        .bind(company_id)
        .bind(run_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(output.flatten())
}
