//! The one egress policy: every outbound connection a flow causes
//! (`http_request`, `postgres`, `smtp_send`, and every later client) is
//! vetted here, on the address actually connected to.
//!
//! * Public unicast addresses are allowed. Loopback, private (RFC 1918,
//!   unique-local), link-local (the cloud metadata address among them),
//!   carrier-grade NAT, multicast, unspecified, documentation/benchmark and
//!   reserved ranges are denied, also when written as IPv4-mapped, IPv4-compatible,
//!   NAT64 or 6to4 IPv6 addresses, unless `FLOQ_EGRESS_ALLOW` opens them.
//! * Whatever the allow-list says, the platform's own endpoints stay shut: the
//!   hosts and ports of `FLOQ_DATABASE_URL` and `FLOQ_AMQP_URL` and floq's own
//!   listeners (configured and actually bound in this process). A port of one of
//!   this machine's own addresses is shut on all of them, since a server
//!   listening on `0.0.0.0` answers on every one.
//! * Names are resolved once, here; the connection goes to the vetted addresses
//!   and never to a second answer (DNS rebinding), and every redirect hop is
//!   vetted again by the caller.
//!
//! Callers never see why an address is refused (a private range or the
//! platform's database look the same), only `egress_denied` naming the host.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

mod http;
pub mod origin;
mod postgres;
mod smtp;

pub use http::{SendError, client as http_client};
pub use postgres::PgTargetError;
pub use smtp::SmtpTargetError;

/// One `FLOQ_EGRESS_ALLOW` entry: a CIDR (or single address) or a host name,
/// each optionally with a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allow {
    Net { net: IpNet, port: Option<u16> },
    Host { name: String, port: Option<u16> },
}

impl Allow {
    fn matches(&self, name: Option<&str>, ip: IpAddr, port: u16) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match self {
            Allow::Net { net, port: p } => port_ok(p) && net.contains(&ip),
            Allow::Host { name: n, port: p } => port_ok(p) && name.is_some_and(|name| name.eq_ignore_ascii_case(n)),
        }
    }
}

impl FromStr for Allow {
    type Err = String;

    /// `10.0.0.0/8`, `127.0.0.1:8080`, `[::1]:443`, `fd00::/8`, `api.internal`, `api.internal:8443`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{raw}` is not a CIDR, an IP address or a host name, optionally with `:port`");
        let s = raw.trim();
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, tail) = rest.split_once(']').ok_or_else(bad)?;
            let net = match inner.parse::<IpNet>() {
                Ok(net @ IpNet::V6(_)) => net,
                _ => IpNet::from(IpAddr::V6(inner.parse::<Ipv6Addr>().map_err(|_| bad())?)),
            };
            let port = match tail {
                "" => None,
                t => Some(port(t.strip_prefix(':').ok_or_else(bad)?)?),
            };
            return Ok(Allow::Net { net, port });
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Allow::Net { net, port: None });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Allow::Net {
                net: IpNet::from(ip),
                port: None,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, p)) if !host.contains(':') => (host, Some(port(p)?)),
            _ => (s, None),
        };
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(Allow::Net {
                net: IpNet::from(IpAddr::V4(ip)),
                port,
            });
        }
        if let Ok(net @ IpNet::V4(_)) = host.parse::<IpNet>() {
            return Ok(Allow::Net { net, port });
        }
        let label_ok =
            |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(Allow::Host {
            name: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Parses a comma-separated `FLOQ_EGRESS_ALLOW`.
pub fn parse_allow_list(raw: &str) -> Result<Vec<Allow>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Allow::from_str)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress to {host} is denied by the egress policy (FLOQ_EGRESS_ALLOW)")]
    Denied { host: String },
    #[error("{host} did not resolve to any address")]
    Unresolved { host: String },
}

impl EgressError {
    /// The stable code a node fails with.
    pub fn code(&self) -> &'static str {
        match self {
            EgressError::Denied { .. } => "egress_denied",
            EgressError::Unresolved { .. } => "egress_unresolved",
        }
    }
}

/// The addresses floq's own listeners in this process are bound to; each
/// entry lives as long as its [`ListenerGuard`].
static LISTENERS: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Keeps a bound listener's address on the deny list until dropped.
#[must_use = "the listener is only protected while the guard lives"]
pub struct ListenerGuard(SocketAddr);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        let mut listeners = LISTENERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = listeners.iter().position(|a| *a == self.0) {
            listeners.swap_remove(i);
        }
    }
}

