//! The one home of the `webhook_signatures` table: every accepted signature
//! of a signed webhook call is claimed here until its timestamp falls out of
//! the webhook's tolerance, so a replay of the same call is refused on every
//! API replica. Claims are written in the webhook lookup's transaction (its
//! policy admits a claim only for an existing webhook under that webhook's own
//! company), released and extended as the tenant, and trimmed by the
//! retention duty once expired. Nothing here verifies a signature.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowId};

/// Claims outlive their window by this much, so an API replica whose clock
/// runs behind the database's cannot accept a signature whose claim is gone.
pub const CLOCK_SKEW_SECONDS: i64 = 60;

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
pub async fn claim(tx: &mut Tx, flow_id: FlowId, company_id: CompanyId, sig: &Signature) -> Result<bool, StoreError> {
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

/// Forgets a claim (in the company's tenant transaction).
pub async fn release(tx: &mut Tx, company_id: CompanyId, flow_id: FlowId, sig: &Signature) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM webhook_signatures WHERE company_id = $1 AND flow_id = $2 AND signature_hash = $3")
        .bind(company_id)
        .bind(flow_id)
        .bind(&sig.hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes a webhook's claims last `by_seconds` longer (its tolerance grew).
pub async fn extend(tx: &mut Tx, flow_id: FlowId, by_seconds: i32) -> Result<(), StoreError> {
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

/// Deletes up to `limit` expired claims (the retention duty); returns how many.
pub async fn delete_expired(tx: &mut Tx, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM webhook_signatures WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM webhook_signatures WHERE expires_at < now() LIMIT $1))",
    )
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
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
