//! `/api/v1/auth/sso`: signing in through a company's identity provider
//! (OpenID Connect, authorization code with PKCE).
//!
//! `discover` finds the connection by the e-mail's verified domain; `start`
//! stores a single-use, expiring `state` bound to the connection and, by a
//! short-lived `SameSite=Lax` cookie, to this browser, and sends the browser
//! to the provider with `nonce` and an S256 challenge; `callback` spends the
//! state, exchanges the code, validates the ID token ([`crate::oidc`]),
//! finds, links or registers the identity, and opens the same session a
//! password sign-in opens. It answers with a page that moves on to
//! `return_to` itself: that navigation starts on our own site, so the
//! `SameSite=Strict` session cookie rides along (after the provider's
//! cross-site redirect, a plain `302` would arrive without it).
//!
//! Failures are audited with their reason; the user is told only what to do.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use validator::Validate;

use crate::auth::Credential;
use crate::authz::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{self, ApiQuery, ValidJson};
use crate::oidc::{self, Refusal, Verified};
use crate::openapi::ErrorBody;
use crate::request::RequestMeta;
use crate::state::AppState;
use crate::{session, throttle};
use floq_shared::audit::{self, Entry, Outcome};
use floq_shared::db::{self, Duty, Lookup};
use floq_shared::ids::{CompanyId, UserId};
use floq_shared::sessions::{random_token, token_hash};
use floq_shared::sso::{self, Method, SignInConnection};
use floq_shared::{secrets, users};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(discover))
        .routes(routes!(start))
        .routes(routes!(callback))
        .routes(routes!(link))
}

/// The cookie that binds a sign-in in flight to the browser that started it.
const BROWSER_COOKIE: &str = "floq_sso";
const STATE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

fn browser_cookie(token: &str) -> String {
    format!(
        "{BROWSER_COOKIE}={token}; Path=/api/v1/auth/sso; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
        STATE_TTL.as_secs()
    )
}

fn clear_browser_cookie() -> String {
    format!("{BROWSER_COOKIE}=; Path=/api/v1/auth/sso; Max-Age=0; HttpOnly; Secure; SameSite=Lax")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// What every refused sign-in is told, whichever check failed.
fn sso_failed() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "sso_failed",
        "single sign-on did not complete: start again from the sign-in page; if it keeps failing, ask your administrator",
    )
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "sso_unavailable",
        "the identity provider could not be reached; try again later, or ask your administrator",
    )
}

/// A path on this site: `/…`, but not `//host` or `/\host` (which browsers
/// read as another host), no backslash or control character anywhere.
pub fn safe_return_to(raw: Option<&str>) -> ApiResult<String> {
    let r = raw.unwrap_or("/");
    let ok = r.starts_with('/')
        && !r.starts_with("//")
        && r.len() <= 2048
        && !r.chars().any(|c| c.is_control() || c == '\\');
    if ok {
        Ok(r.to_string())
    } else {
        Err(ApiError::validation(
            "return_to is invalid",
            json!([{"field": "return_to", "message": "must be a path on this site, such as `/flows`"}]),
        ))
    }
}

/// The redirect URI of one connection: the callback, naming the connection.
/// One URI per connection, because every connection of every company shares
/// the callback route: a code the provider of one sends back to another's
/// redirect URI (an identity-provider mix-up a tenant stages with a provider
/// of its own) is refused before it is exchanged anywhere.
pub fn callback_url(public_url: &str, connection_id: Uuid) -> String {
    format!(
        "{}/api/v1/auth/sso/callback?connection_id={connection_id}",
        public_url.trim_end_matches('/')
    )
}

/// The throttling bucket of single sign-on: per client address.
fn client_bucket(request: &RequestMeta) -> Vec<(String, f64)> {
    let [_, client] = throttle::keys("", &request.client_ip);
    vec![client]
}

async fn throttled(state: &AppState, request: &RequestMeta) -> ApiResult<()> {
    if let Some(until) = throttle::locked_until(&state.pool, &client_bucket(request)).await? {
        let wait = (until - Utc::now()).num_seconds().max(1) as u64;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed sign-ins; try again later",
        )
        .retry_after(wait));
    }
    Ok(())
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct Discover {
    #[validate(email, custom(function = "crate::extract::ascii_email"))]
    #[schema(format = Email)]
    email: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct Discovered {
    connection_id: Uuid,
    /// Open this in the browser (add `?return_to=/path` to come back there).
    start_url: String,
}

/// The single sign-on connection for an e-mail address, by its verified domain.
#[utoipa::path(post, operation_id = "auth_sso_discover", path = "/api/v1/auth/sso/discover", tag = "auth", request_body = Discover,
    responses((status = 200, description = "Sign in through this connection", body = Discovered),
        (status = 404, description = "No single sign-on for this address: sign in with a password (`sso_not_configured`)", body = ErrorBody)))]
