//! A mock OpenID Connect provider on 127.0.0.1 for the single sign-on tests:
//! discovery, a JWKS of RS256 keys (two fixed test keys, so a test can
//! rotate: publish the second and sign with it), an authorize endpoint that
//! redirects straight back with a code, and a token endpoint that checks
//! the client secret, the redirect URI and the PKCE verifier and returns an
//! ID token. The same endpoints answer under Entra's paths
//! (`/{tenant}/oauth2/v2.0/...`, `/{tenant}/discovery/v2.0/keys`).
//!
//! A test says who signs in next ([`Idp::next_user`]) and may tamper with
//! the next token's claims ([`Idp::tamper`]) to check each refusal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const CLIENT_ID: &str = "floq-test-client";
pub const CLIENT_SECRET: &str = "a-test-client-secret";

#[derive(Deserialize, Clone)]
struct TestKey {
    kid: String,
    der: String,
    n: String,
    e: String,
}

fn keys() -> Vec<TestKey> {
    serde_json::from_str(include_str!("../data/idp-keys.json")).expect("test keys")
}

struct Grant {
    claims: Value,
    challenge: String,
    redirect_uri: String,
}

#[derive(Default)]
struct Inner {
    /// Claims of the next sign-in (`sub`, `email`, …).
    next: Value,
    /// Merged over the next token's claims (`null` removes one).
    tamper: Value,
    /// Kids published in the JWKS, and the one tokens are signed with.
    published: Vec<String>,
    signing: String,
    codes: HashMap<String, Grant>,
    tokens_issued: u32,
    jwks_fetches: u32,
    authorize_params: Vec<HashMap<String, String>>,
    /// The authorize endpoint shows a page with a link back (as a provider's
    /// sign-in page does) instead of redirecting at once.
    interactive: bool,
}

#[derive(Clone)]
pub struct Idp {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl Idp {
    pub async fn start() -> Self {
        Self::start_as("127.0.0.1").await
    }

