//! Reading runs as the API shows them: one run, its steps, and pages of a
//! company's runs. Every statement names the company (the second lock beside
//! row-level security, and the leading column of the runs indexes) and runs
//! in the caller's tenant transaction. Nothing here writes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowId, RunId, UserId};
use crate::run::{RunStatus, Trigger};

/// A run as its company sees it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Run {
    pub id: RunId,
    pub flow_id: FlowId,
    pub version: i32,
    pub status: RunStatus,
    pub trigger: Trigger,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub attempt: i32,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The run this one retries, if it is a retry or a replay.
    pub retry_of: Option<RunId>,
}

/// One step of a run, in the order the worker recorded it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Step {
    pub node_id: String,
    pub status: String,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const RUN_COLUMNS: &str = "id, flow_id, version, status, trigger, input, output, error, attempt, queued_at, started_at, finished_at, retry_of";

pub async fn find(tx: &mut Tx, company_id: CompanyId, id: RunId) -> Result<Option<Run>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE company_id = $1 AND id = $2"
    )))
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn steps(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Vec<Step>, StoreError> {
    sqlx::query_as(
        "SELECT node_id, status, output, error, started_at, finished_at
           FROM run_steps WHERE company_id = $1 AND run_id = $2 ORDER BY seq",
    )
    .bind(company_id)
    .bind(run_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Who lists runs: an admin sees every run of the company, anyone else the
/// runs of flows they may view.
#[derive(Clone, Copy, Debug)]
pub struct Viewer {
    pub user_id: UserId,
    pub admin: bool,
}

/// Which runs a page holds.
#[derive(Clone, Copy, Debug)]
pub struct Filter {
    pub flow_id: Option<FlowId>,
    pub status: Option<RunStatus>,
    /// The previous page's last run: this page holds older ones.
    pub before: Option<RunId>,
    pub limit: i64,
}

/// The runs `viewer` may see, newest first.
pub async fn page(tx: &mut Tx, company_id: CompanyId, viewer: Viewer, filter: Filter) -> Result<Vec<Run>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs
          WHERE company_id = $7
            AND ($1::uuid IS NULL OR flow_id = $1)
            AND ($2::text IS NULL OR status = $2)
            AND ($3::uuid IS NULL OR id < $3)
            AND ($5 OR EXISTS (SELECT 1 FROM flows f WHERE f.id = runs.flow_id
                                  AND floq_access($6, 'flow', f.id, f.group_id) >= 1))
          ORDER BY id DESC LIMIT $4"
    )))
    .bind(filter.flow_id)
    .bind(filter.status.map(RunStatus::as_str))
    .bind(filter.before)
    .bind(filter.limit)
    .bind(viewer.admin)
    .bind(viewer.user_id)
    .bind(company_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}
