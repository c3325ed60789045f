//! Retention's side of the audit log: entries leave from the start of each
//! company's hash chain, with their seals, so what remains still verifies
//! (the oldest remaining seal is its anchor). Only sealed entries are
//! trimmed; unsealed ones are left for the sealer. Runs as the retention
//! duty, whose policies admit exactly these deletes.

use chrono::{DateTime, Utc};

use crate::db::{StoreError, Tx};
use crate::ids::CompanyId;

/// Deletes, from the start of the company's chain and among its oldest
/// `limit` seals, the entries older than `cutoff` or beyond the newest
/// `keep`; returns how many went (0 once nothing is due).
pub async fn delete_oldest(
    tx: &mut Tx,
    company_id: CompanyId,
    cutoff: DateTime<Utc>,
    keep: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "WITH head AS (SELECT seq FROM audit_chain_heads WHERE company_id = $1),
              doomed AS (
                SELECT s.entry_id, s.seq, a.at FROM audit_seals s JOIN audit_log a ON a.id = s.entry_id
                 WHERE s.company_id = $1 ORDER BY s.seq LIMIT $4)
         SELECT entry_id FROM doomed, head
          WHERE doomed.seq <= head.seq - $3
             OR doomed.seq < COALESCE((SELECT min(seq) FROM doomed WHERE at >= $2), head.seq + 1)
          ORDER BY doomed.seq",
    )
    .bind(company_id)
    .bind(cutoff)
    .bind(keep)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    sqlx::query("DELETE FROM audit_seals WHERE entry_id = ANY($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM audit_log WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    Ok(ids.len() as u64)
}
