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

use std::future::Future;

use chrono::{DateTime, Utc};
use floq_shared::db::StoreError;
use serde_json::json;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::ids::CompanyId;
use floq_shared::{db, idempotency, login_attempts, retention, runs, sessions, signatures};

use crate::cron_fire;

const BATCH: i64 = 5_000;

/// Runs in batches of a fifth of [`BATCH`]: each deletes steps too.
const RUN_BATCH: i64 = BATCH / 5;

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
    /// Single sign-on states past their expiry (never finished, or spent).
    pub sso_states: u64,
}

/// When a batched delete has nothing left.
#[derive(Clone, Copy, Debug)]
enum Until {
    /// A batch came back short of its limit.
    Short(i64),
    /// A batch deleted nothing.
    Empty,
}

impl Until {
    fn done(self, deleted: u64) -> bool {
        match self {
            Until::Short(limit) => deleted < limit as u64,
            Until::Empty => deleted == 0,
        }
    }
}

/// Runs `batch` (one batch, in its own transaction) until `until` says the
/// rows are gone; returns how many went in all.
async fn repeat<F, Fut>(until: Until, mut batch: F) -> anyhow::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let mut deleted = 0;
    loop {
        let done = batch().await?;
        deleted += done;
        if until.done(done) {
            return Ok(deleted);
        }
    }
}

/// Deletes, in batches of [`BATCH`] (each its own transaction as the retention duty),
/// whatever one batch function finds, until a batch comes back short.
/// The SQL stays with the module that owns the table.
async fn in_batches<F>(pool: &db::Pool, batch: F) -> anyhow::Result<u64>
where
    F: for<'t> Fn(&'t mut db::Tx, i64) -> futures_util::future::BoxFuture<'t, Result<u64, StoreError>>,
{
    repeat(Until::Short(BATCH), || async {
        let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
        let done = batch(&mut tx, BATCH).await?;
        db::commit(tx).await?;
        Ok(done)
    })
    .await
}

/// Expired sessions, forgiven sign-in buckets, old cron fire records and SSO states:
/// tables that grow with use and whose rows stop mattering on their own clock.
pub async fn trim_dead_rows(pool: &db::Pool) -> anyhow::Result<Trimmed> {
    let trimmed = Trimmed {
        sessions: in_batches(pool, |tx, n| Box::pin(sessions::delete_expired(tx, n))).await?,
        login_attempts: in_batches(pool, |tx, n| Box::pin(login_attempts::delete_forgiven(tx, n))).await?,
        schedule_fires: in_batches(pool, |tx, n| Box::pin(cron_fire::delete_old_fires(tx, n))).await?,
        sso_states: in_batches(pool, |tx, n| Box::pin(floq_shared::sso::delete_expired_states(tx, n))).await?,
    };
    if trimmed != Trimmed::default() {
        tracing::info!(?trimmed, "retention trimmed dead rows");
    }
    Ok(trimmed)
}

pub async fn enforce(pool: &db::Pool) -> anyhow::Result<Swept> {
    let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
    let companies = retention::companies(&mut tx).await?;
    db::commit(tx).await?;
    // Idempotency keys are only honoured for 24 hours; past that they are dead weight.
    let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
    idempotency::delete_expired(&mut tx).await?;
    db::commit(tx).await?;
    let mut total = Swept {
        dead: trim_dead_rows(pool).await?,
        ..Swept::default()
    };
    for company in companies {
        let company_id = company.id;
        let plan = company.plan(Utc::now());
        let audit_deleted = trim_audit(pool, company_id, plan.audit_cutoff, plan.audit_keep).await?;
        let runs_deleted = trim_runs(pool, company_id, plan.runs_cutoff).await?;
        if audit_deleted + runs_deleted > 0 {
            // The company's own entry, appended as the company.
            let mut tx = db::tenant_tx(pool, company_id.0).await?;
            let entry = Entry::new(company_id.0, Actor::system("scheduler"), "job.retention").details(json!({
                "audit_entries_deleted": audit_deleted,
                "runs_deleted": runs_deleted,
                "audit_cutoff": plan.audit_cutoff,
                "audit_max_entries": plan.audit_keep,
                "runs_cutoff": plan.runs_cutoff,
            }));
            audit::append(&mut tx, &[entry]).await?;
            db::commit(tx).await?;
            tracing::info!(%company_id, audit_deleted, runs_deleted, "retention deleted old data");
        }
        total.audit_entries += audit_deleted;
        total.runs += runs_deleted;
    }
    Ok(total)
}

