//! A run's steps, the one home of the worker's statements on `run_steps`:
//! writing the steps of runs a commit just finished, and reading back the
//! step a synchronous caller is answered with. Steps are written with their
//! run's outcome ([`super::outcomes::finish`]), and earlier only as the
//! checkpoints of a run past the running mark ([`super::checkpoints`]); a
//! step already there is kept, so a duplicate delivery or a resumed run adds
//! none twice.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};
use crate::run::StepStatus;

/// How one node of a run ended, as the executor records it.
#[derive(Debug, Clone)]
pub struct Step {
    pub node_id: String,
    pub seq: i32,
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The port a branch node took: a resumed run routes by it again.
    pub port: Option<String>,
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
    ports: Vec<Option<&'a str>>,
}

/// Writes the steps of `runs`, of those in `only` when given (the runs this
/// transaction moved to their outcome); a step already there (a checkpoint)
/// is kept. Returns the `(run, node)` of the rows it inserted: the steps
/// whose audit entries are still to be written.
pub(super) async fn insert(
    tx: &mut Tx,
    company_id: CompanyId,
    runs: &[(RunId, &[Step])],
    only: Option<&[RunId]>,
) -> Result<Vec<(RunId, String)>, StoreError> {
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
            c.ports.push(s.port.as_deref());
        }
    }
    if c.runs.is_empty() || only.is_some_and(<[RunId]>::is_empty) {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "INSERT INTO run_steps (run_id, company_id, node_id, seq, status, output, error, started_at, finished_at, port)
         SELECT s.run_id, $1, s.node_id, s.seq, s.status, s.output, s.error, s.started_at, s.finished_at, s.port
           FROM unnest($2::uuid[], $3::text[], $4::int[], $5::text[], $6::jsonb[], $7::jsonb[],
                       $8::timestamptz[], $9::timestamptz[], $11::text[])
                AS s(run_id, node_id, seq, status, output, error, started_at, finished_at, port)
          WHERE $10::uuid[] IS NULL OR s.run_id = ANY($10)
         ON CONFLICT (run_id, node_id) DO NOTHING
         RETURNING run_id, node_id",
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
    .bind(only)
    .bind(&c.ports)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A run's steps as stored, in `seq` order (what its checkpoints hold).
pub(super) async fn of_run(tx: &mut Tx, company_id: CompanyId, run_id: RunId) -> Result<Vec<Step>, StoreError> {
    let rows: Vec<StepRow> = sqlx::query_as(
        "SELECT node_id, seq, status, output, error, started_at, finished_at, port
           FROM run_steps WHERE company_id = $1 AND run_id = $2 ORDER BY seq",
    )
    .bind(company_id)
    .bind(run_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(StepRow::into_step).collect())
}

#[derive(sqlx::FromRow)]
struct StepRow {
    node_id: String,
    seq: i32,
    status: StepStatus,
    output: Option<Value>,
    error: Option<Value>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    port: Option<String>,
}

impl StepRow {
    fn into_step(self) -> Step {
        Step {
            node_id: self.node_id,
            seq: self.seq,
            status: self.status,
            output: self.output,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
            port: self.port,
        }
    }
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

/// Records the nodes a parked run of `company_id` was waiting on (their wake
/// time still ahead) as `cancelled` steps with `error`, numbered after its
/// checkpointed steps: a parked run that is cancelled shows where it stopped.
pub async fn cancel_waits(tx: &mut Tx, company_id: CompanyId, run_id: RunId, error: &Value) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO run_steps (run_id, company_id, node_id, seq, status, error, finished_at)
         SELECT w.run_id, w.company_id, w.node_id,
                coalesce((SELECT max(s.seq) + 1 FROM run_steps s WHERE s.run_id = w.run_id), 0)
                    + (row_number() OVER (ORDER BY w.node_id))::int - 1,
                'cancelled', $3, now()
           FROM run_waits w
          WHERE w.run_id = $2 AND w.company_id = $1 AND w.wake_at > now()
         ON CONFLICT (run_id, node_id) DO NOTHING",
    )
    .bind(company_id)
    .bind(run_id)
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
