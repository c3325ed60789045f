//! Checkpoints of runs that outlived the running mark, the one home of
//! `run_waits` and of the steps written before a run finishes: writing the
//! steps a run has completed so far (with their `node.execute` audit
//! entries, written with the row and never again) and the node it is parked
//! on, and reading all of it back when the run resumes.
//!
//! Callers are the worker's checkpoint writer (a group commit across runs:
//! a transaction opened with `db::multi_tenant_tx`, switched with
//! `db::set_tenant` to `company_id` before each call) and the consumer, which
//! loads a run's checkpoint in its tenant transaction only for a message
//! that may continue a run (redelivered or `floq.resumed`).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::steps::{self, Step};
use crate::audit::{self, Entry};
use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};
use crate::run::RunStatus;

/// A top-level node a run is parked on: it goes on at `wake_at` with its
/// attempt number `attempt` (a `delay` completes then; a node waiting out a
/// retry backoff makes that attempt).
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub node_id: String,
    pub wake_at: DateTime<Utc>,
    pub attempt: i32,
}

/// What one run completed since its last checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub run_id: RunId,
    pub steps: Vec<Step>,
    /// The audit entries of those steps' nodes (`details.node_id`).
    pub audit: Vec<Entry>,
    pub wait: Option<Wait>,
}

/// Writes `checkpoints` of `company_id`: steps not yet stored, the audit
/// entries of exactly those, and the waits (a wait replaces the node's last).
pub async fn write(tx: &mut Tx, company_id: CompanyId, checkpoints: &[&Checkpoint]) -> Result<(), StoreError> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let runs: Vec<(RunId, &[Step])> = checkpoints.iter().map(|c| (c.run_id, c.steps.as_slice())).collect();
    let inserted = steps::insert(tx, company_id, &runs, None).await?;
    let offered: usize = runs.iter().map(|(_, s)| s.len()).sum();
    // Collected first: a lazy iterator of closures held across the await would not be `Send` for every lifetime.
    let mut entries: Vec<&Entry> = Vec::new();
    for c in checkpoints {
        entries.extend(&c.audit);
    }
    append_new(tx, entries, &inserted, inserted.len() == offered).await?;
    let waits: Vec<(RunId, &Wait)> = checkpoints
        .iter()
        .filter_map(|c| c.wait.as_ref().map(|w| (c.run_id, w)))
        .collect();
    if waits.is_empty() {
        return Ok(());
    }
    let ids: Vec<RunId> = waits.iter().map(|(id, _)| *id).collect();
    let nodes: Vec<&str> = waits.iter().map(|(_, w)| w.node_id.as_str()).collect();
    let wake: Vec<DateTime<Utc>> = waits.iter().map(|(_, w)| w.wake_at).collect();
    let attempts: Vec<i32> = waits.iter().map(|(_, w)| w.attempt).collect();
    sqlx::query(
        "INSERT INTO run_waits (run_id, company_id, node_id, wake_at, attempt)
         SELECT w.run_id, $1, w.node_id, w.wake_at, w.attempt
           FROM unnest($2::uuid[], $3::text[], $4::timestamptz[], $5::int[]) AS w(run_id, node_id, wake_at, attempt)
         ON CONFLICT (run_id, node_id) DO UPDATE SET wake_at = EXCLUDED.wake_at, attempt = EXCLUDED.attempt",
    )
    .bind(company_id)
    .bind(&ids)
    .bind(&nodes)
    .bind(&wake)
    .bind(&attempts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends the entries that belong to a step `inserted` just now (by the
/// entry's `details.run_id` and `details.node_id`), and every entry that
/// names no node: an entry of a step stored earlier was written with it.
/// `all_new`: every step offered was inserted (the usual finish), so every
/// entry is appended without looking.
pub(super) async fn append_new(
    tx: &mut Tx,
    entries: Vec<&Entry>,
    inserted: &[(RunId, String)],
    all_new: bool,
) -> Result<(), StoreError> {
    if all_new {
        return audit::append(tx, entries).await;
    }
    let inserted: HashSet<(Uuid, &str)> = inserted
        .iter()
        .map(|(run, node)| (run.as_uuid(), node.as_str()))
        .collect();
    let fresh: Vec<&Entry> = entries
        .into_iter()
        .filter(|e| {
            let run = e.details.get("run_id").and_then(|r| r.as_str());
            let node = e.details.get("node_id").and_then(|n| n.as_str());
            match (run.and_then(|r| Uuid::parse_str(r).ok()), node) {
                (Some(run), Some(node)) => inserted.contains(&(run, node)),
                _ => true,
            }
        })
        .collect();
    audit::append(tx, fresh).await
}

/// A run as its checkpoints left it.
#[derive(Debug)]
pub struct Saved {
    pub status: RunStatus,
    pub started_at: Option<DateTime<Utc>>,
    /// The stored steps in `seq` order, cut at the first gap (a checkpoint
    /// lost in an outage): what follows a gap runs again.
    pub steps: Vec<Step>,
    pub waits: Vec<Wait>,
}

/// The run's status and checkpoints; `None` once the run is gone. Only a
/// run not final has its steps and waits read.
pub async fn load(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Option<Saved>, StoreError> {
    let row: Option<(RunStatus, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT status, started_at FROM runs WHERE id = $1 AND company_id = $2")
            .bind(run_id)
            .bind(company_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((status, started_at)) = row else {
        return Ok(None);
    };
    if status.is_final() {
        return Ok(Some(Saved {
            status,
            started_at,
            steps: vec![],
            waits: vec![],
        }));
    }
    let mut steps = steps::of_run(tx, company_id, run_id).await?;
    let contiguous = steps.iter().enumerate().take_while(|(i, s)| s.seq == *i as i32).count();
    steps.truncate(contiguous);
    let waits: Vec<(String, DateTime<Utc>, i32)> =
        sqlx::query_as("SELECT node_id, wake_at, attempt FROM run_waits WHERE company_id = $1 AND run_id = $2")
            .bind(company_id)
            .bind(run_id)
            .fetch_all(&mut **tx)
            .await?;
    Ok(Some(Saved {
        status,
        started_at,
        steps,
        waits: waits
            .into_iter()
            .map(|(node_id, wake_at, attempt)| Wait {
                node_id,
                wake_at,
                attempt,
            })
            .collect(),
    }))
}
