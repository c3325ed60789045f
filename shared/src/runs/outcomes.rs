//! How runs end, the one home of the worker's writes to `runs`: showing a
//! long run as `running`, and finishing runs with their output, steps and
//! `node.execute` audit entries in one go. A run is only ever moved out of
//! `queued`/`running`, so a duplicate delivery never overwrites a finished
//! run, and only the runs a call moved get their steps and entries.
//!
//! Callers are the outcome writer's group commit: a transaction opened with
//! `db::multi_tenant_tx` and switched with `db::set_tenant` to `company_id`
//! before each call. This module never opens, switches or commits a
//! transaction itself, and never decides what to store of a refused outcome
//! (that is the writer's, which isolates refused rows with `batch::isolate`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::checkpoints;
use super::steps::{self, Step};
use crate::audit::Entry;
use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};
use crate::run::RunStatus;

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub steps: Vec<Step>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// One `node.execute` entry per node that ran, written with the outcome.
    pub audit: Vec<Entry>,
}

impl Outcome {
    /// A run that failed before any node ran (e.g. its flow version is unreadable).
    pub fn failed_early(code: &str, message: &str) -> Self {
        let now = Utc::now();
        Self {
            status: RunStatus::Failed,
            output: None,
            error: Some(json!({"code": code, "message": message})),
            steps: vec![],
            started_at: now,
            finished_at: now,
            audit: vec![],
        }
    }
}

/// A run that outlived the short threshold, from when it ran.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub run_id: RunId,
    pub at: DateTime<Utc>,
}

/// Shows still-`queued` runs of `company_id` as `running` on `worker_id`'s
/// lease (finished ones stay as they are).
///
/// `floq_mark_running` (migrations 0002, 0025) takes no company: it sees only the
/// tenant the caller set, by row-level security, which must be `company_id`.
pub async fn mark_running(
    tx: &mut Tx,
    _company_id: CompanyId,
    started: &[Started],
    worker_id: Uuid,
) -> Result<(), StoreError> {
    if started.is_empty() {
        return Ok(());
    }
    let ids: Vec<RunId> = started.iter().map(|s| s.run_id).collect();
    let at: Vec<DateTime<Utc>> = started.iter().map(|s| s.at).collect();
    // Row by row through the primary key: see migrations/0002 for why not a set-based join.
    sqlx::query("SELECT floq_mark_running($1, $2, $3)")
        .bind(&ids)
        .bind(&at)
        .bind(worker_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Fails a run that is still `running` on `worker_id`'s lease (the reaper,
/// for a worker that was lost and a run out of attempts). Returns whether it did;
/// a run another worker took over, or that finished, stays as it is.
pub async fn fail_lost(
    tx: &mut Tx,
    company_id: CompanyId,
    run_id: RunId,
    worker_id: Uuid,
    error: &Value,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE runs SET status = 'failed', error = $4, finished_at = now()
          WHERE id = $1 AND company_id = $2 AND worker_id = $3 AND status = 'running'",
    )
    .bind(run_id)
    .bind(company_id)
    .bind(worker_id)
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Shows parked runs of `company_id` as `running` on no worker's lease: a
/// parked run waits in a delay queue, not on a worker, so the reaper must not
/// take it for lost when the worker that parked it goes away (it wakes by its
/// message). Finished runs stay as they are.
pub async fn parked(tx: &mut Tx, company_id: CompanyId, runs: &[RunId]) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE runs SET status = 'running', started_at = coalesce(started_at, now()), worker_id = NULL
          WHERE id = ANY($1) AND company_id = $2 AND status IN ('queued', 'running')",
    )
    .bind(runs)
    .bind(company_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Finishes `runs` of `company_id` that are still `queued` or `running`,
/// writing the steps and audit entries of exactly those. Returns the runs
/// this call finished. Like [`mark_running`], `floq_finish_runs` sees only
/// the tenant the caller set; the steps name `company_id` explicitly.
pub async fn finish(tx: &mut Tx, company_id: CompanyId, runs: &[(RunId, &Outcome)]) -> Result<Vec<RunId>, StoreError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<RunId> = runs.iter().map(|(id, _)| *id).collect();
    let statuses: Vec<&'static str> = runs.iter().map(|(_, o)| o.status.as_str()).collect();
    let outputs: Vec<Option<&Value>> = runs.iter().map(|(_, o)| o.output.as_ref()).collect();
    let errors: Vec<Option<&Value>> = runs.iter().map(|(_, o)| o.error.as_ref()).collect();
    let started: Vec<DateTime<Utc>> = runs.iter().map(|(_, o)| o.started_at).collect();
    let finished: Vec<DateTime<Utc>> = runs.iter().map(|(_, o)| o.finished_at).collect();
    // Row by row through the primary key: see migrations/0002 for why not a set-based join.
    let updated: Vec<RunId> = sqlx::query_scalar("SELECT floq_finish_runs($1, $2, $3, $4, $5, $6)")
        .bind(&ids)
        .bind(&statuses)
        .bind(&outputs)
        .bind(&errors)
        .bind(&started)
        .bind(&finished)
        .fetch_all(&mut **tx)
        .await?;
    if updated.is_empty() {
        return Ok(updated);
    }
    // Steps and node entries only for runs this call finished; a duplicate
    // delivery writes nothing, and a step a checkpoint stored keeps the entry
    // written with it. A run executed twice (a redelivery while the first
    // copy still ran) can bring both outcomes into one batch: only the first,
    // which floq_finish_runs applied (row by row, in order), writes its
    // entries and steps.
    let done: std::collections::HashSet<RunId> = updated.iter().copied().collect();
    let mut first: std::collections::HashSet<RunId> = std::collections::HashSet::new();
    let applied: Vec<&(RunId, &Outcome)> = runs
        .iter()
        .filter(|(id, _)| done.contains(id) && first.insert(*id))
        .collect();
    let steps: Vec<(RunId, &[Step])> = applied.iter().map(|(id, o)| (*id, o.steps.as_slice())).collect();
    let inserted = steps::insert(tx, company_id, &steps, Some(&updated)).await?;
    // Collected first: a lazy iterator of closures held across the await would not be `Send` for every lifetime.
    let mut entries: Vec<&Entry> = Vec::new();
    for (_, o) in &applied {
        entries.extend(&o.audit);
    }
    let offered: usize = applied.iter().map(|(_, o)| o.steps.len()).sum();
    checkpoints::append_new(tx, entries, &inserted, inserted.len() == offered).await?;
    Ok(updated)
}

/// A finished run as stored, for a caller whose first reply may have been lost.
#[derive(Debug, sqlx::FromRow)]
pub struct Stored {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
}

/// The run's status, output and error as the database holds them; `None` once it is gone.
pub async fn stored(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Option<Stored>, StoreError> {
    sqlx::query_as("SELECT status, output, error FROM runs WHERE id = $1 AND company_id = $2")
        .bind(run_id)
        .bind(company_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}
