//! The sign-in throttle's buckets, the one home of the `login_attempts`
//! table: counting failures, locking, clearing on success, and when a bucket
//! is dead (so the scheduler forgets buckets by the same decay rule). Which
//! buckets an attempt counts against, and how many failures each allows, is
//! the API's policy (`api/src/throttle.rs`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::db::{self, StoreError};

/// Seconds after which one failure is forgiven.
pub const DECAY_SECS: f64 = 60.0;

/// The longest a bucket stays locked.
const MAX_LOCK_SECS: f64 = 900.0;

/// Deletes up to `limit` buckets that have forgiven every failure and hold no
/// lock, oldest first (one range of `login_attempts_age_idx`). Such a bucket
/// is indistinguishable from none: the next failure would count as the first
/// either way, so trimming never changes a throttling decision. Runs as
/// the retention duty, in the caller's transaction.
pub async fn delete_forgiven(tx: &mut db::Tx, limit: i64) -> Result<u64, StoreError> {
    // A bucket holds at least one failure, so nothing younger than one decay can be forgiven.
    let done = sqlx::query(
        "DELETE FROM login_attempts WHERE key = ANY(ARRAY(
            SELECT key FROM login_attempts
             WHERE updated_at < now() - make_interval(secs => $1)
               AND updated_at < now() - make_interval(secs => failures * $1)
               AND (locked_until IS NULL OR locked_until < now())
             ORDER BY updated_at LIMIT $2))
           AND updated_at < now() - make_interval(secs => failures * $1)
           AND (locked_until IS NULL OR locked_until < now())",
    )
    .bind(DECAY_SECS)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// The latest `locked_until` in the future among the buckets, if any.
pub async fn locked_until(pool: &PgPool, keys: &[(String, f64)]) -> Result<Option<DateTime<Utc>>, StoreError> {
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let mut tx = db::duty_tx(pool, db::Duty::SignIn).await?;
    let until: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT max(locked_until) FROM login_attempts WHERE key = ANY($1) AND locked_until > now()")
            .bind(&names)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(until)
}

/// Counts a failure in each bucket (after decaying what it held) and locks
/// the buckets past their allowance.
pub async fn record_failure(pool: &PgPool, keys: &[(String, f64)]) -> Result<(), StoreError> {
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let free: Vec<f64> = keys.iter().map(|(_, f)| *f).collect();
    let mut tx = db::duty_tx(pool, db::Duty::SignIn).await?;
    sqlx::query(
        "INSERT INTO login_attempts AS a (key, failures, locked_until, updated_at)
         SELECT k, 1, NULL, now() FROM unnest($1::text[]) AS k
         ON CONFLICT (key) DO UPDATE
            SET failures = greatest(a.failures - extract(epoch FROM now() - a.updated_at)::float8 / $2, 0) + 1,
                updated_at = now()",
    )
    .bind(&names)
    .bind(DECAY_SECS)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE login_attempts a
            SET locked_until = CASE WHEN a.failures > i.free
                THEN now() + make_interval(secs => least(power(2, a.failures - i.free - 1), $3)) END
           FROM unnest($1::text[], $2::float8[]) AS i(key, free)
          WHERE a.key = i.key",
    )
    .bind(&names)
    .bind(&free)
    .bind(MAX_LOCK_SECS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await.map_err(StoreError::from)
}

/// A success forgets the client's failures, for this account and overall.
pub async fn clear(pool: &PgPool, keys: &[(String, f64)]) -> Result<(), StoreError> {
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let mut tx = db::duty_tx(pool, db::Duty::SignIn).await?;
    sqlx::query("DELETE FROM login_attempts WHERE key = ANY($1)")
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.map_err(StoreError::from)
}