async fn discover(State(state): State<AppState>, ValidJson(body): ValidJson<Discover>) -> ApiResult<Json<Value>> {
    let email = extract::email(&body.email)?;
    let domain = email
        .as_str()
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    let mut tx = db::lookup_tx(&state.pool, Duty::Sso, Lookup::Domain(&domain)).await?;
    let found = sso::connection_for_domain(&mut tx, &domain).await?;
    db::commit(tx).await?;
    let Some(id) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "sso_not_configured",
            "no single sign-on is set up for this address; sign in with your password",
        ));
    };
    let start_url = format!(
        "{}/api/v1/auth/sso/{id}/start",
        state.config.public_url.trim_end_matches('/')
    );
    Ok(Json(json!({"connection_id": id, "start_url": start_url})))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StartQuery {
    /// Where to land after signing in: a path on this site (default `/`).
    return_to: Option<String>,
}

/// A new sign-in in flight: its state row, and the URL and cookie that carry it.
async fn begin(
    state: &AppState,
    connection_id: Uuid,
    return_to: &str,
    link_user: Option<UserId>,
    company: Option<Uuid>,
) -> ApiResult<(String, String)> {
    let mut tx = db::lookup_tx(&state.pool, Duty::Sso, Lookup::Id(connection_id)).await?;
    let conn = sso::connection(&mut tx, connection_id).await?;
    db::commit(tx).await?;
    let conn = conn
        .filter(|c| company.is_none_or(|company| c.company_id.as_uuid() == company))
        .ok_or_else(|| ApiError::not_found("connection"))?;
    let endpoints = match state.oidc.endpoints(&conn).await {
        Ok(e) => e,
        Err(Refusal { code, detail }) => {
            let entry = Entry::new(conn.company_id.as_uuid(), audit::Actor::system("api"), "auth.sso.login")
                .resource("sso_connection", connection_id)
                .outcome(Outcome::Failure)
                .details(json!({"reason": code, "detail": detail, "stage": "start"}));
            state.audit.record(entry).await;
            return Err(unavailable());
        }
    };
    let (state_token, nonce, browser) = (random_token(), random_token(), random_token());
    let (verifier, challenge) = oidc::pkce();
    let state_hash = token_hash(&state_token);
    let browser_hash = token_hash(&browser);
    let mut tx = db::lookup_tx(&state.pool, Duty::Sso, Lookup::Hash(&state_hash)).await?;
    sso::insert_state(
        &mut tx,
        sso::NewState {
            state_hash: &state_hash,
            connection_id,
            company_id: conn.company_id,
            browser_hash: &browser_hash,
            nonce: &nonce,
            pkce_verifier: &verifier,
            return_to,
            link_user,
            ttl: STATE_TTL,
        },
    )
    .await?;
    db::commit(tx).await?;
    let url = oidc::authorize_url(
        &endpoints,
        &conn.client_id,
        &callback_url(&state.config.public_url, conn.id),
        &state_token,
        &nonce,
        &challenge,
    )
    .map_err(|_| unavailable())?;
    Ok((url, browser))
}

/// Sends the browser to the identity provider.
#[utoipa::path(get, operation_id = "auth_sso_start", path = "/api/v1/auth/sso/{connection_id}/start", tag = "auth",
    params(("connection_id" = Uuid, Path), StartQuery),
    responses((status = 302, description = "To the provider's authorization endpoint; `Set-Cookie: floq_sso=…` binds the sign-in to this browser"),
        (status = 403, description = "Another site started this navigation (`Sec-Fetch-Site: cross-site`: `sso_start_cross_site`)", body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this client (`too_many_attempts`)", body = ErrorBody),
        (status = 502, description = "The provider could not be reached (`sso_unavailable`)", body = ErrorBody)))]
