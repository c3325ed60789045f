//! The outbox sweep: publishes runs whose outbox rows are still there a few
//! seconds after acceptance (the API died between commit and publish, or
//! the broker refused), then deletes them. Each batch is announced to the
//! workers first (`Control::SweptV1`), because the original of a swept run
//! may still be on its way. Runs as the outbox-sweep duty
//! (`floq_outbox`), whose only reach into tenant data is the outbox.

use std::time::Duration;

use std::collections::BTreeMap;

use serde_json::json;
use uuid::Uuid;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::queue::{Control, Envelope, Publisher};
use floq_shared::telemetry::METRICS;
use floq_shared::{db, outbox};

const BATCH: i64 = 500;

/// One entry per company: which of its runs the sweep had to publish.
fn entries(envelopes: &[Envelope]) -> Vec<Entry> {
    let mut by_company: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for e in envelopes {
        let Envelope::RunFlowV1(m) = e;
        by_company.entry(m.company_id).or_default().push(m.run_id);
    }
    by_company
        .into_iter()
        .map(|(company_id, runs)| {
            Entry::new(company_id, Actor::system("scheduler"), "job.outbox_sweep")
                .details(json!({"republished": runs.len(), "run_ids": runs}))
        })
        .collect()
}

/// Publishes every row older than `after`; returns how many were published.
pub async fn sweep(pool: &db::Pool, publisher: &Publisher, after: Duration) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::OutboxSweep).await?;
        let rows = outbox::lock_due(&mut tx, after, BATCH).await?;
        if rows.is_empty() {
            break;
        }
        let (ids, envelopes): (Vec<i64>, Vec<Envelope>) = rows.into_iter().map(|r| (r.id, r.envelope)).unzip();
        // Workers hear first that originals of these runs may still arrive (an unconfirmed publish, a failed
        // delete): such a first delivery then claims its run, so it and the copy never both run it.
        let before_ms = chrono::Utc::now().timestamp_millis();
        publisher.broadcast(&Control::SweptV1 { before_ms }).await?;
        publisher.republish(&envelopes).await?;
        outbox::delete_swept(&mut tx, &ids).await?;
        audit::append(&mut tx, &entries(&envelopes)).await?;
        db::commit(tx).await?;
        total += ids.len();
        if (ids.len() as i64) < BATCH {
            break;
        }
    }
    let mut tx = db::duty_tx(pool, db::Duty::OutboxSweep).await?;
    let pending = outbox::pending(&mut tx).await?;
    db::commit(tx).await?;
    METRICS.outbox_pending.set(pending);
    if total > 0 {
        tracing::info!(published = total, "outbox sweep re-published runs");
    }
    Ok(total)
}
