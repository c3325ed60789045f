//! Retention: per company, audit entries older than `audit_max_age_days` or
//! beyond the newest `audit_max_entries`, and finished runs older than
//! `runs_max_age_days`; across companies, rows that are dead by their own
//! rule (expired sessions, forgiven sign-in buckets, old cron fire records,
//! idempotency keys, webhook signature claims). Everything goes in bounded batches, each its own
//! short transaction, so the API stays responsive and a crash loses only the
//! batch in flight; the next pass resumes. Audit entries leave oldest first
//! along each company's hash chain, so what remains still verifies (the
//! oldest remaining seal is its anchor). Each pass that deleted anything is
//! itself audited, with counts.

use chrono::{DateTime, Duration, Utc};
use floq_shared::db::StoreError;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::retention::{DEFAULT_AUDIT_MAX_AGE_DAYS, DEFAULT_AUDIT_MAX_ENTRIES, DEFAULT_RUNS_MAX_AGE_DAYS};
use floq_shared::{db, login_attempts, sessions};

use crate::cron_fire;

const BATCH: i64 = 5_000;

/// A company and its settings, absent where it never set them.
#[derive(sqlx::FromRow)]
struct Settings {
    id: Uuid,
    audit_max_age_days: Option<i32>,
    audit_max_entries: Option<i64>,
    runs_max_age_days: Option<i32>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub audit_entries: u64,
    pub runs: u64,
    pub dead: Trimmed,
}

/// Rows trimmed because their own rule says they can no longer matter.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub sessions: u64,
    pub login_attempts: u64,
    pub schedule_fires: u64,
}

/// Deletes, in batches of [`BATCH`] (each its own transaction as the retention duty),
/// whatever one batch function finds, until a batch comes back short.
/// The SQL stays with the module that owns the table.
async fn in_batches<F>(pool: &PgPool, batch: F) -> anyhow::Result<u64>
where
    F: for<'t> Fn(&'t mut db::Tx, i64) -> futures_util::future::BoxFuture<'t, Result<u64, StoreError>>,
{
    let mut deleted = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
        let done = batch(&mut tx, BATCH).await?;
        tx.commit().await?;
        deleted += done;
        if done < BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// Expired sessions, forgiven sign-in buckets and old cron fire records:
/// tables that grow with use and whose rows stop mattering on their own clock.
pub async fn trim_dead_rows(pool: &PgPool) -> anyhow::Result<Trimmed> {
    let trimmed = Trimmed {
        sessions: in_batches(pool, |tx, n| Box::pin(sessions::delete_expired(tx, n))).await?,
        login_attempts: in_batches(pool, |tx, n| Box::pin(login_attempts::delete_forgiven(tx, n))).await?,
        schedule_fires: in_batches(pool, |tx, n| Box::pin(cron_fire::delete_old_fires(tx, n))).await?,
    };
    if trimmed != Trimmed::default() {
        tracing::info!(?trimmed, "retention trimmed dead rows");
    }
    Ok(trimmed)
}

pub async fn enforce(pool: &PgPool) -> anyhow::Result<Swept> {
    let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
    let companies: Vec<Settings> = sqlx::query_as(
        "SELECT c.id, s.audit_max_age_days, s.audit_max_entries, s.runs_max_age_days
           FROM companies c LEFT JOIN company_settings s ON s.company_id = c.id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // Idempotency keys are only honoured for 24 hours; past that they are dead weight.
    let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut total = Swept {
        dead: trim_dead_rows(pool).await?,
        ..Swept::default()
    };
    for settings in companies {
        let company_id = settings.id;
        let now = Utc::now();
        let audit_days = settings.audit_max_age_days.unwrap_or(DEFAULT_AUDIT_MAX_AGE_DAYS);
        let audit_cutoff = now - Duration::days(audit_days.into());
        let run_days = settings.runs_max_age_days.unwrap_or(DEFAULT_RUNS_MAX_AGE_DAYS);
        let run_cutoff = now - Duration::days(run_days.into());
        let keep = settings.audit_max_entries.unwrap_or(DEFAULT_AUDIT_MAX_ENTRIES);
        let audit_deleted = trim_audit(pool, company_id, audit_cutoff, keep).await?;
        let runs_deleted = trim_runs(pool, company_id, run_cutoff).await?;
        if audit_deleted + runs_deleted > 0 {
            // The company's own entry, appended as the company.
            let mut tx = db::tenant_tx(pool, company_id).await?;
            let entry = Entry::new(company_id, Actor::system("scheduler"), "job.retention").details(json!({
                "audit_entries_deleted": audit_deleted,
                "runs_deleted": runs_deleted,
                "audit_cutoff": audit_cutoff,
                "audit_max_entries": keep,
                "runs_cutoff": run_cutoff,
            }));
            audit::append(&mut tx, &[entry]).await?;
            tx.commit().await?;
            tracing::info!(%company_id, audit_deleted, runs_deleted, "retention deleted old data");
        }
        total.audit_entries += audit_deleted;
        total.runs += runs_deleted;
    }
    Ok(total)
}

/// Forgets webhook signature claims past their window (`api/src/replay.rs`):
/// a signature that can no longer verify cannot be replayed. Bounded batches;
/// the retention duty may delete only expired claims.
pub async fn trim_webhook_signatures(pool: &PgPool) -> anyhow::Result<u64> {
    let mut deleted = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
        let done = sqlx::query(
            "DELETE FROM webhook_signatures WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM webhook_signatures WHERE expires_at < now() LIMIT $1))",
        )
        .bind(BATCH)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        deleted += done.rows_affected();
        if done.rows_affected() < BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// Deletes from the start of the company's chain while entries are too old
/// or too many. Unsealed entries are left for the sealer.
async fn trim_audit(pool: &PgPool, company_id: Uuid, cutoff: DateTime<Utc>, keep: i64) -> anyhow::Result<u64> {
    let mut deleted = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
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
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(deleted);
        }
        sqlx::query("DELETE FROM audit_seals WHERE entry_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM audit_log WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        deleted += ids.len() as u64;
    }
}

/// The lowest uuid v7 of the millisecond `at` falls in: every v7 id made
/// before that millisecond sorts below it.
pub fn v7_floor(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().clamp(0, (1 << 48) - 1) as u128;
    Uuid::from_u128(ms << 80)
}

/// Finished runs queued before the cutoff, with their steps; queued and
/// running ones stay whatever their age. A run's id is a uuid v7 made when it
/// was queued, so `id < v7_floor(cutoff)` bounds each batch to the range of
/// `runs_company_idx` before the cutoff: a batch reads what it deletes (plus
/// the tenant's unfinished old runs), never the tenant's whole window.
async fn trim_runs(pool: &PgPool, company_id: Uuid, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
    let mut deleted = 0;
    let floor = v7_floor(cutoff);
    loop {
        // Runs are tenant rows: trimmed as the tenant, under its policies.
        let mut tx = db::tenant_tx(pool, company_id).await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM runs WHERE id IN (
                SELECT id FROM runs
                 WHERE company_id = $1 AND id < $4 AND queued_at < $2
                   AND status IN ('succeeded', 'failed', 'cancelled')
                 ORDER BY id LIMIT $3)
             RETURNING id",
        )
        .bind(company_id)
        .bind(cutoff)
        .bind(BATCH / 5)
        .bind(floor)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(deleted);
        }
        sqlx::query("DELETE FROM run_steps WHERE run_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        deleted += ids.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