/// Called by every floq listener once bound (ports chosen by the OS included).
pub fn register_listener(addr: SocketAddr) -> ListenerGuard {
    LISTENERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(addr);
    ListenerGuard(addr)
}

/// A platform endpoint: a host (name or address) and port.
#[derive(Clone, Debug)]
struct Endpoint {
    host: String,
    addrs: Vec<IpAddr>,
    port: u16,
}

#[derive(Clone, Debug)]
pub struct Policy {
    allow: Arc<Vec<Allow>>,
    platform: Arc<Vec<Endpoint>>,
    /// This machine's own interface addresses.
    own: Arc<HashSet<IpAddr>>,
}

impl Policy {
    /// Builds the policy from the configuration. Platform host names are
    /// resolved now (blocking, once at start) and compared by name at every check.
    pub fn from_config(config: &crate::Config) -> Self {
        Self::with_allow(config, config.egress_allow.clone())
    }

    /// The policy of the API's single sign-on calls: the same platform
    /// endpoints stay shut, restricted addresses open only by `FLOQ_SSO_EGRESS_ALLOW`.
    pub fn for_sso(config: &crate::Config) -> Self {
        Self::with_allow(config, config.sso_egress_allow.clone())
    }

    fn with_allow(config: &crate::Config, allow: Vec<Allow>) -> Self {
        let mut platform = Vec::new();
        if let Some((host, port)) = url_host_port(config.database_url.expose(), 5432) {
            platform.push(endpoint(host, port));
        }
        // Every node of a cluster is the broker.
        for node in crate::queue::nodes(config.amqp_url.expose()) {
            let amqps = node.starts_with("amqps:");
            if let Some((host, port)) = url_host_port(node, if amqps { 5671 } else { 5672 }) {
                // The broker's management API (guest/guest answers on loopback), its Erlang
                // distribution port and epmd are the broker too.
                for port in [port, 15672, 15671, port.saturating_add(20000), 4369] {
                    platform.push(endpoint(host.clone(), port));
                }
            }
        }
        for addr in config.listen_addrs() {
            if addr.port() != 0 {
                platform.push(Endpoint {
                    host: addr.ip().to_string(),
                    addrs: vec![addr.ip()],
                    port: addr.port(),
                });
            }
        }
        let own = if_addrs::get_if_addrs()
            .map(|ifs| ifs.into_iter().map(|i| canonical(i.ip())).collect())
            .unwrap_or_default();
        Self {
            allow: Arc::new(allow),
            platform: Arc::new(platform),
            own: Arc::new(own),
        }
    }

    /// This policy with `url`'s host and port opened too (the platform's own
    /// endpoints stay shut): for calls to an endpoint the operator registered
    /// (an OAuth provider's token URL), which a tenant cannot choose.
    pub fn trusting(&self, url: &url::Url) -> Policy {
        let mut allow = (*self.allow).clone();
        let port = url.port_or_known_default();
        match url.host() {
            Some(url::Host::Domain(d)) => allow.push(Allow::Host {
                name: d.to_ascii_lowercase(),
                port,
            }),
            Some(url::Host::Ipv4(ip)) => allow.push(Allow::Net {
                net: IpNet::from(IpAddr::V4(ip)),
                port,
            }),
            Some(url::Host::Ipv6(ip)) => allow.push(Allow::Net {
                net: IpNet::from(IpAddr::V6(ip)),
                port,
            }),
            None => {}
        }
        Policy {
            allow: Arc::new(allow),
            platform: self.platform.clone(),
            own: self.own.clone(),
        }
    }

    /// Whether connecting to `addr` (reached through host `name`, if by name) is allowed.
    pub fn permits(&self, name: Option<&str>, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        let port = addr.port();
        if self.is_platform(name, ip, port) {
            return false;
        }
        if !is_restricted(addr.ip()) && !is_restricted(ip) {
            return true;
        }
        self.allow.iter().any(|rule| rule.matches(name, ip, port))
    }

    fn is_self(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.own.contains(&ip)
    }

    fn is_platform(&self, name: Option<&str>, ip: IpAddr, port: u16) -> bool {
        let same = |other: IpAddr| {
            let other = canonical(other);
            other == ip || (self.is_self(other) && self.is_self(ip))
        };
        let listeners = LISTENERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A platform host of its own (the database server, say) is shut on every port; on
        // this machine, which also serves what flows may call, only the platform's ports are.
        self.platform.iter().any(|e| {
            let by_name = name.is_some_and(|n| n.eq_ignore_ascii_case(&e.host));
            let remote = e.addrs.iter().any(|a| canonical(*a) == ip && !self.is_self(ip));
            remote || (e.port == port && (by_name || e.addrs.iter().any(|a| same(*a))))
        }) || listeners.iter().any(|l| l.port() == port && same(l.ip()))
    }

