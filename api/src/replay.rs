//! Signed webhook calls are accepted once: every accepted signature is
//! claimed in `webhook_signatures` (PostgreSQL, so every API replica sees
//! it) until its timestamp falls out of the webhook's tolerance, and a claim
//! that already exists refuses the call with `409 signature_replayed`.
//!
//! The claim is one `INSERT … ON CONFLICT DO NOTHING` inside the token
//! lookup's transaction: one extra round trip, only for signed webhooks. A
//! claim whose run was then not accepted is released, so the sender may
//! retry the same request (the webhook handler runs claim, acceptance and
//! release in one spawned task, so a caller hanging up cannot split them). This module owns that table's SQL except the
//! scheduler's trim of expired claims (`scheduler/src/retention.rs`).

use chrono::{DateTime, Utc};
use floq_shared::db::StoreError;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use floq_shared::db;

/// Claims outlive their window by this much, so an API replica whose clock
/// runs behind the database's cannot accept a signature whose claim is gone.
const CLOCK_SKEW_SECONDS: i64 = 60;

/// A verified signature, as remembered: a hash of its MAC (which covers the
/// timestamp and the body) and when it stops verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    hash: Vec<u8>,
    expires_at: DateTime<Utc>,
}

impl Signature {
    /// `mac` is the verified MAC bytes (not the header text, so re-spelling the
    /// header cannot make a replay look new); `t` is its signed timestamp.
    pub fn new(mac: &[u8], t: i64, tolerance_seconds: i64) -> Self {
        let expires = t.saturating_add(tolerance_seconds).saturating_add(CLOCK_SKEW_SECONDS);
        Self {
            hash: Sha256::digest(mac).to_vec(),
            expires_at: DateTime::from_timestamp(expires, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }
}

/// Claims a signature for a webhook; `false` if it was claimed before.
/// Runs in the webhook lookup's transaction: its policy admits a claim
/// only for an existing webhook under that webhook's own company.
pub async fn claim(tx: &mut db::Tx, flow_id: Uuid, company_id: Uuid, sig: &Signature) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO webhook_signatures (flow_id, company_id, signature_hash, expires_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(flow_id)
    .bind(company_id)
    .bind(&sig.hash)
    .bind(sig.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets a claim whose call started no run (the flow was not deployed, the
/// API was shutting down), so the sender's retry of the same request is not a replay.
pub async fn release(pool: &sqlx::PgPool, company_id: Uuid, flow_id: Uuid, sig: &Signature) -> Result<(), StoreError> {
    let mut tx = db::tenant_tx(pool, company_id).await?;
    sqlx::query("DELETE FROM webhook_signatures WHERE flow_id = $1 AND signature_hash = $2")
        .bind(flow_id)
        .bind(&sig.hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.map_err(StoreError::from)
}

/// A webhook's tolerance grew: its old signatures verify for longer, so their
/// claims must last as long.
pub async fn extend(tx: &mut db::Tx, flow_id: Uuid, by_seconds: i32) -> Result<(), StoreError> {
    if by_seconds <= 0 {
        return Ok(());
    }
    sqlx::query("UPDATE webhook_signatures SET expires_at = expires_at + make_interval(secs => $2) WHERE flow_id = $1")
        .bind(flow_id)
        .bind(f64::from(by_seconds))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_lasts_the_whole_window_the_signature_verifies_in() {
        let s = Signature::new(&[7; 32], 1_000_000, 300);
        assert_eq!(s.expires_at.timestamp(), 1_000_000 + 300 + CLOCK_SKEW_SECONDS);
        assert_eq!(s.hash.len(), 32);
        assert_ne!(s.hash, vec![7; 32], "the MAC itself is not stored");
        // A timestamp no clock will reach does not overflow.
        assert_eq!(Signature::new(&[1], i64::MAX, 300).expires_at, DateTime::<Utc>::MAX_UTC);
    }
}
