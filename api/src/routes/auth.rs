//! `/api/v1/auth`: signing in and out with a browser session, who am I, and
//! moving the session to another company, and the mailed links that prove a
//! mailbox (accepting an invitation, resetting a password).

use floq_shared::db::StoreError;
use floq_shared::email::Email;
use floq_shared::ids::{CompanyId, UserId};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::auth::{Credential, Principal};
use crate::authz::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{self, ValidJson};
use crate::openapi::ErrorBody;
use crate::request::RequestMeta;
use crate::state::AppState;
use crate::{accounts, password, session, throttle};
use floq_shared::audit::{self, Entry, Outcome};
use floq_shared::{db, mail, users};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(switch_company))
        .routes(routes!(password_reset))
        .routes(routes!(accept))
}

/// Who signed in, or whose link was accepted, and in which company.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answers
struct SignedIn {
    user_id: Uuid,
    company_id: Uuid,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct Me {
    user: MeUser,
    /// The company the credential acts in.
    company: Option<MeCompany>,
    /// The caller's roles there.
    roles: Vec<String>,
    /// Every company the caller belongs to, with the roles there.
    companies: Vec<MeMembership>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct MeUser {
    id: Uuid,
    email: String,
    name: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct MeCompany {
    id: Uuid,
    name: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct MeMembership {
    id: Uuid,
    name: String,
    roles: Vec<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct SwitchedCompany {
    company_id: Uuid,
}

/// The same answer whether or not the address has an identity.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ResetRequested {
    /// `requested`
    status: String,
    message: String,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    #[validate(email, custom(function = "crate::extract::ascii_email"))]
    #[schema(format = Email)]
    email: String,
    #[validate(length(min = 1, max = 1024))]
    #[schema(min_length = 1, max_length = 1024)]
    password: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong e-mail or password",
    )
}

/// Signs in: sets the `floq_session` cookie.
#[utoipa::path(post, operation_id = "auth_login", path = "/api/v1/auth/login", tag = "auth", request_body = Login,
    responses((status = 200, description = "Signed in; `Set-Cookie: floq_session=…`", body = SignedIn),
        (status = 401, description = "Wrong e-mail or password (`invalid_credentials`)", body = ErrorBody),
        (status = 403, description = "The password was right, but every company of the account requires single sign-on (`sso_required`)", body = ErrorBody),
        (status = 429, description = "Too many failed sign-ins from this client (`too_many_attempts`); see `Retry-After`", body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    Extension(request): Extension<Arc<RequestMeta>>,
    ValidJson(body): ValidJson<Login>,
) -> ApiResult<Response> {
    let keys = throttle::keys(&body.email, &request.client_ip);
    let attempt = |company_id: Uuid, user_id: Option<Uuid>, reason: &str| {
        let mut actor = request.actor();
        actor.id = user_id;
        actor.label = Some(body.email.clone());
        Entry::new(company_id, actor, "auth.login")
            .outcome(Outcome::Failure)
            .details(json!({"reason": reason}))
    };
    if let Some(until) = throttle::locked_until(&state.pool, &keys).await? {
        state.audit.record(attempt(audit::PLATFORM, None, "throttled")).await;
        let wait = (until - Utc::now()).num_seconds().max(1) as u64;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed sign-ins; try again later",
        )
        .retry_after(wait));
    }

    let found = find_user(&state, &extract::email(&body.email)?).await?;
    let (user_id, hash) = match found {
        Some(identity) => (Some(identity.id.as_uuid()), identity.password_hash),
        None => (None, None),
    };
    let companies = match user_id {
        Some(id) => companies_of(&state, id).await?,
        None => vec![],
    };
    // Always one hash, whether or not the account exists.
    let valid = password::verify(body.password, hash).await;
    let (Some(user_id), Some(_), true) = (user_id, companies.first(), valid) else {
        throttle::record_failure(&state.pool, &keys).await?;
        floq_shared::telemetry::METRICS.login_failures.inc();
        // Each company the account belongs to sees attempts on it; the platform sees the rest.
        let owners = if companies.is_empty() {
            vec![audit::PLATFORM]
        } else {
            companies
        };
        for company_id in owners {
            state
                .audit
                .record(attempt(company_id, user_id, "invalid_credentials"))
                .await;
        }
        return Err(invalid_credentials());
    };
    throttle::clear(&state.pool, &keys).await?;
    // Companies that require single sign-on take no password (but from their break-glass admin).
    let barred = password_barred(&state, user_id).await?;
    let Some(&company_id) = companies.iter().find(|c| !barred.contains(c)) else {
        for company_id in barred {
            state
                .audit
                .record(attempt(company_id, Some(user_id), "sso_required"))
                .await;
        }
        return Err(sso_required());
    };
    let ttl = state.config.session_ttl;
    let (session_id, token) = session::create(
        &state.pool,
        user_id,
        company_id,
        Utc::now() + ttl,
        floq_shared::sso::Method::Password,
    )
    .await?;
    let mut actor = request.actor();
    actor.kind = audit::ActorType::User;
    actor.id = Some(user_id);
    actor.via = Some((audit::Via::Session, session_id));
    state
        .audit
        .record(Entry::new(company_id, actor, "auth.login").resource("session", session_id))
        .await;
    let mut response = Json(json!({"user_id": user_id, "company_id": company_id})).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        session::set_cookie(&token, ttl.as_secs())
            .parse()
            .expect("cookie is ASCII"),
    );
    Ok(response)
}

fn sso_required() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "sso_required",
        "your company requires single sign-on: sign in through your company's identity provider",
    )
}