    /// Listens on 127.0.0.1 but names itself `host` in its URLs (`localhost`:
    /// another site than `127.0.0.1` to a browser, as a real provider is).
    pub async fn start_as(host: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base = format!("http://{host}:{port}");
        let inner = Arc::new(Mutex::new(Inner {
            next: json!({"sub": "user-1", "email": "ada@acme.test", "email_verified": true}),
            tamper: json!({}),
            published: vec!["key-a".into()],
            signing: "key-a".into(),
            ..Default::default()
        }));
        let idp = Idp { base, inner };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/{tenant}/discovery/v2.0/keys", get(jwks))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_tenant))
            .route("/{tenant}/oauth2/v2.0/token", post(token_tenant))
            .with_state(idp.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        idp
    }

    /// The issuer of the generic form (the server's root).
    pub fn issuer(&self) -> String {
        self.base.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who signs in next: their claims (`sub`, `email`, `email_verified`, `tid`, `iss`, …).
    pub fn next_user(&self, claims: Value) {
        self.lock().next = claims;
    }

    /// Overrides merged into the next tokens' claims until cleared (`json!({})`).
    pub fn tamper(&self, claims: Value) {
        self.lock().tamper = claims;
    }

    /// Rotates: publishes both keys and signs with the second.
    pub fn rotate(&self) {
        let mut i = self.lock();
        i.published = vec!["key-a".into(), "key-b".into()];
        i.signing = "key-b".into();
    }

    /// Shows a sign-in page whose "Continue" link (`#continue`) goes back to
    /// the client: the browser then leaves the provider's site by a
    /// navigation the provider's page starts, as after a real sign-in.
    pub fn interactive(&self) {
        self.lock().interactive = true;
    }

    /// Signs with a key the JWKS does not publish.
    pub fn sign_with_unpublished(&self) {
        let mut i = self.lock();
        i.published = vec!["key-a".into()];
        i.signing = "key-b".into();
    }

    pub fn tokens_issued(&self) -> u32 {
        self.lock().tokens_issued
    }

    pub fn jwks_fetches(&self) -> u32 {
        self.lock().jwks_fetches
    }

    /// The query of the last authorization request.
    pub fn last_authorize(&self) -> HashMap<String, String> {
        self.lock().authorize_params.last().cloned().unwrap_or_default()
    }
}

async fn discovery(State(idp): State<Idp>) -> Json<Value> {
    let b = &idp.base;
    Json(json!({
        "issuer": b,
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/token"),
        "jwks_uri": format!("{b}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(State(idp): State<Idp>) -> Json<Value> {
    let mut i = idp.lock();
    i.jwks_fetches += 1;
    let published = i.published.clone();
    drop(i);
    let keys: Vec<Value> = keys()
        .into_iter()
        .filter(|k| published.contains(&k.kid))
        .map(|k| json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": k.kid, "n": k.n, "e": k.e}))
        .collect();
    Json(json!({"keys": keys}))
}

async fn authorize_tenant(
    State(idp): State<Idp>,
    Path(_tenant): Path<String>,
    q: Query<HashMap<String, String>>,
) -> Response {
    authorize(State(idp), q).await
}

async fn authorize(State(idp): State<Idp>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut i = idp.lock();
    i.authorize_params.push(q.clone());
    let (Some(redirect_uri), Some(state), Some(nonce), Some(challenge)) = (
        q.get("redirect_uri"),
        q.get("state"),
        q.get("nonce"),
        q.get("code_challenge"),
    ) else {
        return (StatusCode::BAD_REQUEST, "missing parameters").into_response();
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("response_type").map(String::as_str) != Some("code")
    {
        return (StatusCode::BAD_REQUEST, "bad request").into_response();
    }
    let code = hex::encode(Sha256::digest(format!("{state}{nonce}").as_bytes()));
    let mut claims = i.next.clone();
    claims["nonce"] = json!(nonce);
    i.codes.insert(
        code.clone(),
        Grant {
            claims,
            challenge: challenge.clone(),
            redirect_uri: redirect_uri.clone(),
        },
    );
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let state = url::form_urlencoded::byte_serialize(state.as_bytes()).collect::<String>();
    let back = format!("{redirect_uri}{sep}code={code}&state={state}");
    if i.interactive {
        let page = format!(
            "<!doctype html><html><body><h1>Mock provider</h1><a id=\"continue\" href=\"{}\">Continue</a></body></html>",
            back.replace('&', "&amp;").replace('"', "&quot;")
        );
        return axum::response::Html(page).into_response();
    }
    Redirect::to(&back).into_response()
}

async fn token_tenant(
    State(idp): State<Idp>,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    form: Form<HashMap<String, String>>,
) -> Response {
    token(State(idp), headers, form).await
}

async fn token(State(idp): State<Idp>, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Response {
    let refuse = |what: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": what})),
        )
            .into_response()
    };
    // client_secret_basic or client_secret_post.
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let client_ok = match basic {
        Some(pair) => pair == format!("{CLIENT_ID}:{CLIENT_SECRET}"),
        None => {
            f.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && f.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        }
    };
    if !client_ok {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return refuse("grant_type");
    }
    let mut i = idp.lock();
    let Some(grant) = f.get("code").and_then(|c| i.codes.remove(c)) else {
        return refuse("unknown code");
    };
    if f.get("redirect_uri") != Some(&grant.redirect_uri) {
        return refuse("redirect_uri");
    }
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if challenge != grant.challenge {
        return refuse("PKCE verifier");
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": idp.base,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 600,
    });
    for (k, v) in grant.claims.as_object().into_iter().flatten() {
        claims[k] = v.clone();
    }
    for (k, v) in i.tamper.as_object().into_iter().flatten() {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    let key = keys().into_iter().find(|k| k.kid == i.signing).expect("signing key");
    i.tokens_issued += 1;
    drop(i);
    let der = base64::engine::general_purpose::STANDARD.decode(&key.der).expect("der");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let id_token =
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_der(&der)).expect("sign");
    Json(json!({"access_token": "at", "token_type": "Bearer", "expires_in": 600, "id_token": id_token})).into_response()
}
