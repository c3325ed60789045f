//! The `outbox` table after a run's row is written ([`crate::runs::enqueue`]
//! is the one home of its inserts): deleting rows whose message the broker
//! confirmed, and the scheduler's sweep of rows left behind. The sweep runs
//! as the outbox duty, whose only reach into tenant data is this table.
//! Nothing here decides what a message says; it stores what was encoded.

use std::time::Duration;

use crate::db::{StoreError, Tx};
use crate::ids::CompanyId;
use crate::queue::Envelope;

/// An outbox row: the id of its row and the message it holds.
#[derive(Debug)]
pub struct Pending {
    pub id: i64,
    pub envelope: Envelope,
}

/// Deletes one company's rows whose messages were confirmed.
pub async fn delete_published(tx: &mut Tx, company_id: CompanyId, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox WHERE company_id = $1 AND id = ANY($2)")
        .bind(company_id)
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Locks up to `limit` rows older than `older_than`, oldest first, skipping
/// rows another sweep holds (any company's: the outbox duty).
pub async fn lock_due(tx: &mut Tx, older_than: Duration, limit: i64) -> Result<Vec<Pending>, StoreError> {
    let rows: Vec<(i64, sqlx::types::Json<Envelope>)> = sqlx::query_as(
        "SELECT id, payload FROM outbox
          WHERE created_at < now() - make_interval(secs => $1)
          ORDER BY id LIMIT $2
          FOR UPDATE SKIP LOCKED",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, envelope)| Pending {
            id,
            envelope: envelope.0,
        })
        .collect())
}

/// Deletes rows the sweep republished (the outbox duty).
pub async fn delete_swept(tx: &mut Tx, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Rows still waiting for the broker, across companies (the outbox duty).
pub async fn pending(tx: &mut Tx) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// As [`pending`], counting no further than `limit` (the backlog bound), so
/// sampling it stays cheap however far the outbox has grown.
pub async fn pending_up_to(tx: &mut Tx, limit: i64) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) o")
        .bind(limit)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}
