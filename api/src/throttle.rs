//! Sign-in throttling, built so that a stranger cannot lock the owner out
//! while guessing stays slow. Failures are counted in two kinds of bucket:
//!
//! - per account *and* client (`pair:<e-mail>|<address>`): from the fifth
//!   failure that pair is locked for 1 s, 2 s, 4 s … up to 15 min. Only that
//!   client is refused: the owner signing in from another address is not.
//! - per client (`ip:<address>`): one address spraying many accounts is locked
//!   from its twenty-first failure, the same way.
//!
//! Counts decay (one failure forgiven per minute), so a lock can only be
//! driven up by failing steadily, and a success clears both buckets of the
//! client that succeeded. There is deliberately no account-wide lock: it
//! would be the lockout weapon. Guessing from many addresses is slowed per
//! address and by the cost of Argon2id; the audit log shows it to each
//! company the account belongs to.

use std::net::IpAddr;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use floq_shared::db;
// One failure is forgiven per DECAY_SECS; the scheduler forgets a bucket by the same rule.
use floq_shared::login_attempts::DECAY_SECS;

/// Failures a bucket allows before it locks.
const FREE_PER_PAIR: f64 = 4.0;
const FREE_PER_CLIENT: f64 = 20.0;
const MAX_LOCK_SECS: f64 = 900.0;

/// The buckets one sign-in attempt counts against: (key, failures it allows).
pub fn keys(email: &str, client: &IpAddr) -> [(String, f64); 2] {
    [
        (format!("pair:{}|{client}", email.trim().to_lowercase()), FREE_PER_PAIR),
        (format!("ip:{client}"), FREE_PER_CLIENT),
    ]
}

/// The client's address: the peer, unless the peer is a trusted reverse proxy
/// (`FLOQ_TRUSTED_PROXIES`), in which case the nearest untrusted address in
/// `X-Forwarded-For`. Without this, every client behind a proxy would share
/// one throttling bucket. Untrusted peers cannot spoof the header.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|a| !trusted.contains(a))
        .unwrap_or(peer)
}

/// The latest `locked_until` in the future among the buckets, if any.
pub async fn locked_until(pool: &PgPool, keys: &[(String, f64)]) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
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
pub async fn record_failure(pool: &PgPool, keys: &[(String, f64)]) -> Result<(), sqlx::Error> {
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
    tx.commit().await
}

/// A success forgets the client's failures, for this account and overall.
pub async fn clear(pool: &PgPool, keys: &[(String, f64)]) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let mut tx = db::duty_tx(pool, db::Duty::SignIn).await?;
    sqlx::query("DELETE FROM login_attempts WHERE key = ANY($1)")
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_per_account_and_client_and_per_client() {
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "198.51.100.7".parse().unwrap();
        let [(pair_a, _), (client_a, _)] = keys("Ada@Acme.test", &a);
        let [(pair_b, _), (client_b, _)] = keys("ada@acme.test ", &b);
        assert_eq!(pair_a, "pair:ada@acme.test|203.0.113.9");
        assert_ne!(pair_a, pair_b, "another address never shares the account's bucket");
        assert_ne!(client_a, client_b);
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &headers, &[proxy]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &headers, &[]), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }
}