/// The identity's companies where a password opens no session (they require SSO).
async fn password_barred(state: &AppState, user_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
    let mut tx = db::lookup_tx(&state.pool, db::Duty::SignIn, db::Lookup::Id(user_id)).await?;
    let barred = floq_shared::sso::password_barred(&mut tx, UserId(user_id)).await?;
    db::commit(tx).await?;
    Ok(barred.into_iter().map(CompanyId::as_uuid).collect())
}

/// The identity with this address, as the sign-in duty.
async fn find_user(state: &AppState, email: &Email) -> Result<Option<users::Identity>, StoreError> {
    let mut tx = db::lookup_tx(&state.pool, db::Duty::SignIn, db::Lookup::Email(email.as_str())).await?;
    let found = users::by_email(&mut tx, email).await?;
    db::commit(tx).await?;
    Ok(found)
}

/// The user's companies, oldest membership first: a fresh session starts in the first.
async fn companies_of(state: &AppState, user_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
    let mut tx = db::lookup_tx(&state.pool, db::Duty::SignIn, db::Lookup::Id(user_id)).await?;
    let companies = users::companies_joined(&mut tx, UserId(user_id)).await?;
    db::commit(tx).await?;
    Ok(companies.into_iter().map(CompanyId::as_uuid).collect())
}

/// Ends the session the request carries.
#[utoipa::path(post, operation_id = "auth_logout", path = "/api/v1/auth/logout", tag = "auth",
    security(("api_key" = []), ("session" = [])),
    responses((status = 204, description = "Signed out; the cookie is cleared"),
        (status = 400, description = "The credential is an API key, not a session (`not_a_session`)", body = ErrorBody)))]
async fn logout(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    let Credential::Session(session_id) = principal.credential else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_session",
            "only a browser session can log out",
        ));
    };
    session::revoke(&state.pool, session_id).await?;
    state
        .audit
        .record(principal.audit("auth.logout", "session", session_id))
        .await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, session::clear_cookie().parse().expect("cookie is ASCII"));
    Ok(response)
}

