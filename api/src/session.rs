//! Browser sessions over HTTP: a random token in an `HttpOnly; Secure;
//! SameSite=Strict` cookie. The table and its rules live in
//! `floq_shared::sessions`.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

pub use floq_shared::sessions::{Live, Lookup, create, lookup, opened_by, revoke, switch_company, token_hash};

pub const COOKIE_NAME: &str = "floq_session";

pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty())
}

pub fn set_cookie(token: &str, max_age_secs: u64) -> String {
    format!("{COOKIE_NAME}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict")
}

pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}
