//! OAuth2 integration links (docs/secrets.md, "OAuth links"): the provider
//! registry, the token endpoint client, PKCE and `state`, and the stores of
//! links and pending authorization requests.
//!
//! The API builds authorization URLs and, in the callback, exchanges the
//! code: the one place outside a worker that decrypts a secret of a
//! credential (its client secret, for that call only). Workers refresh.

pub mod links;
pub mod providers;
pub mod states;
pub mod token;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto::Binding;

pub use providers::{Provider, Registry};

/// How long an authorization request may take from `authorize` to the callback.
pub const STATE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The credential fields of an `oauth2` credential that are not secret.
pub const PUBLIC_FIELDS: [&str; 3] = ["provider", "client_id", "scopes"];

fn random_text(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A fresh `state` for `company_id`: `<company id>.<256 random bits>`. The
/// company part lets the anonymous callback open that company's tenant
/// transaction; only the hash of the whole value is stored.
pub fn new_state(company_id: Uuid) -> String {
    format!("{company_id}.{}", random_text(32))
}

/// The company a `state` names, if it is shaped like one.
pub fn state_company(state: &str) -> Option<Uuid> {
    let (company, rest) = state.split_once('.')?;
    (rest.len() >= 43).then_some(())?;
    Uuid::parse_str(company).ok()
}

/// The cookie that binds a connect to the browser that started it.
pub const BROWSER_COOKIE: &str = "floq_oauth_browser";

/// A fresh browser-binding value (256 random bits).
pub fn new_browser_binding() -> String {
    random_text(32)
}

/// Whether a cookie value is shaped like one [`new_browser_binding`] makes.
pub fn browser_binding_ok(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

/// A PKCE verifier (RFC 7636 §4.1: 43 characters of 256 random bits) and its `S256` challenge.
pub fn pkce_pair() -> (zeroize::Zeroizing<String>, String) {
    let verifier = zeroize::Zeroizing::new(random_text(32));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub fn access_token_binding(company_id: Uuid, credential_id: &str) -> Binding<'_> {
    Binding {
        company_id,
        table: "oauth_links",
        column: "access_token",
        row_id: credential_id,
    }
}

pub fn refresh_token_binding(company_id: Uuid, credential_id: &str) -> Binding<'_> {
    Binding {
        company_id,
        table: "oauth_links",
        column: "refresh_token",
        row_id: credential_id,
    }
}

pub fn verifier_binding(company_id: Uuid, state_hash_hex: &str) -> Binding<'_> {
    Binding {
        company_id,
        table: "oauth_states",
        column: "code_verifier",
        row_id: state_hash_hex,
    }
}

/// The callback address providers send the browser back to.
pub fn redirect_uri(public_url: &str) -> String {
    format!("{public_url}/api/v1/oauth/callback")
}

/// Where the provider's tokens may be sent for a credential: the provider's
/// `api_origins`, narrowed by the credential's own `allowed_origins` when it
/// names any; when the provider names none, the credential's alone. Empty: nowhere.
pub fn token_origins(provider: &Provider, credential_origins: &[String]) -> Vec<String> {
    if provider.api_origins.is_empty() {
        return credential_origins.to_vec();
    }
    provider
        .api_origins
        .iter()
        .filter_map(|o| crate::egress::origin::parse(o).ok())
        .filter(|o| credential_origins.is_empty() || credential_origins.contains(o))
        .collect()
}

/// A `return_to` the callback may redirect to: a path on this site only
/// (`/…`, not `//host` or `/\host`), without control characters.
pub fn relative_return_to(raw: &str) -> bool {
    raw.starts_with('/')
        && !raw.starts_with("//")
        && !raw.starts_with("/\\")
        && raw.len() <= 2000
        && !raw.chars().any(|c| c.is_control() || c == '\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_carry_their_company_and_verifiers_their_challenge() {
        let company = Uuid::now_v7();
        let state = new_state(company);
        assert_eq!(state_company(&state), Some(company));
        assert_eq!(state_company("nope"), None);
        assert_eq!(state_company(&format!("{company}.short")), None);
        let (verifier, challenge) = pkce_pair();
        assert_eq!(verifier.len(), 43);
        assert_eq!(challenge, URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())));
    }

    #[test]
    fn only_paths_of_this_site_are_returned_to() {
        for ok in ["/", "/app/credentials?x=1", "/a#b"] {
            assert!(relative_return_to(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "evil",
            "/a\nb",
            "/a\\b",
        ] {
            assert!(!relative_return_to(bad), "{bad}");
        }
    }
}