/// The caller, the company the credential acts in, and every company they belong to.
#[utoipa::path(get, operation_id = "auth_me", path = "/api/v1/auth/me", tag = "auth",
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "The caller", body = Me)))]
async fn me(State(state): State<AppState>, Caller(principal): Caller) -> ApiResult<Json<Value>> {
    let user_id = UserId(principal.user_id);
    let mut tx = db::lookup_tx(&state.pool, db::Duty::SignIn, db::Lookup::Id(principal.user_id)).await?;
    let profile = users::profile(&mut tx, user_id).await?;
    let companies = users::memberships_of(&mut tx, user_id).await?;
    db::commit(tx).await?;
    let active = companies
        .iter()
        .find(|m| m.company_id == CompanyId(principal.company_id));
    Ok(Json(json!({
        "user": {"id": principal.user_id, "email": profile.email, "name": profile.name},
        "company": active.map(|m| json!({"id": m.company_id, "name": m.company_name})),
        "roles": principal.roles,
        "companies": companies.iter().map(|m| json!({"id": m.company_id, "name": m.company_name, "roles": m.roles})).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct SwitchCompany {
    company_id: Uuid,
}

/// Moves the session to another company the caller belongs to.
#[utoipa::path(post, operation_id = "auth_switch_company", path = "/api/v1/auth/switch-company", tag = "auth", request_body = SwitchCompany,
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "Switched", body = SwitchedCompany),
        (status = 400, description = "The credential is an API key, not a session (`not_a_session`)", body = ErrorBody),
        (status = 403, description = "The company requires single sign-on and this session was not opened by its own connection (`sso_required`)", body = ErrorBody),
        (status = 404, description = "The caller is no member of that company", body = ErrorBody)))]
async fn switch_company(
    State(state): State<AppState>,
    Caller(principal): Caller,
    ValidJson(body): ValidJson<SwitchCompany>,
) -> ApiResult<Json<Value>> {
    let Credential::Session(session_id) = principal.credential else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_session",
            "an API key belongs to one company; only a browser session can switch",
        ));
    };
    // A company that requires single sign-on is reached only by a session its own connection opened: not by a
    // password session, nor by one opened through another company's provider.
    if password_barred(&state, principal.user_id)
        .await?
        .contains(&body.company_id)
        && session::opened_by(&state.pool, session_id).await?
            != Some((floq_shared::sso::Method::Sso, Some(body.company_id)))
    {
        return Err(sso_required());
    }
    if !session::switch_company(&state.pool, session_id, principal.user_id, body.company_id).await? {
        return Err(ApiError::not_found("company"));
    }
    // Both companies' auditors see the move: one from the side it left, one from where it arrived.
    let details = json!({"from": principal.company_id, "to": body.company_id});
    let left = principal
        .audit("auth.switch_company", "session", session_id)
        .details(details.clone());
    let mut arrived = left.clone();
    arrived.company_id = body.company_id;
    state.audit.record(left).await;
    state.audit.record(arrived).await;
    Ok(Json(json!({"company_id": body.company_id})))
}

fn mail_not_configured() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "mail_not_configured",
        "password reset sends a link by mail, and this deployment sends none: the operator must set FLOQ_SMTP_URL",
    )
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    #[validate(email, custom(function = "crate::extract::ascii_email"))]
    #[schema(format = Email)]
    email: String,
}

/// Mails a single-use reset link if an identity has this address. The answer
/// is the same either way, and the mail leaves in the background so the
/// answer's timing does not tell either.
#[utoipa::path(post, operation_id = "auth_password_reset", path = "/api/v1/auth/password-reset", tag = "auth", request_body = ResetRequest,
    responses((status = 202, description = "Requested", body = ResetRequested),
        (status = 503, description = "No mail relay is configured (`mail_not_configured`)", body = ErrorBody)))]
