//! A mock OAuth2 provider on 127.0.0.1 for the integration-link tests:
//!
//! * `GET /authorize` checks the client and redirects back to the
//!   `redirect_uri` with a one-time code (remembering its PKCE challenge);
//! * `POST /token` exchanges a code (checking the client, the redirect URI and
//!   the PKCE verifier) or a refresh token, rotating the refresh token on each
//!   refresh (a spent one is `invalid_grant`, as rotating providers answer),
//!   counting refreshes, optionally slowly or refusing them all;
//! * `GET /api/me` answers `200` only to the newest access token as a bearer
//!   and `401` to anything else, and records every bearer it saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const CLIENT_ID: &str = "floq-test-client";
pub const CLIENT_SECRET: &str = "client-secret-0123456789";

#[derive(Default)]
struct Inner {
    /// code → (PKCE challenge, redirect_uri)
    codes: HashMap<String, (Option<String>, String)>,
    access: Option<String>,
    refresh: Option<String>,
    issued: u64,
    refreshes: usize,
    refresh_delay: Duration,
    refuse_refresh: bool,
    expires_in: i64,
    bearers: Vec<String>,
    rejected: usize,
    token_requests: usize,
}

#[derive(Clone, Default)]
pub struct Mock(Arc<Mutex<Inner>>);

pub struct OAuthServer {
    pub base: String,
    pub mock: Mock,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().expect("mock lock"))
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({"error": error}))).into_response()
}

