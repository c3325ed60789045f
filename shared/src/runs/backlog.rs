//! How many runs one company has waiting, for backpressure (`FLOQ_COMPANY_BACKLOG_MAX`).

use uuid::Uuid;

use crate::db::{StoreError, Tx};
use crate::run::RunStatus;

/// Queued runs among the company's `window` newest runs, in its tenant
/// transaction. A backlog is the newest runs (workers take them oldest
/// first), so a window a little over the bound tells whether the bound is
/// passed by reading at most `window` index entries, however long the
/// company's history.
pub async fn queued_among_newest(tx: &mut Tx, company_id: Uuid, window: i64) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT status FROM runs WHERE company_id = $1 ORDER BY id DESC LIMIT $2
         ) newest WHERE status = $3",
    )
    .bind(company_id)
    .bind(window)
    .bind(RunStatus::Queued.as_str())
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}