async fn password_reset(
    State(state): State<AppState>,
    Extension(request): Extension<Arc<RequestMeta>>,
    ValidJson(body): ValidJson<ResetRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !mail::configured(&state.config) {
        return Err(mail_not_configured());
    }
    let email = body.email.trim().to_string();
    let found = find_user(&state, &extract::email(&email)?).await?;
    if found.is_none() {
        let mut actor = request.actor();
        actor.label = Some(email.clone());
        let entry = Entry::new(audit::PLATFORM, actor, "auth.password_reset_request").details(json!({"mailed": false}));
        state.audit.record(entry).await;
    }
    if let Some(users::Identity { id, email: stored, .. }) = found {
        let user_id = id.as_uuid();
        let companies = companies_of(&state, user_id).await?;
        let token = accounts::request_reset(&state.pool, user_id, &stored, state.config.password_reset_ttl).await?;
        let mut actor = request.actor();
        actor.label = Some(email.clone());
        for company_id in owners(companies) {
            let entry = Entry::new(company_id, actor.clone(), "auth.password_reset_request")
                .resource("user", user_id)
                .details(json!({"mailed": token.is_some()}));
            state.audit.record(entry).await;
        }
        if let Some(token) = token {
            let text = format!(
                "Someone asked to reset the password of your floq account.\n\n\
                 To choose a new password, open this link:\n\n{}\n\n\
                 The link works once and expires in {} minutes. Using it signs\n\
                 out every session and revokes every API key of the account.\n\
                 If you did not ask for this, ignore this message.\n",
                accounts::link(&state.config.public_url, &token),
                state.config.password_reset_ttl.as_secs().div_ceil(60),
            );
            mail::send_detached(state.config.clone(), stored, "Reset your floq password", text);
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "requested",
            "message": "if an account has this address, a reset link has been sent to it",
        })),
    ))
}

/// The companies that see an event about an identity; the platform when none.
fn owners(companies: Vec<Uuid>) -> Vec<Uuid> {
    if companies.is_empty() {
        vec![audit::PLATFORM]
    } else {
        companies
    }
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct Accept {
    #[validate(length(min = 1, max = 256))]
    #[schema(min_length = 1, max_length = 256)]
    token: String,
    #[validate(length(min = 12, max = 1024, message = "passwords are 12 to 1024 characters"))]
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
}

/// Accepts an invitation or a password reset: the holder of the mailed link
/// proves the mailbox and chooses the password. Every session and API key
/// the identity had dies; an invitation adds the membership.
#[utoipa::path(post, operation_id = "auth_accept", path = "/api/v1/auth/accept", tag = "auth", request_body = Accept,
    responses((status = 200, description = "Accepted: the password is set", body = SignedIn),
        (status = 404, description = "The token is unknown, used or expired (`invalid_token`)", body = ErrorBody)))]
async fn accept(
    State(state): State<AppState>,
    Extension(request): Extension<Arc<RequestMeta>>,
    ValidJson(body): ValidJson<Accept>,
) -> ApiResult<Json<Value>> {
    let invalid = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_token",
            "this link is unknown, already used or expired; ask for a new one",
        )
    };
    let token = body.token.trim();
    if !accounts::is_live(&state.pool, token).await? {
        return Err(invalid());
    }
    let hash = password::hash(body.password).await.map_err(ApiError::internal)?;
    // Spending the token re-checks it: a concurrent accept may have won.
    let Some(done) = accounts::accept(&state.pool, token, hash).await? else {
        return Err(invalid());
    };
    let mut actor = request.actor();
    actor.kind = audit::ActorType::User;
    actor.id = Some(done.user_id);
    let details = json!({
        "sessions_revoked": done.sessions_revoked,
        "keys_revoked": done.keys_revoked,
        "invited_by": done.invited_by,
    });
    let action = match done.purpose {
        accounts::Purpose::Invitation => "user.invitation_accept",
        accounts::Purpose::PasswordReset => "auth.password_reset",
    };
    for company_id in owners(done.companies.clone()) {
        let entry = Entry::new(company_id, actor.clone(), action)
            .resource("user", done.user_id)
            .details(details.clone());
        state.audit.record(entry).await;
    }
    Ok(Json(json!({"user_id": done.user_id, "company_id": done.company_id})))
}