async fn authorize(State(mock): State<Mock>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("response_type").map(String::as_str) != Some("code")
    {
        return (StatusCode::BAD_REQUEST, "bad client or response type").into_response();
    }
    let (Some(redirect), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
        return (StatusCode::BAD_REQUEST, "no redirect_uri or state").into_response();
    };
    let challenge = match (q.get("code_challenge"), q.get("code_challenge_method")) {
        (Some(c), Some(m)) if m == "S256" => Some(c.clone()),
        (None, None) => None,
        _ => return (StatusCode::BAD_REQUEST, "PKCE must be S256").into_response(),
    };
    let code = format!("code-{}", Uuid::new_v4().simple());
    mock.with(|m| m.codes.insert(code.clone(), (challenge, redirect.clone())));
    let mut to = url::Url::parse(redirect).expect("redirect_uri is a URL");
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

fn issue(m: &mut Inner) -> Value {
    m.issued += 1;
    let n = m.issued;
    let access = format!("access-{n}-{}", Uuid::new_v4().simple());
    let refresh = format!("refresh-{n}-{}", Uuid::new_v4().simple());
    m.access = Some(access.clone());
    m.refresh = Some(refresh.clone());
    json!({"access_token": access, "token_type": "Bearer", "expires_in": m.expires_in,
           "refresh_token": refresh, "scope": "read write"})
}

/// The client, by form fields or HTTP Basic.
fn client_ok(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = STANDARD.decode(basic).ok().and_then(|b| String::from_utf8(b).ok());
        return decoded.as_deref() == Some(&format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    }
    form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
}

async fn token(
    State(mock): State<Mock>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    mock.with(|m| m.token_requests += 1);
    if !client_ok(&headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((challenge, redirect)) = mock.with(|m| m.codes.remove(&code)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if form.get("redirect_uri") != Some(&redirect) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if let Some(challenge) = challenge {
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
            }
            axum::Json(mock.with(issue)).into_response()
        }
        Some("refresh_token") => {
            let delay = mock.with(|m| m.refresh_delay);
            tokio::time::sleep(delay).await;
            let given = form.get("refresh_token").cloned();
            mock.with(|m| {
                if m.refuse_refresh || given.is_none() || given != m.refresh {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
                m.refreshes += 1;
                axum::Json(issue(m)).into_response()
            })
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn me(State(mock): State<Mock>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    mock.with(|m| {
        if let Some(b) = &bearer {
            m.bearers.push(b.clone());
        }
        if bearer.is_some() && bearer == m.access {
            axum::Json(json!({"ok": true, "generation": m.issued})).into_response()
        } else {
            (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_token"}))).into_response()
        }
    })
}

/// An API that refuses every token.
async fn reject(State(mock): State<Mock>) -> Response {
    mock.with(|m| m.rejected += 1);
    (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_token"}))).into_response()
}

impl OAuthServer {
    pub async fn start() -> Self {
        let mock = Mock::default();
        mock.with(|m| m.expires_in = 3600);
        let app = axum::Router::new()
            .route("/authorize", axum::routing::get(authorize))
            .route("/token", axum::routing::post(token))
            .route("/api/me", axum::routing::get(me))
            .route("/api/reject", axum::routing::get(reject))
            .with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, mock, task }
    }

    /// This provider as a `FLOQ_OAUTH_PROVIDERS_FILE` entry.
    pub fn provider(&self, id: &str, client_auth: &str) -> Value {
        json!({"id": id, "name": "Mock provider", "authorize_url": format!("{}/authorize", self.base),
               "token_url": format!("{}/token", self.base), "scopes": ["read", "write"], "pkce": true,
               "client_auth": client_auth, "api_origins": [self.base]})
    }

    pub fn api_url(&self) -> String {
        format!("{}/api/me", self.base)
    }

    /// Calls `/api/reject` refused.
    pub fn rejected(&self) -> usize {
        self.mock.with(|m| m.rejected)
    }

    pub fn refreshes(&self) -> usize {
        self.mock.with(|m| m.refreshes)
    }

    pub fn token_requests(&self) -> usize {
        self.mock.with(|m| m.token_requests)
    }

    /// Every bearer `/api/me` was sent, in order.
    pub fn bearers(&self) -> Vec<String> {
        self.mock.with(|m| m.bearers.clone())
    }

    /// The access token `/api/me` accepts now.
    pub fn current_access(&self) -> Option<String> {
        self.mock.with(|m| m.access.clone())
    }

    pub fn current_refresh(&self) -> Option<String> {
        self.mock.with(|m| m.refresh.clone())
    }

    /// `/api/me` stops accepting the current token (the provider revoked it early).
    pub fn revoke_access(&self) {
        self.mock
            .with(|m| m.access = Some(format!("revoked-{}", Uuid::new_v4().simple())));
    }

    pub fn refuse_refreshes(&self) {
        self.mock.with(|m| m.refuse_refresh = true);
    }

    pub fn slow_refreshes(&self, delay: Duration) {
        self.mock.with(|m| m.refresh_delay = delay);
    }
}

/// Where a redirect points, as a URL on `base` (the API's real address:
/// `FLOQ_PUBLIC_URL` in tests is not the port the API listens on).
pub fn on_base(location: &str, base: &str) -> String {
    let url = url::Url::parse(location).expect("an absolute Location");
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("{base}{}{query}", url.path())
}

/// A browser for the connect flow: follows no redirect by itself and keeps
/// the `floq_oauth_browser` cookie `authorize` sets (the callback checks it).
#[derive(Clone)]
pub struct Browser {
    client: reqwest::Client,
    cookie: Arc<Mutex<Option<String>>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: Arc::default(),
        }
    }
}

impl Browser {
    /// `POST …/oauth/authorize` as the holder of `key`; keeps the cookie it sets.
    pub async fn authorize(&self, base: &str, key: &str, credential_id: &str, body: Value) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(format!("{base}/api/v1/credentials/{credential_id}/oauth/authorize"))
            .bearer_auth(key)
            .json(&body);
        if let Some(c) = self.cookie.lock().expect("cookie").clone() {
            req = req.header(header::COOKIE, c);
        }
        let resp = req.send().await.expect("authorize");
        if let Some(set) = resp.headers().get(header::SET_COOKIE).and_then(|v| v.to_str().ok()) {
            let pair = set.split(';').next().unwrap_or_default().to_string();
            *self.cookie.lock().expect("cookie") = Some(pair);
        }
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The provider's consent: its redirect back, as a URL on `base`, not yet followed.
    pub async fn consent(&self, authorize_url: &str, base: &str) -> String {
        let resp = self.client.get(authorize_url).send().await.expect("provider");
        assert_eq!(resp.status(), StatusCode::FOUND);
        on_base(
            resp.headers()[header::LOCATION.as_str()].to_str().expect("location"),
            base,
        )
    }

    /// The callback as this browser reaches it: status, `Location`, JSON body.
    pub async fn callback(&self, url: &str) -> (StatusCode, Option<String>, Value) {
        let mut req = self.client.get(url);
        if let Some(c) = self.cookie.lock().expect("cookie").clone() {
            req = req.header(header::COOKIE, c);
        }
        let resp = req.send().await.expect("callback");
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, location, body)
    }
}

/// A whole connect as one browser makes it: `authorize` (as the holder of
/// `key`), the provider's consent (redirecting back with a code), then the
/// callback. Returns the callback's status, `Location` and JSON body.
pub async fn connect(base: &str, key: &str, credential_id: &str, body: Value) -> (StatusCode, Option<String>, Value) {
    let browser = Browser::default();
    let (status, started) = browser.authorize(base, key, credential_id, body).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let back = browser
        .consent(started["authorize_url"].as_str().expect("authorize_url"), base)
        .await;
    browser.callback(&back).await
}
