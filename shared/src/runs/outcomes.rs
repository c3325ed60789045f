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

use super::steps::{self, Step};
use crate::audit::{self, Entry};
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

/// Shows still-`queued` runs of `company_id` as `running` (finished ones stay as they are).
///
/// `floq_mark_running` (migration 0002) takes no company: it sees only the
/// tenant the caller set, by row-level security, which must be `company_id`.
pub async fn mark_running(tx: &mut Tx, _company_id: CompanyId, started: &[Started]) -> Result<(), StoreError> {
    if started.is_empty() {
        return Ok(());
    }
    let ids: Vec<RunId> = started.iter().map(|s| s.run_id).collect();
    let at: Vec<DateTime<Utc>> = started.iter().map(|s| s.at).collect();
    // Row by row through the primary key: see migrations/0002 for why not a set-based join.
    sqlx::query("SELECT floq_mark_running($1, $2)")
        .bind(&ids)
        .bind(&at)
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
    // Node entries and steps only for runs this call finished; a duplicate delivery writes nothing.
    let done: std::collections::HashSet<RunId> = updated.iter().copied().collect();
    // Collected first: a lazy iterator of closures held across the await would not be `Send` for every lifetime.
    // A run executed twice (a redelivery while the first copy still ran) can
    // bring both outcomes into one batch: only the first, which
    // floq_finish_runs applied (row by row, in order), writes its entries and steps.
    let mut first: std::collections::HashSet<RunId> = std::collections::HashSet::new();
    let applied: Vec<&(RunId, &Outcome)> = runs
        .iter()
        .filter(|(id, _)| done.contains(id) && first.insert(*id))
        .collect();
    let mut entries: Vec<&Entry> = Vec::new();
    for (_, o) in &applied {
        entries.extend(&o.audit);
    }
    audit::append(tx, entries).await?;
    let steps: Vec<(RunId, &[Step])> = applied.iter().map(|(id, o)| (*id, o.steps.as_slice())).collect();
    steps::insert(tx, company_id, &steps, &updated).await?;
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
