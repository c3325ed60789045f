//! Checkpoints of runs past the running mark, with group commit.
//!
//! A run shorter than `FLOQ_RUNNING_MARK_AFTER_MS` sends nothing here. Past
//! the mark its executor hands over every step it completes (with the steps'
//! audit entries); one task writes what arrived across runs in one
//! transaction, tenant by tenant, at most `FLOQ_CHECKPOINT_FLUSH_MS` after
//! the first of them arrived, or at once when a run parks and waits for its
//! checkpoint (`Journal::flush`). One task, so a run's checkpoints are
//! written in the order they were made. A checkpoint the database cannot
//! take after a few tries is dropped: its nodes run again if the run is
//! resumed (docs/architecture.md says when a side effect may repeat).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use floq_shared::audit::Entry;
use floq_shared::db::{self, Pool, StoreError};
use floq_shared::ids::{CompanyId, RunId};
use floq_shared::retry::{self, Policy};
use floq_shared::runs::checkpoints::{self, Checkpoint};
use floq_shared::runs::outcomes;
use floq_shared::runs::steps::Step;
use floq_shared::telemetry::METRICS;
use floq_shared::{batch, pgtext};

const MAX_BATCH: usize = 1000;

pub struct Cmd {
    company_id: CompanyId,
    checkpoint: Checkpoint,
    /// Answered once written (`true`) or given up (`false`): a parking run waits for it.
    stored: Option<oneshot::Sender<bool>>,
}

#[derive(Clone)]
pub struct CheckpointWriter {
    tx: mpsc::Sender<Cmd>,
}

impl CheckpointWriter {
    /// The task finishes once every writer clone (and journal) is dropped and the queue is written.
    pub fn start(pool: Pool, flush: Duration) -> (Self, JoinHandle<()>) {
        let (writer, rx) = Self::channel();
        (writer, tokio::spawn(write_loop(pool, rx, flush)))
    }

    pub(crate) fn channel() -> (Self, mpsc::Receiver<Cmd>) {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
        (Self { tx }, rx)
    }

    /// The journal of one run's execution.
    pub fn journal(&self, company_id: CompanyId, run_id: RunId) -> Arc<Journal> {
        Arc::new(Journal {
            company_id,
            run_id,
            past_mark: AtomicBool::new(false),
            marked: Notify::new(),
            writer: self.clone(),
        })
    }
}

/// Where one run's executor sends its checkpoints.
pub struct Journal {
    company_id: CompanyId,
    run_id: RunId,
    past_mark: AtomicBool,
    marked: Notify,
    writer: CheckpointWriter,
}

impl Journal {
    /// The run outlived the running mark: from now on its completed steps are checkpointed.
    pub fn mark(&self) {
        self.past_mark.store(true, Ordering::Relaxed);
        self.marked.notify_waiters();
    }

    /// Returns once the run is past the mark: what it completed before is checkpointed then.
    pub async fn marked(&self) {
        let notified = self.marked.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.past_mark() {
            return;
        }
        notified.await;
    }

    pub fn past_mark(&self) -> bool {
        self.past_mark.load(Ordering::Relaxed)
    }

    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// Queues steps for the next flush.
    pub async fn record(&self, mut steps: Vec<Step>, audit: Vec<Entry>) {
        storable(&mut steps);
        let checkpoint = Checkpoint {
            run_id: self.run_id,
            steps,
            audit,
            wait: None,
        };
        let cmd = Cmd {
            company_id: self.company_id,
            checkpoint,
            stored: None,
        };
        // Only fails after shutdown; the run is then resumed from what was written before.
        let _ = self.writer.tx.send(cmd).await;
    }

