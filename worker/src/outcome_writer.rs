//! Records run outcomes with group commit, then acks their deliveries.
//!
//! Outcomes that finish while a commit is in flight are written together in
//! the next transaction, tenant by tenant under RLS. A run is only ever moved
//! out of `queued`/`running`, so a duplicate delivery can never overwrite a
//! finished run. The delivery is acked after the commit; if the database
//! stays unavailable, it is returned to the queue. An outcome the database
//! refuses for what it holds fails only its own run (`output_unstorable`),
//! never the batch it shares with other tenants' runs.

use floq_shared::db::StoreError;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::executor::{Outcome, RunStatus};
use crate::reply::{self, PendingReply};
use floq_shared::db::Pool;
use floq_shared::ids::{CompanyId, RunId};
use floq_shared::retry::{self, Policy};
use floq_shared::runs::outcomes::{self, Started};
use floq_shared::telemetry::METRICS;
use floq_shared::{batch, db, pgtext};

const MAX_BATCH: usize = 1000;
const WRITERS: usize = 2;

pub enum Write {
    /// The run outlived the short threshold: show it as `running`.
    Started {
        company_id: CompanyId,
        run_id: RunId,
        at: DateTime<Utc>,
    },
    Finished {
        company_id: CompanyId,
        run_id: RunId,
        outcome: Box<Outcome>,
        acker: Acker,
        /// Sent once the outcome is committed (a synchronous caller waits for it).
        reply: Option<Box<PendingReply>>,
    },
}

impl Write {
    fn company_id(&self) -> CompanyId {
        match self {
            Write::Started { company_id, .. } | Write::Finished { company_id, .. } => *company_id,
        }
    }
}

#[derive(Clone)]
pub struct OutcomeWriter {
    tx: mpsc::Sender<Write>,
}

impl OutcomeWriter {
    /// The tasks finish once every writer clone is dropped and the queue is flushed.
    /// Runs marked `running` are recorded on `worker_id`'s lease.
    pub fn start(pool: Pool, worker_id: Uuid) -> (Self, JoinSet<()>) {
        let (tx, rx) = mpsc::channel(MAX_BATCH * WRITERS * 2);
        let rx = Arc::new(Mutex::new(rx));
        let mut tasks = JoinSet::new();
        for _ in 0..WRITERS {
            tasks.spawn(write_loop(pool.clone(), rx.clone(), worker_id));
        }
        (Self { tx }, tasks)
    }

    pub async fn send(&self, write: Write) {
        // Only fails after shutdown, when the unacked delivery returns to the queue anyway.
        let _ = self.tx.send(write).await;
    }
}

async fn write_loop(pool: Pool, rx: Arc<Mutex<mpsc::Receiver<Write>>>, worker_id: Uuid) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        let (stored, finished) = store(&pool, &mut batch, worker_id).await;
        // Settle every delivery of the batch at once rather than one round trip each.
        let finished = &finished;
        let settle = batch.into_iter().zip(stored).filter_map(|(write, stored)| {
            let Write::Finished {
                outcome, acker, reply, ..
            } = write
            else {
                return None;
            };
            Some(async move {
                if stored {
                    METRICS
                        .runs_completed
                        .with_label_values(&[outcome.status.as_str()])
                        .inc();
                    // Only the copy whose outcome was stored answers, with that outcome.
                    if let Some(reply) = reply.filter(|r| finished.contains(&r.run_id)) {
                        reply.send().await;
                    }
                    let _ = acker.ack(BasicAckOptions::default()).await;
                } else {
                    let _ = acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                }
            })
        });
        futures_util::future::join_all(settle).await;
    }
}

