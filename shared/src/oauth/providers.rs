//! The OAuth2 provider registry, as data: the built-in providers and the
//! operator's own (`FLOQ_OAUTH_PROVIDERS_FILE`). A credential names a
//! provider by id and never carries an endpoint of its own, so a tenant
//! cannot point floq's token calls (which carry a client secret and a
//! refresh token) anywhere the operator did not register.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    Post,
    /// HTTP Basic with the form-encoded id and secret.
    Basic,
}

/// Where a provider entry came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Builtin,
    #[default]
    Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub authorize_url: String,
    pub token_url: String,
    /// Requested when the credential names none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether the authorization request carries a PKCE `S256` challenge.
    #[serde(default)]
    pub pkce: bool,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The only origins its access tokens are sent to (`https://graph.microsoft.com`).
    /// Empty: the credential's own `allowed_origins` decide (Salesforce's per-customer domains).
    #[serde(default)]
    pub api_origins: Vec<String>,
    /// Extra authorization-request parameters (Google's `access_type=offline`).
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    #[serde(skip_deserializing, default)]
    pub source: Source,
}

/// A built-in entry, as data.
struct Builtin {
    id: &'static str,
    name: &'static str,
    authorize_url: &'static str,
    token_url: &'static str,
    scopes: &'static [&'static str],
    pkce: bool,
    api_origins: &'static [&'static str],
    params: &'static [(&'static str, &'static str)],
}

const BUILTINS: [Builtin; 5] = [
    Builtin {
        id: "microsoft",
        name: "Microsoft Graph",
        authorize_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        scopes: &["offline_access", "https://graph.microsoft.com/User.Read"],
        pkce: true,
        api_origins: &["https://graph.microsoft.com"],
        params: &[],
    },
    Builtin {
        id: "google",
        name: "Google",
        authorize_url: "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: "https://oauth2.googleapis.com/token",
        scopes: &["https://www.googleapis.com/auth/userinfo.email"],
        pkce: true,
        api_origins: &["https://www.googleapis.com"],
        // Google issues a refresh token only when asked for offline access.
        params: &[("access_type", "offline"), ("prompt", "consent")],
    },
    Builtin {
        id: "github",
        name: "GitHub",
        authorize_url: "https://github.com/login/oauth/authorize",
        token_url: "https://github.com/login/oauth/access_token",
        scopes: &["read:user"],
        pkce: true,
        api_origins: &["https://api.github.com"],
        params: &[],
    },
    Builtin {
        id: "slack",
        name: "Slack",
        authorize_url: "https://slack.com/oauth/v2/authorize",
        token_url: "https://slack.com/api/oauth.v2.access",
        scopes: &["chat:write"],
        pkce: false,
        api_origins: &["https://slack.com"],
        params: &[],
    },
    Builtin {
        id: "salesforce",
        name: "Salesforce",
        authorize_url: "https://login.salesforce.com/services/oauth2/authorize",
        token_url: "https://login.salesforce.com/services/oauth2/token",
        scopes: &["api", "refresh_token"],
        pkce: true,
        // Each customer's API lives on its own My Domain: the credential's allowed_origins name it.
        api_origins: &[],
        params: &[],
    },
];

/// The providers every deployment knows.
pub fn builtins() -> Vec<Provider> {
    BUILTINS
        .iter()
        .map(|b| Provider {
            id: b.id.into(),
            name: b.name.into(),
            authorize_url: b.authorize_url.into(),
            token_url: b.token_url.into(),
            scopes: b.scopes.iter().map(|s| s.to_string()).collect(),
            pkce: b.pkce,
            client_auth: ClientAuth::Post,
            api_origins: b.api_origins.iter().map(|s| s.to_string()).collect(),
            authorize_params: b.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            source: Source::Builtin,
        })
        .collect()
}

/// Every registered provider, built-in first.
#[derive(Clone, Debug)]
pub struct Registry {
    providers: Vec<Provider>,
}

