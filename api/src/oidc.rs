//! The API's OpenID Connect client (authorization-code flow with PKCE):
//! where a connection's provider lives (discovery, or the Entra preset),
//! the code exchange, and the ID token's validation: signature against the
//! provider's JWKS (fetched again when a token names a key it does not
//! hold, so keys rotate without a restart), `iss`, `aud`, `azp`, `exp` and
//! `nonce`.
//!
//! Every call goes through the egress policy with its own allow-list
//! (`FLOQ_SSO_EGRESS_ALLOW`): connections are configured by tenants, and
//! opening an internal identity provider must not open it to flows. The one
//! secret it handles is a connection's client secret, for the one code
//! exchange (the design's single exception to "only workers decrypt").
//!
//! It never tells a caller which check failed: [`Refusal`] carries the
//! reason for the audit log only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use floq_shared::Config;
use floq_shared::egress::{self, Policy};
use floq_shared::sso::{Preset, SignInConnection};

/// Where Microsoft Entra ID answers; tests point it at their mock provider.
pub const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The tenant forms that accept users of many tenants.
pub const ENTRA_MULTI_TENANT: [&str; 2] = ["organizations", "common"];
/// How long discovery documents and key sets are trusted before they are fetched again.
const CACHE_FOR: Duration = Duration::from_secs(3600);
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 512 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 60;

/// Why a sign-in was refused: for the audit log, never for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A stable code (`nonce_mismatch`, `invalid_token`, …).
    pub code: &'static str,
    /// What exactly, for the operator.
    pub detail: String,
}

impl Refusal {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// A provider's endpoints. `issuer` may hold `{tenantid}` (Entra's multi-tenant form).
#[derive(Clone, Debug, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// The issuer an Entra connection stores for a tenant.
pub fn entra_issuer(authority: &str, tenant: &str) -> String {
    let authority = authority.trim_end_matches('/');
    if ENTRA_MULTI_TENANT.contains(&tenant) {
        format!("{authority}/{{tenantid}}/v2.0")
    } else {
        format!("{authority}/{tenant}/v2.0")
    }
}

fn entra_endpoints(authority: &str, tenant: &str) -> Endpoints {
    let authority = authority.trim_end_matches('/');
    Endpoints {
        issuer: entra_issuer(authority, tenant),
        authorization_endpoint: format!("{authority}/{tenant}/oauth2/v2.0/authorize"),
        token_endpoint: format!("{authority}/{tenant}/oauth2/v2.0/token"),
        jwks_uri: format!("{authority}/{tenant}/discovery/v2.0/keys"),
        token_endpoint_auth_methods_supported: vec!["client_secret_post".into()],
    }
}

/// What a validated ID token says about the person.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The token's own `iss` (for Entra's multi-tenant form, the user's tenant's).
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The provider vouches for the address (`email_verified`; Entra: `xms_edov`).
    pub email_verified: bool,
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Value>,
    #[serde(default)]
    xms_edov: Option<Value>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tid: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    Missing,
}

impl Audience {
    fn values(&self) -> Vec<&str> {
        match self {
            Audience::One(a) => vec![a.as_str()],
            Audience::Many(v) => v.iter().map(String::as_str).collect(),
            Audience::Missing => vec![],
        }
    }
}