    /// Resolves `host` once and returns the addresses that may be connected to;
    /// an IP literal is checked as it is.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            return if self.permits(None, addr) {
                Ok(vec![addr])
            } else {
                Err(EgressError::Denied {
                    host: display(host, port),
                })
            };
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map(|addrs| addrs.collect())
            .unwrap_or_default();
        if found.is_empty() {
            return Err(EgressError::Unresolved {
                host: display(host, port),
            });
        }
        let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| self.permits(Some(bare), *a)).collect();
        if allowed.is_empty() {
            return Err(EgressError::Denied {
                host: display(host, port),
            });
        }
        Ok(allowed)
    }
}

fn display(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn endpoint(host: String, port: u16) -> Endpoint {
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map(|it| it.map(|a| a.ip()).collect())
            .unwrap_or_default(),
    };
    Endpoint {
        host: host.to_ascii_lowercase(),
        addrs,
        port,
    }
}

/// Host and port of a `scheme://user@host:port/...` URL (IPv6 without brackets).
fn url_host_port(raw: &str, default_port: u16) -> Option<(String, u16)> {
    let url = url::Url::parse(raw).ok()?;
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_string(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Some((host, url.port().unwrap_or(default_port)))
}

/// The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4), else itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // IPv4-compatible ::a.b.c.d (deprecated, but still routed by some stacks); not :: or ::1.
    if s[..6].iter().all(|x| *x == 0) && (s[6] != 0 || s[7] > 1) {
        return IpAddr::V4(low);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0) {
        return IpAddr::V4(low);
    }
    // 6to4 2002:aabb:ccdd::/48 carries a.b.c.d.
    if s[0] == 0x2002 {
        return IpAddr::V4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    ip
}

/// Addresses a flow may reach only through the allow-list.
pub fn is_restricted(ip: IpAddr) -> bool {
    const V4: [(Ipv4Addr, u8); 16] = [
        (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", unspecified
        (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
        (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
        (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
        (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
        (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
        (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
        (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
        (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
        (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
        (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
        (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
        (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
        (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
        (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
        (Ipv4Addr::new(255, 255, 255, 255), 32),
    ];
    const V6: [(Ipv6Addr, u8); 11] = [
        (Ipv6Addr::UNSPECIFIED, 128),
        (Ipv6Addr::LOCALHOST, 128),
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),      // discard
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),  // NAT64 local-use (RFC 8215)
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),     // Teredo (tunnels to any IPv4)
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
        (Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28),  // ORCHID
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),      // unique-local
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),     // link-local
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),     // site-local (deprecated)
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),      // multicast
    ];
    let canon = canonical(ip);
    let v4_hit = |v4: Ipv4Addr| {
        V4.iter()
            .any(|(net, len)| ipnet::Ipv4Net::new(*net, *len).is_ok_and(|n| n.contains(&v4)))
    };
    match (ip, canon) {
        (_, IpAddr::V4(v4)) if v4_hit(v4) => true,
        (IpAddr::V6(v6), _) => V6
            .iter()
            .any(|(net, len)| ipnet::Ipv6Net::new(*net, *len).is_ok_and(|n| n.contains(&v6))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &str, platform: &[(&str, u16)]) -> Policy {
        Policy {
            allow: Arc::new(parse_allow_list(allow).unwrap()),
            platform: Arc::new(platform.iter().map(|(h, p)| endpoint(h.to_string(), *p)).collect()),
            own: Arc::new(HashSet::from([IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))])),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn restricted_ranges_are_denied_by_default_in_every_spelling() {
        let p = policy("", &[]);
        for a in [
            "127.0.0.1:80",
            "127.255.0.1:80",
            "0.0.0.0:80",
            "10.0.0.1:80",
            "172.16.5.5:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[::1]:80",
            "[::]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[::127.0.0.1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[2002:7f00:1::]:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:80",
            "[ff02::1]:80",
        ] {
            assert!(!p.permits(None, addr(a)), "{a} must be denied");
        }
        for a in [
            "93.184.216.34:443",
            "[2606:4700::1111]:443",
            "[::ffff:93.184.216.34]:443",
        ] {
            assert!(p.permits(None, addr(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn the_allow_list_opens_ranges_hosts_and_ports() {
        let p = policy("127.0.0.1, 10.0.0.0/8:8443, internal.example", &[]);
        assert!(p.permits(None, addr("127.0.0.1:9000")));
        assert!(!p.permits(None, addr("127.0.0.2:9000")));
        assert!(p.permits(None, addr("[::ffff:127.0.0.1]:9000")));
        assert!(p.permits(None, addr("10.9.9.9:8443")));
        assert!(!p.permits(None, addr("10.9.9.9:8444")));
        let p = policy("10.0.0.0/8, 192.168.0.10:8443, internal.example", &[]);
        assert!(p.permits(None, addr("10.9.9.9:1")));
        assert!(p.permits(None, addr("192.168.0.10:8443")));
        assert!(!p.permits(None, addr("192.168.0.10:8444")));
        assert!(p.permits(Some("INTERNAL.example"), addr("192.168.7.7:80")));
        assert!(!p.permits(Some("other.example"), addr("192.168.7.7:80")));
    }

    #[test]
    fn the_platform_stays_shut_whatever_the_allow_list_says() {
        let p = policy(
            "127.0.0.0/8, 10.0.0.0/8, ::1",
            &[("127.0.0.1", 5432), ("mq.internal", 5672)],
        );
        assert!(p.permits(None, addr("127.0.0.1:8000")));
        for a in [
            "127.0.0.1:5432",
            "127.0.0.9:5432",
            "0.0.0.0:5432",
            "[::1]:5432",
            "[::ffff:127.0.0.1]:5432",
            "10.1.2.3:5432",
        ] {
            assert!(!p.permits(None, addr(a)), "{a}");
        }
        assert!(
            p.permits(None, addr("10.9.9.9:5432")),
            "another host's PostgreSQL is not ours"
        );
        assert!(!p.permits(Some("mq.internal"), addr("10.9.9.9:5672")));
        let listener = register_listener(addr("0.0.0.0:47123"));
        assert!(!p.permits(None, addr("127.0.0.1:47123")));
        assert!(!p.permits(None, addr("10.1.2.3:47123")));
        drop(listener);
        assert!(p.permits(None, addr("127.0.0.1:47123")));
        let p = policy("10.0.0.0/8", &[("10.0.0.5", 5432)]);
        assert!(
            !p.permits(None, addr("10.0.0.5:8008")),
            "every port of a platform host of its own"
        );
        assert!(p.permits(None, addr("10.0.0.6:5432")));
        assert!(!p.permits(None, addr("[64:ff9b:1::a9fe:a9fe]:80")));
    }

    #[test]
    fn a_trusted_endpoint_opens_its_host_and_port_but_never_the_platform() {
        let p = policy("", &[("127.0.0.1", 5432)]);
        let t = p.trusting(&url::Url::parse("http://127.0.0.1:9100/token").unwrap());
        assert!(t.permits(None, addr("127.0.0.1:9100")));
        assert!(!t.permits(None, addr("127.0.0.1:9101")));
        assert!(
            !p.permits(None, addr("127.0.0.1:9100")),
            "the original policy is unchanged"
        );
        let t = p.trusting(&url::Url::parse("http://127.0.0.1:5432/token").unwrap());
        assert!(!t.permits(None, addr("127.0.0.1:5432")));
    }

    #[test]
    fn allow_entries_parse_or_name_the_bad_one() {
        assert_eq!(
            parse_allow_list("[::1]:8080").unwrap(),
            vec![Allow::Net {
                net: "::1/128".parse().unwrap(),
                port: Some(8080)
            }]
        );
        assert_eq!(
            parse_allow_list("Api.Example:443").unwrap(),
            vec![Allow::Host {
                name: "api.example".into(),
                port: Some(443)
            }]
        );
        for bad in ["http://x", "10.0.0.0/33", "host:0", "a..b", "[::1"] {
            assert!(parse_allow_list(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn names_resolve_once_and_are_checked() {
        let p = policy("", &[]);
        let e = p.resolve("localhost", 80).await.unwrap_err();
        assert_eq!(e.code(), "egress_denied");
        assert!(e.to_string().contains("localhost:80"), "{e}");
        assert_eq!(p.resolve("[::1]", 80).await.unwrap_err().code(), "egress_denied");
        assert_eq!(p.resolve("127.1", 80).await.unwrap_err().code(), "egress_denied");
    }
}