    /// Writes `checkpoint` now; `true` once it is committed.
    pub async fn flush(&self, mut checkpoint: Checkpoint) -> bool {
        storable(&mut checkpoint.steps);
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd {
            company_id: self.company_id,
            checkpoint,
            stored: Some(tx),
        };
        if self.writer.tx.send(cmd).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// Steps are stored by the rule of what flows produce (`pgtext::replace_nul`,
/// as `outcome_writer::make_storable` applies to a finished run's), so a
/// checkpoint holds what the finish would have.
fn storable(steps: &mut [Step]) {
    for value in steps
        .iter_mut()
        .flat_map(|s| s.output.iter_mut().chain(s.error.iter_mut()))
    {
        pgtext::replace_nul(value);
    }
}

#[cfg(test)]
impl Cmd {
    pub(crate) fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
}

async fn write_loop(pool: Pool, mut rx: mpsc::Receiver<Cmd>, flush: Duration) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + flush;
        let mut batch = vec![first];
        // Gather until the first one is due, or someone waits for theirs.
        while batch.len() < MAX_BATCH && batch.iter().all(|c| c.stored.is_none()) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(cmd)) => batch.push(cmd),
                Ok(None) | Err(_) => break,
            }
        }
        let stored = store(&pool, &batch).await;
        METRICS
            .checkpoints_written
            .inc_by(stored.iter().filter(|s| **s).count() as u64);
        for (cmd, stored) in batch.into_iter().zip(stored) {
            if let Some(tx) = cmd.stored {
                let _ = tx.send(stored);
            }
        }
    }
}

/// Commits a batch: a checkpoint the database refuses for what it holds is
/// isolated and dropped, an outage retried a few times. Returns, per
/// checkpoint, whether it is written.
async fn store(pool: &Pool, batch: &[Cmd]) -> Vec<bool> {
    let mut stored = vec![false; batch.len()];
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut backoff = retry::backoff(Policy::BeforeRedelivery);
    while !pending.is_empty() {
        let cmds: Vec<&Cmd> = pending.iter().map(|&i| &batch[i]).collect();
        let mut retry = Vec::new();
        let mut outage = None;
        for (range, result) in batch::isolate(&cmds, |part| commit(pool, part), StoreError::is_refusal).await {
            let indexes = pending[range.clone()].iter().copied();
            match result {
                Ok(()) => indexes.for_each(|i| stored[i] = true),
                Err(e) if e.is_refusal() => {
                    METRICS.batch_rows_refused.with_label_values(&["checkpoints"]).inc();
                    tracing::warn!(error = %e, "the database refused a run's checkpoint; its nodes run again if it is resumed");
                }
                Err(e) => {
                    retry.extend(indexes);
                    outage = Some(e);
                }
            }
        }
        if let Some(e) = outage {
            let Some(delay) = backoff.next() else {
                tracing::warn!(error = %e, checkpoints = retry.len(), "writing checkpoints failed; dropping them");
                break;
            };
            tracing::warn!(error = %e, checkpoints = retry.len(), "writing checkpoints failed; retrying");
            tokio::time::sleep(delay).await;
        }
        pending = retry;
    }
    stored
}

async fn commit(pool: &Pool, batch: &[&Cmd]) -> Result<(), StoreError> {
    let mut by_company: BTreeMap<CompanyId, Vec<&Checkpoint>> = BTreeMap::new();
    for cmd in batch {
        by_company.entry(cmd.company_id).or_default().push(&cmd.checkpoint);
    }
    let mut tx = db::multi_tenant_tx(pool).await?;
    for (company_id, checkpoints) in by_company {
        db::set_tenant(&mut tx, company_id.into()).await?;
        checkpoints::write(&mut tx, company_id, &checkpoints).await?;
        // A parked run may not have reached its running mark: it must not look queued (lost) meanwhile, nor held by
        // this worker (whose end would make the reaper resume it early).
        let parked: Vec<RunId> = checkpoints
            .iter()
            .filter(|c| c.wait.is_some())
            .map(|c| c.run_id)
            .collect();
        outcomes::parked(&mut tx, company_id, &parked).await?;
    }
    db::commit(tx).await?;
    Ok(())
}