/// Commits a batch. A write the database refuses for what it holds is
/// isolated (`batch::isolate`), replaced by what can be stored (see
/// [`unstorable`]) and written again, so it never fails the other runs of the
/// batch and its run still finishes. Outages are retried a few times.
/// Returns, per write, whether it is settled in the database (ack, else
/// nack), and the runs this commit moved to their outcome.
async fn store(pool: &Pool, batch: &mut [Write], worker_id: Uuid) -> (Vec<bool>, HashSet<RunId>) {
    let mut stored = vec![false; batch.len()];
    let mut finished = HashSet::new();
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut backoff = retry::backoff(Policy::BeforeRedelivery);
    while !pending.is_empty() {
        let mut refused = Vec::new();
        let mut retry = Vec::new();
        let mut outage = None;
        {
            let writes: Vec<&Write> = pending.iter().map(|&i| &batch[i]).collect();
            for (range, result) in
                batch::isolate(&writes, |part| commit(pool, part, worker_id), StoreError::is_refusal).await
            {
                let indexes = pending[range.clone()].iter().copied();
                match result {
                    Ok(ids) => {
                        finished.extend(ids);
                        indexes.for_each(|i| stored[i] = true);
                    }
                    Err(e) if e.is_refusal() => refused.push((pending[range.start], e)),
                    Err(e) => {
                        retry.extend(indexes);
                        outage = Some(e);
                    }
                }
            }
        }
        for (i, e) in refused {
            METRICS.batch_rows_refused.with_label_values(&["outcomes"]).inc();
            if unstorable(&mut batch[i], &e) {
                tracing::warn!(error = %e, "the database refused a run's outcome; failing the run as output_unstorable");
                retry.push(i);
            } else {
                // Nothing of it can be stored: returning it to the queue would only fail again.
                tracing::error!(error = %e, "the database refused even a run's bare failure; dropping the write");
                stored[i] = true;
            }
        }
        if let Some(e) = outage {
            let Some(delay) = backoff.next() else {
                tracing::warn!(error = %e, writes = retry.len(), "recording run outcomes failed; their messages go back to the queue");
                break;
            };
            tracing::warn!(error = %e, writes = retry.len(), "recording run outcomes failed; retrying");
            tokio::time::sleep(delay).await;
        }
        retry.sort_unstable();
        pending = retry;
    }
    (stored, finished)
}

/// The error code of a run whose outcome the database refused.
pub const OUTPUT_UNSTORABLE: &str = "output_unstorable";

/// Replaces a refused write's outcome with less of it ([`degrade`]) and
/// answers a waiting caller with what is stored instead. Returns `false`
/// when there is nothing left to drop.
fn unstorable(write: &mut Write, e: &StoreError) -> bool {
    let Write::Finished {
        run_id, outcome, reply, ..
    } = write
    else {
        // A `running` mark holds nothing a database could refuse; losing one costs nothing.
        return false;
    };
    if !degrade(outcome, &e.sqlstate().unwrap_or_else(|| "unknown".into())) {
        return false;
    }
    if let Some(pending) = reply.take() {
        *reply = pending
            .replaced(reply::from_outcome(run_id.as_uuid(), None, outcome))
            .map(Box::new);
    }
    true
}

/// Less of an outcome the database refused: first the run fails with
/// `output_unstorable`, keeping its steps' statuses and audit entries but no
/// output or error values; if that is refused too, only the bare failure.
/// Returns `false` when there is nothing left to drop.
fn degrade(outcome: &mut Outcome, sqlstate: &str) -> bool {
    let already = outcome
        .error
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        == Some(OUTPUT_UNSTORABLE);
    if !already {
        outcome.status = RunStatus::Failed;
        outcome.output = None;
        outcome.error = Some(json!({
            "code": OUTPUT_UNSTORABLE,
            "message": format!("the database refused to store this run's output (SQLSTATE {sqlstate}); the run failed instead"),
        }));
        for step in &mut outcome.steps {
            step.output = None;
            step.error = None;
        }
        return true;
    }
    if outcome.steps.is_empty() && outcome.audit.is_empty() {
        return false;
    }
    outcome.steps.clear();
    outcome.audit.clear();
    true
}

