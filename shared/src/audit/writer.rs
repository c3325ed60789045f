use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Entry, append};
use crate::db::StoreError;
use crate::retry::{self, Policy};
use crate::telemetry::METRICS;
use crate::{batch, db};

const MAX_BATCH: usize = 2000;
const QUEUE: usize = 20_000;

/// Appends entries in batches off the caller's path. The queue is bounded and
/// `record` waits when it is full, so a writer that falls behind slows its
/// callers down instead of dropping entries. A commit that fails for an
/// outage is retried until it succeeds; one the database refuses for what an
/// entry holds is split until the refused entries are pinned down
/// (`batch::isolate`), and those alone are dropped, logged and counted, so
/// one bad entry can never stall auditing or, through the full queue, the API.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Entry>,
}

impl Writer {
    /// The task ends once every clone is dropped and the queue is written.
    pub fn start(pool: PgPool, name: &'static str) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, tokio::spawn(write_loop(pool, rx, name)))
    }

    pub async fn record(&self, entry: Entry) {
        METRICS.audit_backlog.inc();
        if self.tx.send(entry).await.is_err() {
            // Only after shutdown began and the writer already drained: say so loudly.
            METRICS.audit_backlog.dec();
            tracing::error!("audit entry recorded after the audit writer stopped");
        }
    }
}

async fn write_loop(pool: PgPool, mut rx: mpsc::Receiver<Entry>, name: &'static str) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let written = write(&pool, &batch).await;
        METRICS.audit_backlog.sub(batch.len() as i64);
        METRICS.audit_entries.with_label_values(&[name]).inc_by(written as u64);
        batch.clear();
    }
}

/// Writes a batch, retrying outages with backoff; returns how many entries were stored.
async fn write(pool: &PgPool, batch: &[Entry]) -> usize {
    let mut backoff = retry::backoff(Policy::Persistent);
    let mut written = 0;
    // Index ranges of `batch` still to write.
    #[allow(clippy::single_range_in_vec_init, reason = "a list of ranges, one so far")]
    let mut pending = vec![0..batch.len()];
    while !pending.is_empty() {
        let mut retry = Vec::new();
        for range in pending {
            let parts = batch::isolate(&batch[range.clone()], |part| commit(pool, part), StoreError::is_refusal).await;
            for (part, result) in parts {
                let part = range.start + part.start..range.start + part.end;
                match result {
                    Ok(()) => written += part.len(),
                    Err(e) if e.is_refusal() => {
                        let entry = &batch[part.start];
                        METRICS.batch_rows_refused.with_label_values(&["audit"]).inc();
                        tracing::error!(error = %e, company.id = %entry.company_id, action = %entry.action,
                            "the database refused an audit entry; it is dropped so the others are written");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, entries = part.len(), "writing audit entries failed; retrying");
                        retry.push(part);
                    }
                }
            }
        }
        if !retry.is_empty() {
            // The persistent policy never runs out; were it to, retrying at once is still right.
            if let Some(delay) = backoff.next() {
                tokio::time::sleep(delay).await;
            }
        }
        pending = retry;
    }
    written
}

async fn commit(pool: &PgPool, batch: &[Entry]) -> Result<(), StoreError> {
    // Entries of many companies (and of none) share one commit, appended by the writer's own role.
    let mut tx = db::duty_tx(pool, db::Duty::AuditAppend).await?;
    append(&mut tx, batch).await?;
    tx.commit().await.map_err(StoreError::from)
}
