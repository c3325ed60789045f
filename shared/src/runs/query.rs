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
    /// When a cancel was asked (`POST /api/v1/runs/{id}/cancel`); the run may still be running.
    pub cancel_requested_at: Option<DateTime<Utc>>,
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

pub(super) const RUN_COLUMNS: &str = "id, flow_id, version, status, trigger, input, output, error, attempt, queued_at, started_at, finished_at, \
     cancel_requested_at, retry_of";

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
    pub trigger: Option<Trigger>,
    /// Created (accepted) at or after, to the millisecond.
    pub from: Option<DateTime<Utc>>,
    /// Created before, to the millisecond.
    pub to: Option<DateTime<Utc>>,
    /// The previous page's last run: this page holds older ones.
    pub before: Option<RunId>,
    pub limit: i64,
}

impl Filter {
    /// The id range `[low, high)` the page reads: run ids are v7, made when
    /// the run is accepted, so the created-time bounds and the cursor are
    /// one range of `runs_company_idx` / `runs_flow_idx`.
    fn id_range(&self) -> (uuid::Uuid, uuid::Uuid) {
        let low = self.from.map(crate::ids::v7_floor).unwrap_or_else(uuid::Uuid::nil);
        let mut high = self.to.map(crate::ids::v7_floor).unwrap_or_else(uuid::Uuid::max);
        if let Some(before) = self.before {
            high = high.min(before.as_uuid());
        }
        (low, high)
    }
}

/// The runs `viewer` may see, newest first.
pub async fn page(tx: &mut Tx, company_id: CompanyId, viewer: Viewer, filter: Filter) -> Result<Vec<Run>, StoreError> {
    let (low, high) = filter.id_range();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs
          WHERE company_id = $7
            AND ($1::uuid IS NULL OR flow_id = $1)
            AND ($2::text IS NULL OR status = $2)
            AND ($8::text IS NULL OR trigger = $8)
            AND id >= $9 AND id < $3
            AND ($5 OR EXISTS (SELECT 1 FROM flows f WHERE f.id = runs.flow_id
                                  AND floq_access($6, 'flow', f.id, f.group_id) >= 1))
          ORDER BY id DESC LIMIT $4"
    )))
    .bind(filter.flow_id)
    .bind(filter.status.map(RunStatus::as_str))
    .bind(high)
    .bind(filter.limit)
    .bind(viewer.admin)
    .bind(viewer.user_id)
    .bind(company_id)
    .bind(filter.trigger.map(Trigger::as_str))
    .bind(low)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A run's latest status change, as a live listing shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Change {
    pub run_id: RunId,
    pub flow_id: FlowId,
    pub status: RunStatus,
    /// The latest of its accept, start and finish times.
    pub updated_at: DateTime<Utc>,
}

/// Where a reader of [`changes`] stands: the last change it has seen, by
/// `(updated_at, run_id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeCursor {
    pub at: DateTime<Utc>,
    pub run_id: RunId,
}

/// How long after a change's time [`changes`] waits before it reads it. A
/// change's time is taken before its transaction commits (and a worker's
/// finish time before its group commit), so a change younger than this may
/// still be invisible; reading only older ones lets a cursor move forward
/// without passing a change that commits late.
pub const CHANGE_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// What one read of [`changes`] found.
#[derive(Debug)]
pub struct Changes {
    /// Oldest first.
    pub items: Vec<Change>,
    /// Where the next read continues: after the last item, or, when fewer than
    /// `limit` came, after everything this read could see.
    pub cursor: ChangeCursor,
}

/// Up to `limit` status changes of the runs `viewer` may see (of one flow
/// with `flow_id`) after `after`, oldest first: one range of
/// `runs_changed_idx`. Without `after`, nothing: the cursor starts at the
/// present.
pub async fn changes(
    tx: &mut Tx,
    company_id: CompanyId,
    viewer: Viewer,
    flow_id: Option<FlowId>,
    after: Option<ChangeCursor>,
    limit: i64,
) -> Result<Changes, StoreError> {
    let horizon: DateTime<Utc> = sqlx::query_scalar("SELECT statement_timestamp() - make_interval(secs => $1)")
        .bind(CHANGE_SETTLE.as_secs_f64())
        .fetch_one(&mut **tx)
        .await?;
    let end = ChangeCursor {
        at: horizon,
        run_id: RunId(uuid::Uuid::max()),
    };
    let Some(after) = after.filter(|a| a.at < horizon) else {
        return Ok(Changes {
            items: vec![],
            cursor: after.filter(|a| a.at >= horizon).unwrap_or(end),
        });
    };
    let items: Vec<Change> = sqlx::query_as(
        "SELECT id AS run_id, flow_id, status, GREATEST(queued_at, started_at, finished_at) AS updated_at FROM runs
          WHERE company_id = $1
            AND (GREATEST(queued_at, started_at, finished_at), id) > ($2, $3)
            AND GREATEST(queued_at, started_at, finished_at) <= $4
            AND ($5::uuid IS NULL OR flow_id = $5)
            AND ($6 OR EXISTS (SELECT 1 FROM flows f WHERE f.id = runs.flow_id
                                  AND floq_access($7, 'flow', f.id, f.group_id) >= 1))
          ORDER BY GREATEST(queued_at, started_at, finished_at), id LIMIT $8",
    )
    .bind(company_id)
    .bind(after.at)
    .bind(after.run_id)
    .bind(horizon)
    .bind(flow_id)
    .bind(viewer.admin)
    .bind(viewer.user_id)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    let cursor = match items.last() {
        Some(last) if items.len() as i64 == limit => ChangeCursor {
            at: last.updated_at,
            run_id: last.run_id,
        },
        _ => end,
    };
    Ok(Changes { items, cursor })
}
