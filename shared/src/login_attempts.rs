//! The sign-in throttle's buckets (`login_attempts`) and when one is dead.
//! The API counts failures into them (`api/src/throttle.rs`); the decay rule
//! lives here so the scheduler can forget buckets by the same rule.

use crate::db;

/// Seconds after which one failure is forgiven.
pub const DECAY_SECS: f64 = 60.0;

/// Deletes up to `limit` buckets that have forgiven every failure and hold no
/// lock, oldest first (one range of `login_attempts_age_idx`). Such a bucket
/// is indistinguishable from none: the next failure would count as the first
/// either way, so trimming never changes a throttling decision. Runs as
/// the retention duty, in the caller's transaction.
pub async fn delete_forgiven(tx: &mut db::Tx, limit: i64) -> Result<u64, sqlx::Error> {
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
