//! The outbox sweep: publishes runs whose outbox rows are still there a few
//! seconds after acceptance (the API died between commit and publish, or
//! the broker refused), then deletes them. Runs as `floq_system`, whose only
//! reach into tenant data is the outbox policy.

use std::time::Duration;

use sqlx::PgPool;

use floq_shared::db;
use floq_shared::queue::{Envelope, Publisher};
use floq_shared::telemetry::METRICS;

const BATCH: i64 = 500;

/// Publishes every row older than `after`; returns how many were published.
pub async fn sweep(pool: &PgPool, publisher: &Publisher, after: Duration) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = db::system_tx(pool).await?;
        let rows: Vec<(i64, sqlx::types::Json<Envelope>)> = sqlx::query_as(
            "SELECT id, payload FROM outbox
              WHERE created_at < now() - make_interval(secs => $1)
              ORDER BY id LIMIT $2
              FOR UPDATE SKIP LOCKED",
        )
        .bind(after.as_secs_f64())
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        let envelopes: Vec<Envelope> = rows.into_iter().map(|(_, e)| e.0).collect();
        publisher.publish(&envelopes).await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        total += ids.len();
        if (ids.len() as i64) < BATCH {
            break;
        }
    }
    let mut tx = db::system_tx(pool).await?;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    METRICS.outbox_pending.set(pending);
    if total > 0 {
        tracing::info!(published = total, "outbox sweep re-published runs");
    }
    Ok(total)
}
