//! `ip-allow`: which networks may call the API, for the whole installation
//! and per company.
//!
//! - `FLOQ_PLUGIN_IP_ALLOW_CIDRS=10.0.0.0/8,192.168.1.0/24`: when set, a
//!   request from any other address is refused with `403 ip_not_allowed`
//!   before authentication (`on_request`); health endpoints are served on
//!   their own router and stay reachable.
//! - `FLOQ_PLUGIN_IP_ALLOW_EXEMPT=/hooks/`: path prefixes the platform list
//!   does not apply to (webhooks called from the internet, say).
//! - `FLOQ_PLUGIN_IP_ALLOW_COMPANIES=<company id>:203.0.113.0/24,…`: a
//!   company listed here is reached only from its networks: any other
//!   address gets `403 plugin_denied` on every authenticated request into it
//!   (`on_authorize`), whoever the caller. Webhook calls carry no caller and
//!   are governed by the platform list only.
//!
//! The client address is the connection's, or `X-Forwarded-For` from a
//! proxy in `FLOQ_TRUSTED_PROXIES`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use floq_shared::config::ConfigError;
use floq_shared::plugin::{Access, OnRequest, Plugin, PluginError, PluginFactory, RequestInfo, Settings, Verdict};
use futures_util::future::{BoxFuture, ready};
use ipnet::IpNet;
use uuid::Uuid;

pub const NAME: &str = "ip-allow";

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings(&self) -> &'static [&'static str] {
        &["CIDRS", "EXEMPT", "COMPANIES"]
    }

    fn build(&self, settings: &Settings) -> Result<Arc<dyn Plugin>, ConfigError> {
        Ok(Arc::new(IpAllow::parse(settings)?))
    }
}

#[derive(Debug, Default)]
pub struct IpAllow {
    platform: Vec<IpNet>,
    exempt: Vec<String>,
    companies: HashMap<Uuid, Vec<IpNet>>,
}

/// A network, or one address as its own network.
fn net(raw: &str) -> Option<IpNet> {
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
}

/// IPv4 clients of a dual-stack listener arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl IpAllow {
    pub fn parse(settings: &Settings) -> Result<Self, ConfigError> {
        let mut platform = Vec::new();
        for entry in settings.list("CIDRS") {
            platform
                .push(net(entry).ok_or_else(|| {
                    settings.error("CIDRS", format!("`{entry}` is not an address or a CIDR network"))
                })?);
        }
        let mut exempt = Vec::new();
        for entry in settings.list("EXEMPT") {
            if !entry.starts_with('/') {
                return Err(settings.error("EXEMPT", format!("`{entry}` is not a path prefix (it starts with `/`)")));
            }
            exempt.push(entry.to_string());
        }
        if !exempt.is_empty() && platform.is_empty() {
            return Err(settings.error(
                "EXEMPT",
                "exempts paths from FLOQ_PLUGIN_IP_ALLOW_CIDRS, which is not set",
            ));
        }
        let mut companies: HashMap<Uuid, Vec<IpNet>> = HashMap::new();
        for entry in settings.list("COMPANIES") {
            let bad = || {
                settings.error(
                    "COMPANIES",
                    format!("`{entry}` is not `<company id>:<address or CIDR>`"),
                )
            };
            let (company, network) = entry.split_once(':').ok_or_else(bad)?;
            let company = Uuid::parse_str(company.trim()).map_err(|_| bad())?;
            companies
                .entry(company)
                .or_default()
                .push(net(network.trim()).ok_or_else(bad)?);
        }
        Ok(Self {
            platform,
            exempt,
            companies,
        })
    }

    fn platform_allows(&self, path: &str, ip: IpAddr) -> bool {
        self.platform.is_empty()
            || self.exempt.iter().any(|p| path.starts_with(p.as_str()))
            || self.platform.iter().any(|n| n.contains(&canonical(ip)))
    }

    fn company_allows(&self, company_id: Uuid, ip: IpAddr) -> bool {
        self.companies
            .get(&company_id)
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&canonical(ip))))
    }
}

impl Plugin for IpAllow {
    fn name(&self) -> &'static str {
        NAME
    }

    fn on_request<'a>(&'a self, request: &'a mut Request, info: &'a RequestInfo<'a>) -> BoxFuture<'a, OnRequest> {
        let decision = if self.platform_allows(request.uri().path(), info.client_ip) {
            OnRequest::Continue
        } else {
            tracing::info!(client.ip = %info.client_ip, request_id = info.request_id, "ip-allow refused a request");
            OnRequest::Refuse {
                status: StatusCode::FORBIDDEN,
                code: "ip_not_allowed",
                message: "requests from this address are not accepted here".into(),
            }
        };
        Box::pin(ready(decision))
    }

    fn on_authorize<'a>(&'a self, access: &'a Access<'a>) -> BoxFuture<'a, Result<Verdict, PluginError>> {
        let verdict = if self.company_allows(access.company_id, access.client_ip) {
            Verdict::Allow
        } else {
            Verdict::Deny(format!(
                "this company accepts requests only from its own networks, not from {}",
                canonical(access.client_ip)
            ))
        };
        Box::pin(ready(Ok(verdict)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<IpAllow, ConfigError> {
        IpAllow::parse(&Settings::from_pairs(NAME, pairs))
    }

    #[test]
    fn platform_networks_and_exempt_paths() {
        let p = parse(&[("CIDRS", "10.0.0.0/8, 192.0.2.7"), ("EXEMPT", "/hooks/")]).unwrap();
        assert!(p.platform_allows("/api/v1/flows", "10.1.2.3".parse().unwrap()));
        assert!(p.platform_allows("/api/v1/flows", "::ffff:192.0.2.7".parse().unwrap()));
        assert!(!p.platform_allows("/api/v1/flows", "192.0.2.8".parse().unwrap()));
        assert!(p.platform_allows("/hooks/abc", "198.51.100.1".parse().unwrap()));
        assert!(
            parse(&[])
                .unwrap()
                .platform_allows("/", "198.51.100.1".parse().unwrap())
        );
    }

    #[test]
    fn companies_listed_are_reached_only_from_their_networks() {
        let a = Uuid::now_v7();
        let p = parse(&[("COMPANIES", &format!("{a}:2001:db8::/32,{a}:127.0.0.1"))]).unwrap();
        assert!(p.company_allows(a, "2001:db8::1".parse().unwrap()));
        assert!(p.company_allows(a, "127.0.0.1".parse().unwrap()));
        assert!(!p.company_allows(a, "127.0.0.2".parse().unwrap()));
        assert!(p.company_allows(Uuid::now_v7(), "203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            parse(&[("CIDRS", "10.0.0.0/33")]).unwrap_err().var,
            "FLOQ_PLUGIN_IP_ALLOW_CIDRS"
        );
        assert_eq!(
            parse(&[("COMPANIES", "x:10.0.0.1")]).unwrap_err().var,
            "FLOQ_PLUGIN_IP_ALLOW_COMPANIES"
        );
        assert_eq!(
            parse(&[("EXEMPT", "/hooks/")]).unwrap_err().var,
            "FLOQ_PLUGIN_IP_ALLOW_EXEMPT"
        );
    }
}
