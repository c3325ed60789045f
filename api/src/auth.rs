//! Authentication: an API key (`Authorization: Bearer`, an HS256 JWT naming
//! user, company and key id, checked against `api_keys`) or a browser
//! session cookie. Cookie-authenticated requests that change state must come
//! from an allowed `Origin`: one in `FLOQ_CORS_ORIGINS`, or the origin of
//! `FLOQ_PUBLIC_URL` itself (where the console is served).

use floq_shared::db::StoreError;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::header::{AUTHORIZATION, ORIGIN};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::request::RequestMeta;
pub use crate::request::{Credential, Principal};
use crate::session;
use crate::state::AppState;
use floq_shared::audit::Entry;
use floq_shared::ids::{ApiKeyId, CompanyId, UserId};
use floq_shared::{api_keys, db};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// user id
    pub sub: Uuid,
    /// company id
    pub cid: Uuid,
    /// key id
    pub kid: Uuid,
    pub scopes: Vec<String>,
    pub iat: i64,
    pub exp: i64,
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Keys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// The scopes a key may carry.
pub const SCOPES: [&str; 2] = ["api", "mcp"];
/// Bounds of a key's requested lifetime, in seconds (one minute to one year).
pub const MIN_KEY_TTL_SECS: u64 = 60;
pub const MAX_KEY_TTL_SECS: u64 = 31_536_000;

/// Inserts a key row and returns its signed token. The caller's transaction must be scoped to `company_id`.
pub async fn issue_key(
    tx: &mut db::Tx,
    keys: &Keys,
    company_id: Uuid,
    user_id: Uuid,
    name: &str,
    scopes: &[String],
    expires_at: DateTime<Utc>,
) -> Result<(Uuid, String), StoreError> {
    let key_id = Uuid::now_v7();
    let row = api_keys::NewKey {
        id: ApiKeyId(key_id),
        company_id: CompanyId(company_id),
        user_id: UserId(user_id),
        name,
        scopes,
        expires_at,
    };
    api_keys::insert(tx, row).await?;
    let token = keys.sign(&Claims {
        sub: user_id,
        cid: company_id,
        kid: key_id,
        scopes: scopes.to_vec(),
        iat: Utc::now().timestamp(),
        exp: expires_at.timestamp(),
    });
    Ok((key_id, token))
}

const X_API_KEY: &str = "x-api-key";

/// The origin a browser sends for pages served at `public_url`:
/// `scheme://host[:port]`, the port only when it is not the scheme's default.
pub fn public_origin(public_url: &str) -> String {
    match url::Url::parse(public_url) {
        Ok(url) if url.origin().is_tuple() => url.origin().ascii_serialization(),
        // The config checked the shape; an unparsable one allows no extra origin.
        _ => String::new(),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let request = parts
            .extensions
            .get::<Arc<RequestMeta>>()
            .cloned()
            .unwrap_or_else(|| RequestMeta::new(String::new(), std::net::Ipv4Addr::UNSPECIFIED.into()));
        let principal = match (parts.headers.get(AUTHORIZATION), parts.headers.get(X_API_KEY)) {
            (Some(header), _) => {
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(ApiError::unauthorized)?;
                from_api_key(state, token, request.clone()).await?
            }
            (None, Some(header)) => {
                let token = header.to_str().map_err(|_| ApiError::unauthorized())?;
                from_api_key(state, token, request.clone()).await?
            }
            (None, None) => from_session(parts, state, request.clone()).await?,
        };
        request.authenticated(&principal);
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

async fn from_session(parts: &Parts, state: &AppState, request: Arc<RequestMeta>) -> Result<Principal, ApiError> {
    let token = session::cookie_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
    let live = match session::lookup(&state.pool, &token).await? {
        session::Lookup::Live(live) => live,
        session::Lookup::Expired {
            id,
            user_id,
            company_id,
        } => {
            let actor = Principal {
                user_id,
                company_id,
                credential: Credential::Session(id),
                roles: vec![],
                request: request.clone(),
            }
            .actor();
            let entry = Entry::new(company_id, actor, "auth.session_expired").resource("session", id);
            state.audit.record(entry).await;
            return Err(ApiError::unauthorized());
        }
        session::Lookup::Unknown => return Err(ApiError::unauthorized()),
    };
    let principal = Principal {
        user_id: live.user_id,
        company_id: live.company_id,
        credential: Credential::Session(live.id),
        roles: live.roles,
        request,
    };
    // A cookie rides along on cross-site requests; only allowed origins may change state with it.
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let origin = parts.headers.get(ORIGIN).and_then(|v| v.to_str().ok());
        let public = &*state.public_origin;
        let allowed = |o: &str| (!public.is_empty() && o == public) || state.config.cors_origins.iter().any(|a| a == o);
        if !origin.is_some_and(allowed) {
            principal.request.authenticated(&principal);
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "cookie-authenticated requests that change state must come from an allowed Origin",
            )
            .denied("origin", None));
        }
    }
    Ok(principal)
}

async fn from_api_key(state: &AppState, token: &str, request: Arc<RequestMeta>) -> Result<Principal, ApiError> {
    key_principal(state, token, request, "api").await
}

/// The caller an API key names, if it is live and carries `scope` (`api` for
/// this REST API, `mcp` for `/mcp`). A key that is live but lacks the scope
/// is a `403`: it authenticates, it just reaches nothing here.
pub async fn key_principal(
    state: &AppState,
    token: &str,
    request: Arc<RequestMeta>,
    scope: &'static str,
) -> Result<Principal, ApiError> {
    let claims = state.keys.verify(token.trim()).ok_or_else(ApiError::unauthorized)?;
    let roles = match state.key_cache.get(claims.kid) {
        Some(hit) if hit.user_id == claims.sub && hit.company_id == claims.cid => hit.roles,
        _ => {
            let generation = state.key_cache.generation();
            let mut tx = db::tenant_tx(&state.pool, claims.cid).await?;
            // The key must exist, be live, and its owner must still be a member:
            // a key's authority is its owner's current roles, never more.
            let roles =
                api_keys::authority(&mut tx, CompanyId(claims.cid), ApiKeyId(claims.kid), UserId(claims.sub)).await?;
            db::commit(tx).await?;
            let roles = roles.ok_or_else(ApiError::unauthorized)?;
            state
                .key_cache
                .put(generation, claims.kid, claims.sub, claims.cid, roles.clone());
            roles
        }
    };
    let principal = Principal {
        user_id: claims.sub,
        company_id: claims.cid,
        credential: Credential::ApiKey(claims.kid),
        roles,
        request,
    };
    if !claims.scopes.iter().any(|s| s == scope) {
        principal.request.authenticated(&principal);
        let capability = format!("scope:{scope}");
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "scope_missing",
            format!("this API key does not carry the `{scope}` scope"),
        )
        .denied(&capability, None));
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::public_origin;

    #[test]
    fn the_public_origin_is_scheme_host_and_a_port_only_when_not_the_default() {
        assert_eq!(public_origin("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(public_origin("https://floq.example.com"), "https://floq.example.com");
        assert_eq!(
            public_origin("https://floq.example.com:443/base"),
            "https://floq.example.com"
        );
        assert_eq!(
            public_origin("HTTPS://Floq.Example.com:8443/"),
            "https://floq.example.com:8443"
        );
        assert_eq!(public_origin("not a url"), "");
    }
}
