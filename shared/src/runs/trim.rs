//! Retention's side of runs: deleting a company's finished runs, with their
//! steps, once they are older than the company keeps them. Runs are tenant
//! rows, so this runs in the company's tenant transaction, under its
//! policies. Queued and running runs are never deleted, whatever their age.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, RunId};

/// The lowest uuid v7 of the millisecond `at` falls in: every v7 id made
/// before that millisecond sorts below it.
pub fn v7_floor(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().clamp(0, (1 << 48) - 1) as u128;
    Uuid::from_u128(ms << 80)
}

/// Deletes up to `limit` finished runs queued before `cutoff`, and their
/// steps; returns their ids. A run's id is a uuid v7 made when it was queued,
/// so `id < v7_floor(cutoff)` bounds the batch to the range of
/// `runs_company_idx` before the cutoff: a batch reads what it deletes (plus
/// the tenant's unfinished old runs), never the tenant's whole window.
pub async fn delete_finished(
    tx: &mut Tx,
    company_id: CompanyId,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<RunId>, StoreError> {
    let ids: Vec<RunId> = sqlx::query_scalar(
        "DELETE FROM runs WHERE id IN (
            SELECT id FROM runs
             WHERE company_id = $1 AND id < $4 AND queued_at < $2
               AND status IN ('succeeded', 'failed', 'cancelled')
             ORDER BY id LIMIT $3)
         RETURNING id",
    )
    .bind(company_id)
    .bind(cutoff)
    .bind(limit)
    .bind(v7_floor(cutoff))
    .fetch_all(&mut **tx)
    .await?;
    if !ids.is_empty() {
        sqlx::query("DELETE FROM run_steps WHERE company_id = $1 AND run_id = ANY($2)")
            .bind(company_id)
            .bind(&ids)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM run_waits WHERE company_id = $1 AND run_id = ANY($2)")
            .bind(company_id)
            .bind(&ids)
            .execute(&mut **tx)
            .await?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn the_v7_floor_sorts_below_every_id_made_before_it_and_none_after() {
        let cutoff = Utc::now() - Duration::days(30);
        let floor = v7_floor(cutoff);
        let at = |t: DateTime<Utc>| {
            let ts = uuid::Timestamp::from_unix(uuid::NoContext, t.timestamp() as u64, t.timestamp_subsec_nanos());
            Uuid::new_v7(ts)
        };
        for _ in 0..100 {
            assert!(at(cutoff - Duration::milliseconds(1)) < floor);
            assert!(at(cutoff + Duration::milliseconds(1)) > floor);
            assert!(Uuid::now_v7() > floor);
        }
        assert_eq!(v7_floor(DateTime::<Utc>::UNIX_EPOCH), Uuid::nil());
    }
}
