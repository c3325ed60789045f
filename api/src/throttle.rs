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
use sha2::{Digest, Sha256};

// Counting, locking and forgetting are the buckets' storage rules, with the table.
pub use floq_shared::login_attempts::{clear, locked_until, record_failure};

/// Failures a bucket allows before it locks.
const FREE_PER_PAIR: f64 = 4.0;
const FREE_PER_CLIENT: f64 = 20.0;

/// The buckets one sign-in attempt counts against: (key, failures it allows).
/// A key is a SHA-256 of the e-mail address and client address it counts,
/// so the table holds no one's address in the clear.
pub fn keys(email: &str, client: &IpAddr) -> [(String, f64); 2] {
    let hashed = |kind: &str, what: String| format!("{kind}:{}", hex::encode(Sha256::digest(what.as_bytes())));
    [
        (
            hashed("pair", format!("{}|{client}", email.trim().to_lowercase())),
            FREE_PER_PAIR,
        ),
        (hashed("ip", client.to_string()), FREE_PER_CLIENT),
    ]
}

/// The client's address: the peer, unless the peer is a trusted reverse proxy
/// (`FLOQ_TRUSTED_PROXIES`), in which case the nearest untrusted address in
/// `X-Forwarded-For`. Without this, every client behind a proxy would share
/// one throttling bucket. Untrusted peers cannot spoof the header.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`.
    let peer = peer.to_canonical();
    let is_trusted = |a: &IpAddr| trusted.iter().any(|t| t.to_canonical() == *a);
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // From the nearest hop outwards: the first untrusted address is the client. A hop that does not
    // parse ends the walk at the last trusted one: what lies beyond it is the client's own word.
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Some(addr) = hop_addr(hop) else {
            return client;
        };
        if !is_trusted(&addr) {
            return addr;
        }
        client = addr;
    }
    client
}

/// A forwarded hop's address, with a port (`1.2.3.4:80`, `[::1]:80`) or without.
fn hop_addr(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|a: IpAddr| a.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_through_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.9.9.9, garbage, 203.0.113.5:443".parse().unwrap());
        // The proxy arriving as an IPv4-mapped address is still the proxy.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &headers, &[proxy]),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // A hop that does not parse ends the walk: the address before it is the client's own claim.
        headers.insert("x-forwarded-for", "10.9.9.9, garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &headers, &[proxy]), proxy);
        // An untrusted peer's header is ignored.
        let stranger: IpAddr = "198.51.100.2".parse().unwrap();
        assert_eq!(client_ip(stranger, &headers, &[proxy]), stranger);
    }

    #[test]
    fn buckets_are_per_account_and_client_and_per_client() {
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "198.51.100.7".parse().unwrap();
        let [(pair_a, _), (client_a, _)] = keys("Ada@Acme.test", &a);
        let [(pair_b, _), (client_b, _)] = keys("ada@acme.test ", &b);
        assert_eq!(
            pair_a,
            format!("pair:{}", hex::encode(Sha256::digest(b"ada@acme.test|203.0.113.9")))
        );
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
