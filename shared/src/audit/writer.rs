use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Entry, append};
use crate::db;
use crate::telemetry::METRICS;

const MAX_BATCH: usize = 2000;
const QUEUE: usize = 20_000;

/// Appends entries in batches off the caller's path. The queue is bounded and
/// `record` waits when it is full, so a writer that falls behind slows its
/// callers down instead of dropping entries; a failed commit is retried until
/// it succeeds.
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
        let mut delay = Duration::from_millis(50);
        loop {
            match commit(&pool, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, entries = batch.len(), "writing audit entries failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        METRICS.audit_backlog.sub(batch.len() as i64);
        METRICS
            .audit_entries
            .with_label_values(&[name])
            .inc_by(batch.len() as u64);
        batch.clear();
    }
}

async fn commit(pool: &PgPool, batch: &[Entry]) -> Result<(), sqlx::Error> {
    // Entries of many companies (and of none) share one commit; floq_system may append for any.
    let mut tx = db::system_tx(pool).await?;
    append(&mut tx, batch).await?;
    tx.commit().await
}