/// The one rule for what flows produce (`pgtext::replace_nul`: U+0000 becomes
/// U+FFFD in strings and keys), applied to everything of an outcome that is
/// stored: the run's output and error and each step's output and error (its
/// audit entries get the same rule in `audit::append`). Called once per run,
/// before its outcome is stored or sent to a waiting caller, so both see the
/// same value.
pub fn make_storable(outcome: &mut Outcome) {
    let values = outcome.output.iter_mut().chain(outcome.error.iter_mut()).chain(
        outcome
            .steps
            .iter_mut()
            .flat_map(|s| s.output.iter_mut().chain(s.error.iter_mut())),
    );
    for value in values {
        pgtext::replace_nul(value);
    }
}

async fn commit(pool: &Pool, batch: &[&Write], worker_id: Uuid) -> Result<HashSet<RunId>, StoreError> {
    let mut by_company: BTreeMap<CompanyId, Vec<&Write>> = BTreeMap::new();
    for w in batch {
        by_company.entry(w.company_id()).or_default().push(*w);
    }
    let mut tx = db::multi_tenant_tx(pool).await?;
    let mut done = HashSet::new();
    for (company_id, writes) in by_company {
        db::set_tenant(&mut tx, company_id.into()).await?;
        let mut started = Vec::new();
        let mut finished = Vec::new();
        for w in writes {
            match w {
                Write::Started { run_id, at, .. } => started.push(Started {
                    run_id: *run_id,
                    at: *at,
                }),
                Write::Finished { run_id, outcome, .. } => finished.push((*run_id, &**outcome)),
            }
        }
        outcomes::mark_running(&mut tx, company_id, &started, worker_id).await?;
        done.extend(outcomes::finish(&mut tx, company_id, &finished).await?);
    }
    db::commit(tx).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Step;
    use floq_shared::audit::{Actor, Entry};

    fn outcome() -> Outcome {
        let mut o = Outcome::failed_early("x", "y");
        o.status = RunStatus::Succeeded;
        o.error = None;
        o.output = Some(json!({"body": "a\u{0}b", "k\u{0}": 1}));
        o.steps.push(Step {
            node_id: "h".into(),
            seq: 0,
            status: crate::executor::StepStatus::Succeeded,
            output: Some(json!(["\u{0}"])),
            error: None,
            started_at: None,
            finished_at: None,
        });
        o.audit
            .push(Entry::new(Uuid::nil(), Actor::system("test"), "node.execute"));
        o
    }

    #[test]
    fn a_refused_outcome_fails_its_run_then_sheds_everything_but_the_failure() {
        let mut o = outcome();
        assert!(degrade(&mut o, "22P05"));
        assert_eq!(o.status, RunStatus::Failed);
        assert_eq!(o.output, None);
        assert_eq!(o.error.as_ref().unwrap()["code"], OUTPUT_UNSTORABLE);
        assert!(o.error.as_ref().unwrap()["message"].as_str().unwrap().contains("22P05"));
        assert_eq!(
            (o.steps.len(), o.steps[0].output.is_none(), o.audit.len()),
            (1, true, 1)
        );
        assert!(degrade(&mut o, "22P05"), "refused again: drop steps and entries");
        assert!(o.steps.is_empty() && o.audit.is_empty());
        assert_eq!(o.error.as_ref().unwrap()["code"], OUTPUT_UNSTORABLE);
        assert!(!degrade(&mut o, "22P05"), "nothing left to drop");
    }

    #[test]
    fn stored_outputs_hold_no_nul() {
        let mut o = outcome();
        make_storable(&mut o);
        assert_eq!(o.output, Some(json!({"body": "a\u{FFFD}b", "k\u{FFFD}": 1})));
        assert_eq!(o.steps[0].output, Some(json!(["\u{FFFD}"])));
    }
}