async fn start(
    State(state): State<AppState>,
    Extension(request): Extension<Arc<RequestMeta>>,
    headers: axum::http::HeaderMap,
    extract::Id(connection_id): extract::Id,
    ApiQuery(query): ApiQuery<StartQuery>,
) -> ApiResult<Response> {
    // Login CSRF: another site must not start a sign-in in this browser (its provider would sign the victim in as
    // the attacker). A browser says where a navigation came from; one opened from floq's page, typed, or a
    // bookmark is same-origin, same-site or none, and a client that is not a browser sends no header.
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "sso_start_cross_site",
            "start signing in from floq's own sign-in page",
        ));
    }
    throttled(&state, &request).await?;
    let return_to = safe_return_to(query.return_to.as_deref())?;
    let (url, browser) = begin(&state, connection_id, &return_to, None, None).await?;
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_str(&url).map_err(ApiError::internal)?);
    headers.insert(SET_COOKIE, browser_cookie(&browser).parse().expect("cookie is ASCII"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct LinkStarted {
    /// Open this in the same browser; the provider sends it back to the callback.
    authorize_url: String,
}

/// Starts linking the caller's identity to their account at this company's
/// provider (for an address the automatic link does not cover). Sets the
/// browser-binding cookie: open `authorize_url` in the same browser.
#[utoipa::path(post, operation_id = "auth_sso_link", path = "/api/v1/auth/sso/{connection_id}/link", tag = "auth",
    params(("connection_id" = Uuid, Path)),
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "Open `authorize_url` to finish", body = LinkStarted),
        (status = 400, description = "The credential is an API key, not a session (`not_a_session`)", body = ErrorBody),
        (status = 502, description = "The provider could not be reached (`sso_unavailable`)", body = ErrorBody)))]
async fn link(
    State(state): State<AppState>,
    Caller(principal): Caller,
    extract::Id(connection_id): extract::Id,
) -> ApiResult<Response> {
    // Another company's connection is not found, whatever the credential.
    let mut tx = db::lookup_tx(&state.pool, Duty::Sso, Lookup::Id(connection_id)).await?;
    let ours = sso::connection(&mut tx, connection_id)
        .await?
        .is_some_and(|c| c.company_id.as_uuid() == principal.company_id);
    db::commit(tx).await?;
    if !ours {
        return Err(ApiError::not_found("connection"));
    }
    if !matches!(principal.credential, Credential::Session(_)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_session",
            "linking happens in a browser: sign in there and start it from a session",
        ));
    }
    let (url, browser) = begin(
        &state,
        connection_id,
        "/",
        Some(UserId(principal.user_id)),
        Some(principal.company_id),
    )
    .await?;
    state
        .audit
        .record(principal.audit("auth.sso.link_start", "sso_connection", connection_id))
        .await;
    let mut response = Json(json!({"authorize_url": url})).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, browser_cookie(&browser).parse().expect("cookie is ASCII"));
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// Set by the provider when it refused (`access_denied`, …).
    error: Option<String>,
    #[allow(dead_code)]
    error_description: Option<String>,
    #[allow(dead_code)]
    session_state: Option<String>,
    #[allow(dead_code)]
    iss: Option<String>,
    /// The connection whose redirect URI the provider sent the browser to.
    connection_id: Option<Uuid>,
}

/// Why a callback stopped: refused (audited, the user told nothing), or an outage or a bug.
enum Stop {
    Refused(Failed),
    Error(ApiError),
}

impl From<db::StoreError> for Stop {
    fn from(e: db::StoreError) -> Self {
        Stop::Error(e.into())
    }
}

/// A refused callback, with the company that sees it when known.
struct Failed {
    company_id: Option<Uuid>,
    connection_id: Option<Uuid>,
    reason: &'static str,
    detail: Option<String>,
}

fn failed(company: Option<&SignInConnection>, reason: &'static str) -> Stop {
    Stop::Refused(Failed {
        company_id: company.map(|c| c.company_id.as_uuid()),
        connection_id: company.map(|c| c.id),
        reason,
        detail: None,
    })
}

/// A refusal of the provider's answer (discovery, exchange, token).
fn rejected(company: &SignInConnection, stage: &str, r: Refusal) -> Stop {
    Stop::Refused(Failed {
        company_id: Some(company.company_id.as_uuid()),
        connection_id: Some(company.id),
        reason: r.code,
        detail: Some(format!("{stage}: {}", r.detail)),
    })
}