/// `true`, `"true"` or `1`: providers spell a boolean claim in all three ways.
fn truthy(v: &Option<Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true") || s == "1",
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = floq_shared::sessions::random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

struct Cached<T> {
    at: Instant,
    value: Arc<T>,
}

/// Discovery and key sets, cached per URL, shared by every request of this replica.
pub struct Oidc {
    policy: Policy,
    client: reqwest::Client,
    entra_authority: String,
    discovery: Mutex<HashMap<String, Cached<Endpoints>>>,
    keys: Mutex<HashMap<String, Cached<Vec<Jwk>>>>,
}

impl Oidc {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            policy: Policy::for_sso(config),
            client: egress::http_client("floq-sso")?,
            entra_authority: config.sso_entra_authority.clone(),
            discovery: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
        })
    }

    pub fn entra_authority(&self) -> &str {
        &self.entra_authority
    }

    async fn send(&self, request: reqwest::Request) -> Result<Vec<u8>, Refusal> {
        let url = request.url().to_string();
        let response = tokio::time::timeout(TIMEOUT, self.policy.send(&self.client, request))
            .await
            .map_err(|_| Refusal::new("provider_unreachable", format!("{url}: timed out")))?
            .map_err(|e| match e {
                egress::SendError::Egress(e) => {
                    Refusal::new("egress_denied", format!("{url}: {e} (FLOQ_SSO_EGRESS_ALLOW)"))
                }
                egress::SendError::Http(e) => Refusal::new("provider_unreachable", format!("{url}: {e}")),
            })?;
        let status = response.status();
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Refusal::new("provider_unreachable", format!("{url}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(Refusal::new(
                    "provider_answer_invalid",
                    format!("{url}: answer too large"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            // Only an OAuth error (`error`, `error_description`) goes into the tenant's audit entry, never a body
            // as such: an address the operator opened for one identity provider may answer something else.
            let oauth_error = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| {
                let error = v.get("error")?.as_str()?.chars().take(100).collect::<String>();
                let description: String = v
                    .get("error_description")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                Some(format!(" {error}: {description}"))
            });
            return Err(Refusal::new(
                "provider_refused",
                format!("{url}: {status}{}", oauth_error.unwrap_or_default()),
            ));
        }
        Ok(body)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, Refusal> {
        let request = self
            .client
            .get(url)
            .header("accept", "application/json")
            .build()
            .map_err(|e| Refusal::new("provider_unreachable", format!("{url}: {e}")))?;
        self.send(request).await
    }

    /// The connection's provider endpoints: the Entra preset's, or the issuer's discovery document.
    pub async fn endpoints(&self, conn: &SignInConnection) -> Result<Arc<Endpoints>, Refusal> {
        if conn.preset == Preset::Entra {
            let tenant = conn.tenant.as_deref().unwrap_or("organizations");
            return Ok(Arc::new(entra_endpoints(&self.entra_authority, tenant)));
        }
        let url = format!("{}/.well-known/openid-configuration", conn.issuer.trim_end_matches('/'));
        if let Some(hit) = self.cached(&self.discovery, &url) {
            return Ok(hit);
        }
        let body = self.get(&url).await?;
        let found: Endpoints = serde_json::from_slice(&body)
            .map_err(|e| Refusal::new("discovery_invalid", format!("{url}: not a discovery document: {e}")))?;
        if found.issuer.trim_end_matches('/') != conn.issuer.trim_end_matches('/') {
            return Err(Refusal::new(
                "discovery_issuer_mismatch",
                format!(
                    "discovery names issuer `{}`, the connection `{}`",
                    found.issuer, conn.issuer
                ),
            ));
        }
        // What the issuer's document points at must be as safe as the issuer: no cleartext secret, no open redirect.
        for (what, endpoint) in [
            ("authorization_endpoint", &found.authorization_endpoint),
            ("token_endpoint", &found.token_endpoint),
            ("jwks_uri", &found.jwks_uri),
        ] {
            let ok = check_url(endpoint, true);
            ok.map_err(|m| Refusal::new("discovery_invalid", format!("{url}: {what} {m}")))?;
        }
        let found = Arc::new(found);
        lock(&self.discovery).insert(
            url,
            Cached {
                at: Instant::now(),
                value: found.clone(),
            },
        );
        Ok(found)
    }

    fn cached<T>(&self, map: &Mutex<HashMap<String, Cached<T>>>, url: &str) -> Option<Arc<T>> {
        lock(map)
            .get(url)
            .filter(|c| c.at.elapsed() < CACHE_FOR)
            .map(|c| c.value.clone())
    }

    /// The provider's keys; `fresh` fetches them again (a token named a key we do not hold).
    async fn keys(&self, jwks_uri: &str, fresh: bool) -> Result<Arc<Vec<Jwk>>, Refusal> {
        if !fresh && let Some(hit) = self.cached(&self.keys, jwks_uri) {
            return Ok(hit);
        }
        let body = self.get(jwks_uri).await?;
        let set: Value = serde_json::from_slice(&body)
            .map_err(|e| Refusal::new("jwks_invalid", format!("{jwks_uri}: not a key set: {e}")))?;
        // A key of a type we do not know must not hide the others.
        let keys: Vec<Jwk> = set["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| serde_json::from_value(k.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let keys = Arc::new(keys);
        lock(&self.keys).insert(
            jwks_uri.to_string(),
            Cached {
                at: Instant::now(),
                value: keys.clone(),
            },
        );
        Ok(keys)
    }

    /// Exchanges an authorization code for the ID token (client secret and PKCE verifier).
    pub async fn exchange(
        &self,
        conn: &SignInConnection,
        endpoints: &Endpoints,
        client_secret: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, Refusal> {
        let basic = endpoints.token_endpoint_auth_methods_supported.is_empty()
            || endpoints
                .token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == "client_secret_basic");
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
            ("client_id", conn.client_id.as_str()),
        ];
        let mut request = self
            .client
            .post(&endpoints.token_endpoint)
            .header("accept", "application/json");
        if basic {
            // RFC 6749 §2.3.1: both halves form-urlencoded before they are joined.
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(&conn.client_id), Some(enc(client_secret)));
        } else {
            form.push(("client_secret", client_secret));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .build()
            .map_err(|e| Refusal::new("token_request_invalid", format!("token request: {e}")))?;
        let body = self.send(request).await?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| Refusal::new("token_answer_invalid", format!("token endpoint: not JSON: {e}")))?;
        answer["id_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Refusal::new("token_answer_invalid", "token endpoint: no id_token"))
    }

    /// Validates an ID token for the connection and the nonce its state holds.
    pub async fn verify(
        &self,
        conn: &SignInConnection,
        endpoints: &Endpoints,
        id_token: &str,
        nonce: &str,
    ) -> Result<Verified, Refusal> {
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|e| Refusal::new("token_malformed", format!("id_token header: {e}")))?;
        let allowed = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::ES256,
        ];
        if !allowed.contains(&header.alg) {
            return Err(Refusal::new(
                "algorithm_refused",
                format!("id_token: algorithm {:?} refused", header.alg),
            ));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let pick = |keys: &[Jwk]| -> Option<Jwk> {
            keys.iter()
                .find(|k| header.kid.is_none() || k.common.key_id.as_deref() == Some(kid.as_str()))
                .cloned()
        };
        let mut key = pick(&self.keys(&endpoints.jwks_uri, false).await?);
        if key.is_none() {
            // Rotation: the provider signs with a key published after we fetched.
            key = pick(&self.keys(&endpoints.jwks_uri, true).await?);
        }
        let key = key.ok_or_else(|| {
            Refusal::new(
                "unknown_signing_key",
                format!("id_token: no key `{kid}` in the provider's key set"),
            )
        })?;
        let key = DecodingKey::from_jwk(&key)
            .map_err(|e| Refusal::new("signing_key_invalid", format!("id_token key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[conn.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
        let claims: Claims = jsonwebtoken::decode(id_token, &key, &validation)
            .map_err(|e| {
                let code = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token_expired",
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => "token_not_yet_valid",
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => "audience_mismatch",
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => "signature_invalid",
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => "claim_missing",
                    _ => "claims_invalid",
                };
                Refusal::new(code, format!("id_token: {e}"))
            })?
            .claims;

        let expected_issuer = match (&claims.tid, endpoints.issuer.contains("{tenantid}")) {
            (Some(tid), true) => {
                if !conn.allowed_tenants.iter().any(|t| t.eq_ignore_ascii_case(tid)) {
                    return Err(Refusal::new(
                        "tenant_not_allowed",
                        format!("id_token: tenant `{tid}` is not an allowed tenant"),
                    ));
                }
                endpoints.issuer.replace("{tenantid}", tid)
            }
            (None, true) => {
                return Err(Refusal::new(
                    "tenant_missing",
                    "id_token: no tid for a multi-tenant connection",
                ));
            }
            (_, false) => endpoints.issuer.clone(),
        };
        if claims.iss.trim_end_matches('/') != expected_issuer.trim_end_matches('/') {
            return Err(Refusal::new(
                "issuer_mismatch",
                format!("id_token: issuer `{}`, expected `{expected_issuer}`", claims.iss),
            ));
        }
        let audiences = claims.aud.values();
        match &claims.azp {
            Some(azp) if azp != &conn.client_id => {
                return Err(Refusal::new(
                    "azp_mismatch",
                    format!("id_token: azp `{azp}` is not this client"),
                ));
            }
            None if audiences.len() > 1 => {
                return Err(Refusal::new("azp_missing", "id_token: several audiences and no azp"));
            }
            _ => {}
        }
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(Refusal::new("nonce_mismatch", "id_token: nonce mismatch"));
        }
        let entra = conn.preset == Preset::Entra;
        let email_verified = if entra {
            truthy(&claims.xms_edov)
        } else {
            truthy(&claims.email_verified)
        };
        let email = claims
            .email
            .or_else(|| {
                entra
                    .then_some(claims.preferred_username)
                    .flatten()
                    .filter(|u| u.contains('@'))
            })
            .map(|e| e.trim().to_string());
        Ok(Verified {
            issuer: claims.iss,
            subject: claims.sub,
            email,
            email_verified,
            name: claims.name,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The authorization request's URL.
pub fn authorize_url(
    endpoints: &Endpoints,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    challenge: &str,
) -> Result<String, Refusal> {
    let mut url = url::Url::parse(&endpoints.authorization_endpoint)
        .map_err(|e| Refusal::new("authorization_endpoint_invalid", format!("authorization endpoint: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid email profile")
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("response_mode", "query");
    Ok(url.into())
}

/// An issuer is an `https` URL without query or fragment (`http` only on loopback, for development).
pub fn check_issuer(raw: &str) -> Result<(), String> {
    check_url(raw, false)
}

/// `https` (`http` only on loopback), no credentials; an endpoint may carry a query, an issuer not.
fn check_url(raw: &str, query_allowed: bool) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|_| "must be a URL".to_string())?;
    let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
        || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        || url.host_str() == Some("localhost");
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must be an https URL".into()),
    }
    if (!query_allowed && url.query().is_some()) || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must not carry a query, a fragment or credentials".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_issuers_name_the_tenant_or_the_template() {
        assert_eq!(
            entra_issuer(ENTRA_AUTHORITY, "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
        );
        assert_eq!(
            entra_issuer(ENTRA_AUTHORITY, "organizations"),
            "https://login.microsoftonline.com/{tenantid}/v2.0"
        );
        let e = entra_endpoints(ENTRA_AUTHORITY, "common");
        assert_eq!(
            e.jwks_uri,
            "https://login.microsoftonline.com/common/discovery/v2.0/keys"
        );
    }

    #[test]
    fn pkce_challenges_are_s256_of_the_verifier() {
        let (verifier, challenge) = pkce();
        assert_eq!(challenge, URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())));
        assert_eq!(verifier.len(), 64);
    }

    #[test]
    fn boolean_claims_come_in_three_spellings() {
        assert!(truthy(&Some(Value::Bool(true))));
        assert!(truthy(&Some(Value::String("true".into()))));
        assert!(truthy(&Some(serde_json::json!(1))));
        assert!(!truthy(&Some(Value::String("false".into()))));
        assert!(!truthy(&None));
    }
}
