//! Browser sessions' lifetime in storage. Sessions are created, looked up and
//! revoked by the API (`api/src/session.rs`); what is kept of them afterwards
//! is decided here, so the scheduler can trim them without the API.

use chrono::Duration;

use crate::db;

/// How long a session row outlives its expiry: a cookie presented within
/// this still answers (and audits) `auth.session_expired` once instead of
/// an unknown session. Revoked sessions expire on schedule too, so this
/// bounds them as well.
pub const KEEP_AFTER_EXPIRY: Duration = Duration::days(1);

/// Deletes up to `limit` sessions past [`KEEP_AFTER_EXPIRY`], oldest first
/// (one range of `sessions_expiry_idx`); returns how many went. Runs as
/// the retention duty, in the caller's transaction.
pub async fn delete_expired(tx: &mut db::Tx, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM sessions WHERE id = ANY(ARRAY(
            SELECT id FROM sessions WHERE expires_at < now() - make_interval(secs => $1)
             ORDER BY expires_at LIMIT $2))",
    )
    .bind(KEEP_AFTER_EXPIRY.num_seconds() as f64)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
