//! Sign-in throttling: failures are counted per account and per client
//! address; from the fifth consecutive failure the key is locked for an
//! exponentially growing time (1 s, 2 s, 4 s … capped at 15 min). A success
//! clears the account's count.

use std::net::IpAddr;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use floq_shared::db;

const FREE_FAILURES: i32 = 4;
const MAX_LOCK_SECS: i64 = 900;

pub fn account_key(email: &str) -> String {
    format!("email:{}", email.to_lowercase())
}

pub fn client_key(addr: &std::net::IpAddr) -> String {
    format!("ip:{addr}")
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

/// The latest `locked_until` in the future among `keys`, if any.
pub async fn locked_until(pool: &PgPool, keys: &[String]) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let mut tx = db::system_tx(pool).await?;
    let until: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT max(locked_until) FROM login_attempts WHERE key = ANY($1) AND locked_until > now()")
            .bind(keys)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(until)
}

pub async fn record_failure(pool: &PgPool, keys: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = db::system_tx(pool).await?;
    sqlx::query(
        "INSERT INTO login_attempts AS a (key, failures, locked_until, updated_at)
         SELECT k, 1, NULL, now() FROM unnest($1::text[]) AS k
         ON CONFLICT (key) DO UPDATE
            SET failures = a.failures + 1,
                updated_at = now(),
                locked_until = CASE WHEN a.failures + 1 > $2
                    THEN now() + make_interval(secs => least(power(2, a.failures + 1 - $2 - 1), $3))
                    ELSE NULL END",
    )
    .bind(keys)
    .bind(FREE_FAILURES)
    .bind(MAX_LOCK_SECS as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

pub async fn clear(pool: &PgPool, key: &str) -> Result<(), sqlx::Error> {
    let mut tx = db::system_tx(pool).await?;
    sqlx::query("DELETE FROM login_attempts WHERE key = $1")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

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
