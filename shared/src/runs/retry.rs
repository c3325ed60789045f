//! Which runs a replay starts again: a company's failed runs matching a
//! filter, of flows the caller may execute, that no run retries yet. Runs in
//! the caller's tenant transaction and names the company explicitly; the new
//! runs are created by [`super::enqueue`] with `retry_of` set.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowId, RunId, UserId};
use crate::run::Trigger;

/// The grant level `execute` has in `floq_access` (see migration 0006).
const EXECUTE: i32 = 2;

/// A failed run to start again.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Original {
    pub id: RunId,
    pub flow_id: FlowId,
    pub version: i32,
    pub trigger: Trigger,
    pub input: Value,
}

/// Which failed runs a replay matches.
#[derive(Debug, Clone)]
pub struct ReplayFilter {
    pub flow_id: Option<FlowId>,
    /// `runs.error.code`.
    pub error_code: Option<String>,
    /// Accepted at or after.
    pub from: Option<DateTime<Utc>>,
    /// Accepted before.
    pub to: Option<DateTime<Utc>>,
    /// Who replays: `None` for an admin (every flow), else runs of flows this user may execute.
    pub grantee: Option<UserId>,
}

const MATCHES: &str = "FROM runs r
    WHERE r.company_id = $1 AND r.status = 'failed'
      AND ($2::uuid IS NULL OR r.flow_id = $2)
      AND ($3::text IS NULL OR r.error->>'code' = $3)
      AND ($4::timestamptz IS NULL OR r.queued_at >= $4)
      AND ($5::timestamptz IS NULL OR r.queued_at < $5)
      AND ($6::uuid IS NULL OR EXISTS (SELECT 1 FROM flows f WHERE f.id = r.flow_id AND f.company_id = $1
                                          AND floq_access($6, 'flow', f.id, f.group_id) >= $7))
      AND NOT EXISTS (SELECT 1 FROM runs n WHERE n.company_id = $1 AND n.retry_of = r.id)";

/// The oldest `limit` matching runs, and how many match in all.
pub async fn replayable(
    tx: &mut Tx,
    company_id: CompanyId,
    filter: &ReplayFilter,
    limit: i64,
) -> Result<(Vec<Original>, i64), StoreError> {
    let originals: Vec<Original> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT r.id, r.flow_id, r.version, r.trigger, r.input {MATCHES} ORDER BY r.id LIMIT $8"
    )))
    .bind(company_id)
    .bind(filter.flow_id)
    .bind(filter.error_code.as_deref())
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.grantee)
    .bind(EXECUTE)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    let matched = if (originals.len() as i64) < limit {
        originals.len() as i64
    } else {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) {MATCHES}")))
            .bind(company_id)
            .bind(filter.flow_id)
            .bind(filter.error_code.as_deref())
            .bind(filter.from)
            .bind(filter.to)
            .bind(filter.grantee)
            .bind(EXECUTE)
            .fetch_one(&mut **tx)
            .await?
    };
    Ok((originals, matched))
}