impl Registry {
    /// The built-ins plus `operator`'s (already validated by [`parse`]).
    pub fn new(operator: &[Provider]) -> Self {
        let mut providers = builtins();
        providers.extend(operator.iter().cloned());
        Self { providers }
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.id == id)
    }

    pub fn all(&self) -> &[Provider] {
        &self.providers
    }
}

/// Reads and validates the operator's provider file; the message names the
/// entry and field at fault.
pub fn load_file(path: &str) -> Result<Vec<Provider>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    parse(&text).map_err(|e| format!("`{path}`: {e}"))
}

/// Parses a JSON array of providers and checks each.
pub fn parse(text: &str) -> Result<Vec<Provider>, String> {
    let providers: Vec<Provider> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of providers: {e}"))?;
    let builtin_ids: Vec<String> = builtins().into_iter().map(|p| p.id).collect();
    let mut seen = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        let at = |field: &str, problem: String| format!("[{i}].{field}: {problem}");
        let id_ok = !p.id.is_empty()
            && p.id.len() <= 64
            && p.id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(at("id", "must be 1 to 64 of a-z, 0-9, '-' and '_'".into()));
        }
        if builtin_ids.contains(&p.id) || seen.contains(&p.id) {
            return Err(at("id", format!("`{}` is already registered", p.id)));
        }
        seen.push(p.id.clone());
        if p.name.trim().is_empty() || p.name.len() > 200 {
            return Err(at("name", "must be 1 to 200 characters".into()));
        }
        endpoint(&p.authorize_url).map_err(|e| at("authorize_url", e))?;
        endpoint(&p.token_url).map_err(|e| at("token_url", e))?;
        for (j, o) in p.api_origins.iter().enumerate() {
            let parsed = crate::egress::origin::parse(o).map_err(|e| at(&format!("api_origins[{j}]"), e))?;
            if !parsed.starts_with("https://") && !parsed.starts_with("http://") {
                return Err(at(&format!("api_origins[{j}]"), "must be an http(s) origin".into()));
            }
        }
        if p.api_origins.is_empty() {
            return Err(at(
                "api_origins",
                "must name at least one origin its tokens may be sent to".into(),
            ));
        }
        if p.scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err(at("scopes", "each scope must be non-empty without spaces".into()));
        }
    }
    Ok(providers)
}

/// An endpoint the client secret travels to: `https://`, or `http://` to a
/// loopback address only (a provider on the same machine, as in tests).
fn endpoint(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|_| format!("`{raw}` is not a URL"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err(format!("`{raw}` has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(format!("`{raw}` must use https (http only for a loopback address)")),
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(format!("`{raw}` must not carry a user or a fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_distinct() {
        let all = builtins();
        for id in ["microsoft", "google", "github", "slack", "salesforce"] {
            assert!(all.iter().any(|p| p.id == id), "{id}");
        }
        for p in &all {
            endpoint(&p.authorize_url).unwrap();
            endpoint(&p.token_url).unwrap();
        }
    }

    #[test]
    fn operator_entries_are_checked_naming_the_field() {
        let ok = r#"[{"id": "acme", "name": "Acme", "authorize_url": "http://127.0.0.1:9/a",
                      "token_url": "http://127.0.0.1:9/t", "scopes": ["read"], "pkce": true,
                      "client_auth": "basic", "api_origins": ["http://127.0.0.1:9"]}]"#;
        let parsed = parse(ok).unwrap();
        assert_eq!(parsed[0].client_auth, ClientAuth::Basic);
        assert_eq!(Registry::new(&parsed).get("acme").unwrap().source, Source::Operator);
        for (bad, needle) in [
            (ok.replace("\"acme\"", "\"github\""), "[0].id"),
            (
                ok.replace("http://127.0.0.1:9/t", "http://tokens.example/t"),
                "[0].token_url",
            ),
            (ok.replace("[\"http://127.0.0.1:9\"]", "[]"), "[0].api_origins"),
            (ok.replace("\"basic\"", "\"jwt\""), "not a JSON array"),
            (
                ok.replace("\"pkce\"", "\"token_url_override\": 1, \"pkce\""),
                "not a JSON array",
            ),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