/// Forgets webhook signature claims past their window (`floq_shared::signatures`):
/// a signature that can no longer verify cannot be replayed. Bounded batches;
/// the retention duty may delete only expired claims.
pub async fn trim_webhook_signatures(pool: &db::Pool) -> anyhow::Result<u64> {
    in_batches(pool, |tx, n| Box::pin(signatures::delete_expired(tx, n))).await
}

/// Deletes from the start of the company's chain while entries are too old
/// or too many. Unsealed entries are left for the sealer.
async fn trim_audit(pool: &db::Pool, company_id: CompanyId, cutoff: DateTime<Utc>, keep: i64) -> anyhow::Result<u64> {
    repeat(Until::Empty, || async {
        let mut tx = db::duty_tx(pool, db::Duty::Retention).await?;
        let done = audit::trim::delete_oldest(&mut tx, company_id, cutoff, keep, BATCH).await?;
        if done > 0 {
            db::commit(tx).await?;
        }
        Ok(done)
    })
    .await
}

/// Finished runs queued before the cutoff, with their steps
/// (`floq_shared::runs::trim`); queued and running ones stay whatever their age.
async fn trim_runs(pool: &db::Pool, company_id: CompanyId, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
    repeat(Until::Empty, || async {
        // Runs are tenant rows: trimmed as the tenant, under its policies.
        let mut tx = db::tenant_tx(pool, company_id.0).await?;
        let ids = runs::trim::delete_finished(&mut tx, company_id, cutoff, RUN_BATCH).await?;
        if !ids.is_empty() {
            db::commit(tx).await?;
        }
        Ok(ids.len() as u64)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// `repeat` over a table of `rows` deleted `limit` at a time; returns
    /// the total and how many batches ran.
    async fn drain(rows: u64, limit: i64, until: fn(i64) -> Until) -> (u64, usize) {
        let left = RefCell::new(rows);
        let mut batches = 0;
        let total = repeat(until(limit), || {
            batches += 1;
            let mut left = left.borrow_mut();
            let done = (*left).min(limit as u64);
            *left -= done;
            std::future::ready(Ok(done))
        })
        .await
        .unwrap();
        (total, batches)
    }

    #[tokio::test]
    async fn batches_stop_once_the_rows_are_gone_and_no_later() {
        // A short batch ends the dead-row trims: one batch for what fits, one more for a full last batch.
        assert_eq!(drain(0, 5, Until::Short).await, (0, 1));
        assert_eq!(drain(3, 5, Until::Short).await, (3, 1));
        assert_eq!(drain(10, 5, Until::Short).await, (10, 3));
        assert_eq!(drain(12, 5, Until::Short).await, (12, 3));
        // Audit and run trims stop on an empty batch (their batches may come back short midway).
        assert_eq!(drain(0, 5, |_| Until::Empty).await, (0, 1));
        assert_eq!(drain(12, 5, |_| Until::Empty).await, (12, 4));
    }

    #[tokio::test]
    async fn a_failed_batch_ends_the_pass_with_its_error() {
        let mut batches = 0;
        let result = repeat(Until::Empty, || {
            batches += 1;
            std::future::ready(if batches < 3 {
                Ok(1)
            } else {
                Err(anyhow::anyhow!("down"))
            })
        })
        .await;
        assert!(result.is_err());
        assert_eq!(batches, 3);
    }
}
