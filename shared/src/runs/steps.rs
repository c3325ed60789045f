//! A run's steps, the one home of the worker's statements on `run_steps`:
//! writing the steps of runs a commit just finished, and reading back the
//! step a synchronous caller is answered with. Steps are written only with
//! their run's outcome ([`super::outcomes::finish`]), never on their own, so
//! a run that is not finished has none and a duplicate delivery adds none.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};
use crate::run::StepStatus;

/// How one node of a run ended, as the executor records it.
#[derive(Debug)]
pub struct Step {
    pub node_id: String,
    pub seq: i32,
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Steps as columns, borrowed (outputs can be large).
#[derive(Default)]
struct Columns<'a> {
    runs: Vec<RunId>,
    nodes: Vec<&'a str>,
    seqs: Vec<i32>,
    statuses: Vec<&'static str>,
    outputs: Vec<Option<&'a Value>>,
    errors: Vec<Option<&'a Value>>,
    started: Vec<Option<DateTime<Utc>>>,
    finished: Vec<Option<DateTime<Utc>>>,
}

/// Writes the steps of `runs` for those in `finished` only (the runs this
/// transaction moved to their outcome); a step already there is kept.
pub(super) async fn insert(
    tx: &mut Tx,
    company_id: CompanyId,
    runs: &[(RunId, &[Step])],
    finished: &[RunId],
) -> Result<(), StoreError> {
    let mut c = Columns::default();
    for (run_id, steps) in runs {
        for s in *steps {
            c.runs.push(*run_id);
            c.nodes.push(&s.node_id);
            c.seqs.push(s.seq);
            c.statuses.push(s.status.as_str());
            c.outputs.push(s.output.as_ref());
            c.errors.push(s.error.as_ref());
            c.started.push(s.started_at);
            c.finished.push(s.finished_at);
        }
    }
    if c.runs.is_empty() || finished.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO run_steps (run_id, company_id, node_id, seq, status, output, error, started_at, finished_at)
         SELECT s.run_id, $1, s.node_id, s.seq, s.status, s.output, s.error, s.started_at, s.finished_at
           FROM unnest($2::uuid[], $3::text[], $4::int[], $5::text[], $6::jsonb[], $7::jsonb[],
                       $8::timestamptz[], $9::timestamptz[])
                AS s(run_id, node_id, seq, status, output, error, started_at, finished_at)
           JOIN unnest($10::uuid[]) AS done(id) ON done.id = s.run_id
         ON CONFLICT (run_id, node_id) DO NOTHING",
    )
    .bind(company_id)
    .bind(&c.runs)
    .bind(&c.nodes)
    .bind(&c.seqs)
    .bind(&c.statuses)
    .bind(&c.outputs)
    .bind(&c.errors)
    .bind(&c.started)
    .bind(&c.finished)
    .bind(finished)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The first step (by `seq`) of one of `node_ids` that succeeded.
#[derive(Debug, sqlx::FromRow)]
pub struct Responded {
    pub node_id: String,
    pub output: Option<Value>,
}

/// Which of `node_ids` (a flow's `respond` nodes) answered the run first.
pub async fn first_succeeded(
    tx: &mut Tx,
    company_id: CompanyId,
    run_id: RunId,
    node_ids: &[&str],
) -> Result<Option<Responded>, StoreError> {
    sqlx::query_as(
        "SELECT node_id, output FROM run_steps
          WHERE run_id = $1 AND company_id = $2 AND node_id = ANY($3) AND status = 'succeeded'
          ORDER BY seq LIMIT 1",
    )
    .bind(run_id)
    .bind(company_id)
    .bind(node_ids)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}