/// The provider sends the browser back here: finishes the sign-in.
#[utoipa::path(get, operation_id = "auth_sso_callback", path = "/api/v1/auth/sso/callback", tag = "auth",
    params(CallbackQuery),
    responses((status = 200, description = "Signed in: `Set-Cookie: floq_session=…`, and an HTML page that moves on to `return_to`", content_type = "text/html", body = crate::openapi::RawBody),
        (status = 401, description = "The sign-in did not complete (`sso_failed`); the reason is in the audit log", body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this client (`too_many_attempts`)", body = ErrorBody),
        (status = 502, description = "The provider could not be reached (`sso_unavailable`)", body = ErrorBody)))]
async fn callback(
    State(state): State<AppState>,
    Extension(request): Extension<Arc<RequestMeta>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> ApiResult<Response> {
    throttled(&state, &request).await?;
    match finish(&state, &request, &headers, &query).await {
        Ok(response) => Ok(response),
        Err(Stop::Error(e)) => Err(e),
        Err(Stop::Refused(f)) => {
            throttle::record_failure(&state.pool, &client_bucket(&request)).await?;
            floq_shared::telemetry::METRICS.login_failures.inc();
            let mut entry = Entry::new(
                f.company_id.unwrap_or(audit::PLATFORM),
                request.actor(),
                "auth.sso.login",
            )
            .outcome(Outcome::Failure)
            .details(json!({"reason": f.reason, "detail": f.detail}));
            if let Some(id) = f.connection_id {
                entry = entry.resource("sso_connection", id);
            }
            state.audit.record(entry).await;
            let mut response = sso_failed().into_response();
            response
                .headers_mut()
                .insert(SET_COOKIE, clear_browser_cookie().parse().expect("cookie is ASCII"));
            Ok(response)
        }
    }
}

async fn finish(
    state: &AppState,
    request: &RequestMeta,
    headers: &HeaderMap,
    query: &CallbackQuery,
) -> Result<Response, Stop> {
    let Some(state_token) = query.state.as_deref() else {
        return Err(failed(None, "missing_state"));
    };
    let state_hash = token_hash(state_token);
    let mut tx = db::lookup_tx(&state.pool, Duty::Sso, Lookup::Hash(&state_hash)).await?;
    let Some(flight) = sso::take_state(&mut tx, &state_hash).await? else {
        db::commit(tx).await?;
        return Err(failed(None, "unknown_state"));
    };
    db::set_lookup(&mut tx, Lookup::Id(flight.connection_id)).await?;
    let conn = sso::connection(&mut tx, flight.connection_id).await?;
    let domains = sso::verified_domains(&mut tx, flight.connection_id).await?;
    // The state is spent whatever follows.
    db::commit(tx).await?;
    let Some(conn) = conn else {
        return Err(failed(None, "connection_deleted"));
    };
    if query.connection_id != Some(conn.id) {
        // A code for another connection's redirect URI: never exchanged here.
        return Err(failed(Some(&conn), "redirect_uri_mismatch"));
    }
    if flight.replayed {
        return Err(failed(Some(&conn), "state_replayed"));
    }
    if flight.expired {
        return Err(failed(Some(&conn), "state_expired"));
    }
    let browser = cookie(headers, BROWSER_COOKIE).map(|b| token_hash(&b));
    if browser.as_deref() != Some(flight.browser_hash.as_slice()) {
        return Err(failed(Some(&conn), "browser_binding_mismatch"));
    }
    if let Some(error) = &query.error {
        return Err(Stop::Refused(Failed {
            company_id: Some(conn.company_id.as_uuid()),
            connection_id: Some(conn.id),
            reason: "provider_error",
            detail: Some(error.chars().take(200).collect()),
        }));
    }
    let Some(code) = query.code.as_deref() else {
        return Err(failed(Some(&conn), "missing_code"));
    };
    let id_text = conn.id.to_string();
    let secret = state
        .keyring
        .decrypt(
            &conn.client_secret,
            secrets::sso_binding(conn.company_id.as_uuid(), &id_text),
        )
        .map_err(|e| Stop::Error(ApiError::internal(e)))?;
    let secret = std::str::from_utf8(&secret).map_err(|e| Stop::Error(ApiError::internal(e)))?;
    let endpoints = state
        .oidc
        .endpoints(&conn)
        .await
        .map_err(|r| rejected(&conn, "discovery", r))?;
    let id_token = state
        .oidc
        .exchange(
            &conn,
            &endpoints,
            secret,
            code,
            &callback_url(&state.config.public_url, conn.id),
            &flight.pkce_verifier,
        )
        .await
        .map_err(|r| rejected(&conn, "token exchange", r))?;
    let verified = state
        .oidc
        .verify(&conn, &endpoints, &id_token, &flight.nonce)
        .await
        .map_err(|r| rejected(&conn, "id token", r))?;
    let user_id = resolve(state, request, &conn, &domains, &verified, flight.link_user).await?;

    let company_id = conn.company_id.as_uuid();
    let ttl = state.config.session_ttl;
    let (session_id, token) = session::create(
        &state.pool,
        user_id.as_uuid(),
        company_id,
        Utc::now() + ttl,
        Method::Sso,
    )
    .await?;
    let mut actor = request.actor();
    actor.kind = audit::ActorType::User;
    actor.id = Some(user_id.as_uuid());
    actor.via = Some((audit::Via::Session, session_id));
    let entry = Entry::new(company_id, actor, "auth.sso.login")
        .resource("session", session_id)
        .details(json!({"connection_id": conn.id, "issuer": verified.issuer, "linked": flight.link_user.is_some()}));
    state.audit.record(entry).await;
    let _ = throttle::clear(&state.pool, &client_bucket(request)).await;

    let target = html_escape(&flight.return_to);
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={target}\">\
         <title>Signed in</title></head><body><p>Signed in. <a href=\"{target}\">Continue</a></p></body></html>"
    );
    let mut response = page.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The callback's URL holds the code: never send it on as a Referer.
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.append(
        SET_COOKIE,
        session::set_cookie(&token, ttl.as_secs())
            .parse()
            .expect("cookie is ASCII"),
    );
    headers.append(SET_COOKIE, clear_browser_cookie().parse().expect("cookie is ASCII"));
    Ok(response)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The user behind a validated token: the identity it is bound to, or one
/// linked or registered now.
async fn resolve(
    state: &AppState,
    request: &RequestMeta,
    conn: &SignInConnection,
    domains: &[String],
    v: &Verified,
    link_user: Option<UserId>,
) -> Result<UserId, Stop> {
    let refuse = |reason: &'static str| Err(failed(Some(conn), reason));
    let company_id = conn.company_id;
    let subject_hash = sso::subject_hash(&v.issuer, &v.subject);
    let email = v.email.clone().unwrap_or_default();
    let domain_verified = email
        .rsplit_once('@')
        .is_some_and(|(_, d)| domains.iter().any(|ours| ours.eq_ignore_ascii_case(d)));
    let mut tx = db::lookup_tx(&state.pool, Duty::Sso, Lookup::Hash(&subject_hash)).await?;
    let bound = sso::identity(&mut tx, &subject_hash).await?;
    let audit_entry = |action: &str, user: UserId, details: Value| {
        let mut actor = request.actor();
        actor.kind = audit::ActorType::User;
        actor.id = Some(user.as_uuid());
        Entry::new(company_id.as_uuid(), actor, action)
            .resource("user", user)
            .details(details)
    };

    if let Some(link_user) = link_user {
        match bound {
            Some((user, _)) if user != link_user => {
                db::commit(tx).await?;
                return refuse("subject_bound_to_another_user");
            }
            Some(_) => {}
            None => {
                let new = sso::NewIdentity {
                    subject_hash: &subject_hash,
                    issuer: &v.issuer,
                    subject: &v.subject,
                    user_id: link_user,
                    connection_id: conn.id,
                    email: &email,
                };
                if !sso::insert_identity(&mut tx, new).await? {
                    db::commit(tx).await?;
                    return refuse("subject_bound_concurrently");
                }
            }
        }
        db::commit(tx).await?;
        let entry = audit_entry(
            "auth.sso.link",
            link_user,
            json!({"connection_id": conn.id, "explicit": true}),
        );
        state.audit.record(entry).await;
        return ensure_member(state, conn, link_user, true).await;
    }

    if let Some((user, _)) = bound {
        sso::touch_identity(&mut tx, &subject_hash, &email, conn.id).await?;
        db::commit(tx).await?;
        return ensure_member(state, conn, user, domain_verified).await;
    }
    db::commit(tx).await?;

    // A subject seen for the first time.
    if email.is_empty() {
        return refuse("no_email_claim");
    }
    if !domain_verified {
        return refuse("email_domain_not_verified_for_connection");
    }
    let address = floq_shared::email::Email::parse(&email).map_err(|_| failed(Some(conn), "email_not_ascii"))?;
    let mut tx = db::lookup_tx(&state.pool, Duty::SignIn, Lookup::Email(address.as_str())).await?;
    let existing = users::by_email(&mut tx, &address).await?;
    db::commit(tx).await?;

    if let Some(existing) = existing {
        if !v.email_verified {
            return refuse("email_not_verified_by_provider");
        }
        let user = existing.id;
        let mut tx = db::lookup_tx(&state.pool, Duty::Sso, Lookup::Hash(&subject_hash)).await?;
        let new = sso::NewIdentity {
            subject_hash: &subject_hash,
            issuer: &v.issuer,
            subject: &v.subject,
            user_id: user,
            connection_id: conn.id,
            email: &email,
        };
        if !sso::insert_identity(&mut tx, new).await? {
            db::commit(tx).await?;
            return refuse("subject_bound_concurrently");
        }
        db::set_lookup(&mut tx, Lookup::Id(user.as_uuid())).await?;
        let ended = sso::end_password_sessions(&mut tx, user).await?;
        db::commit(tx).await?;
        let entry = audit_entry(
            "auth.sso.link",
            user,
            json!({"connection_id": conn.id, "explicit": false, "sessions_ended": ended}),
        );
        state.audit.record(entry).await;
        return ensure_member(state, conn, user, true).await;
    }

    // Auto-registration: a new identity and its membership, bound in one commit.
    let mut tx = db::tenant_tx(&state.pool, company_id.as_uuid()).await?;
    let name = v.name.clone().unwrap_or_default();
    let name: String = name.chars().take(200).collect();
    let new = users::NewIdentity {
        email: &address,
        name: &name,
        password_hash: None,
        owner: Some(company_id),
    };
    let user = match users::create(&mut tx, new).await {
        Ok(user) => user,
        // Registered concurrently (the unique address): the next sign-in links it.
        Err(e) if matches!(e.fault(), db::Fault::Conflict { .. }) => return refuse("registered_concurrently"),
        Err(e) => return Err(e.into()),
    };
    users::add_member(&mut tx, company_id, user, &[conn.default_role]).await?;
    db::become_duty(&mut tx, Duty::Sso, Lookup::Hash(&subject_hash)).await?;
    let new = sso::NewIdentity {
        subject_hash: &subject_hash,
        issuer: &v.issuer,
        subject: &v.subject,
        user_id: user,
        connection_id: conn.id,
        email: &email,
    };
    if !sso::insert_identity(&mut tx, new).await? {
        return refuse("subject_bound_concurrently");
    }
    db::commit(tx).await?;
    let entry = audit_entry(
        "auth.sso.register",
        user,
        json!({"connection_id": conn.id, "email": email, "roles": [conn.default_role]}),
    );
    state.audit.record(entry).await;
    Ok(user)
}

/// The user belongs to the connection's company, or joins it with the
/// connection's default role when its address is in a verified domain.
async fn ensure_member(
    state: &AppState,
    conn: &SignInConnection,
    user: UserId,
    may_join: bool,
) -> Result<UserId, Stop> {
    let company_id: CompanyId = conn.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id.as_uuid()).await?;
    if users::is_member(&mut tx, company_id, user).await? {
        db::commit(tx).await?;
        return Ok(user);
    }
    if !may_join {
        db::commit(tx).await?;
        return Err(failed(Some(conn), "not_a_member"));
    }
    users::join(&mut tx, company_id, user, &[conn.default_role]).await?;
    db::commit(tx).await?;
    let entry = Entry::new(company_id.as_uuid(), audit::Actor::system("api"), "auth.sso.join")
        .resource("user", user)
        .details(json!({"connection_id": conn.id, "roles": [conn.default_role]}));
    state.audit.record(entry).await;
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_a_path_on_this_site_only() {
        for ok in [None, Some("/"), Some("/flows?x=1#y"), Some("/a/b")] {
            assert!(safe_return_to(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "//evil.test",
            "/\\evil.test",
            "https://evil.test/",
            "evil.test",
            "/a\\b",
            "/a\nb",
            "",
            "javascript:alert(1)",
        ] {
            assert!(safe_return_to(Some(bad)).is_err(), "{bad}");
        }
    }
}
