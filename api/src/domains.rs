//! E-mail domains a single sign-on connection claims: what a valid one is,
//! which ones no company may claim (public webmail: one company claiming
//! `gmail.com` would route, and auto-register, everyone's sign-ins), and
//! reading the DNS TXT record that proves a company controls one.

use std::time::Duration;

use axum::http::StatusCode;
use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use floq_shared::Config;

/// Public mailbox providers: anyone can have an address there, so a domain
/// of theirs proves nothing about a company. Matched on the domain and its
/// parents (`mail.yahoo.com` too) and, for the ones that exist in many
/// country domains, on the first label (`gmx.*`, `yahoo.*`, …).
const WEBMAIL: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "passport.com",
    "yahoo.com",
    "ymail.com",
    "rocketmail.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "proton.me",
    "protonmail.com",
    "protonmail.ch",
    "pm.me",
    "tutanota.com",
    "tuta.io",
    "zoho.com",
    "yandex.com",
    "yandex.ru",
    "mail.ru",
    "gmx.net",
    "gmx.com",
    "web.de",
    "t-online.de",
    "fastmail.com",
    "hey.com",
    "qq.com",
    "163.com",
    "126.com",
    "naver.com",
];
/// Providers with a domain in many countries (`gmx.de`, `yahoo.co.uk`, `hotmail.fr`, …).
const WEBMAIL_BRANDS: &[&str] = &["gmx", "yahoo", "hotmail", "outlook", "live", "yandex", "aol"];

/// Whether a (lower-case) domain is a public webmail provider's.
pub fn is_webmail(domain: &str) -> bool {
    let mut d = domain;
    loop {
        if WEBMAIL.contains(&d) {
            return true;
        }
        match d.split_once('.') {
            Some((_, rest)) if rest.contains('.') => d = rest,
            _ => break,
        }
    }
    let first = domain.split('.').next().unwrap_or_default();
    // `gmx.de`, `yahoo.co.uk`: the brand followed by a country suffix only.
    let suffix = &domain[first.len()..];
    WEBMAIL_BRANDS.contains(&first) && suffix.len() <= 7
}

/// A domain as given, lower-cased; or why it is not one.
pub fn parse(raw: &str) -> Result<String, String> {
    let d = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.len() < 3 || d.len() > 253 || !d.contains('.') || !d.split('.').all(label_ok) {
        return Err("must be a domain name such as `example.com`".into());
    }
    if d.rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("must be a domain name, not an address".into());
    }
    Ok(d)
}

/// Every domain of a connection, checked: `422` naming each bad one, and
/// `public_email_domain` for webmail.
pub fn parse_all(raw: &[String]) -> ApiResult<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    let mut webmail = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let field = format!("email_domains[{i}]");
        match parse(r) {
            Ok(d) if is_webmail(&d) => webmail.push(json!({"field": field, "message": format!("{d} is a public webmail domain; anyone can have an address there")})),
            Ok(d) if out.contains(&d) => errors.push(json!({"field": field, "message": "listed twice"})),
            Ok(d) => out.push(d),
            Err(message) => errors.push(json!({"field": field, "message": message})),
        }
    }
    if !webmail.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "public_email_domain",
            "public webmail domains cannot be claimed for single sign-on; list your company's own domains",
        )
        .with_details(json!(webmail)));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation("email_domains is invalid", json!(errors)));
    }
    Ok(out)
}

/// The TXT strings published at `name`; none when the lookup fails (the
/// caller says the record was not found, whichever the reason).
pub async fn txt_records(config: &Config, name: &str) -> Vec<String> {
    let resolver = match config.sso_dns_server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![server]),
                TokioRuntimeProvider::default(),
            )
            .build()
        }
        None => match hickory_resolver::system_conf::read_system_conf() {
            Ok((config, options)) => Resolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(options)
                .build(),
            Err(e) => Err(e),
        },
    };
    let Ok(resolver) = resolver else {
        tracing::warn!("no DNS resolver could be configured for domain verification");
        return vec![];
    };
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let lookup = match tokio::time::timeout(Duration::from_secs(10), resolver.txt_lookup(fqdn)).await {
        Ok(Ok(lookup)) => lookup,
        Ok(Err(e)) => {
            tracing::info!(error = %e, name, "TXT lookup failed");
            return vec![];
        }
        Err(_) => return vec![],
    };
    lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webmail_domains_and_their_country_forms_are_public() {
        for d in [
            "gmail.com",
            "outlook.com",
            "hotmail.com",
            "yahoo.com",
            "icloud.com",
            "proton.me",
            "gmx.de",
            "gmx.net",
            "yahoo.co.uk",
            "mail.yahoo.com",
            "hotmail.fr",
        ] {
            assert!(is_webmail(d), "{d}");
        }
        for d in [
            "acme.test",
            "example.com",
            "gmxcorp.com",
            "outlookconsulting.com",
            "yahoo-fans.example.org",
        ] {
            assert!(!is_webmail(d), "{d}");
        }
    }

    #[test]
    fn domains_are_lower_cased_names() {
        assert_eq!(parse(" Acme.Test. ").unwrap(), "acme.test");
        for bad in ["", "localhost", "a..b", "-a.com", "10.0.0.1", "a b.com", "x@y.com"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
