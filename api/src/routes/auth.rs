//! `/api/v1/auth`: signing in and out with a browser session, who am I, and
//! moving the session to another company.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::auth::{Credential, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::ValidJson;
use crate::state::AppState;
use crate::{password, session, throttle};
use floq_shared::db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/switch-company", post(switch_company))
}

#[derive(Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct Login {
    #[validate(email)]
    email: String,
    #[validate(length(min = 1, max = 1024))]
    password: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong e-mail or password",
    )
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<Login>,
) -> ApiResult<Response> {
    let client = throttle::client_ip(peer.ip(), &headers, &state.config.trusted_proxies);
    let keys = [throttle::account_key(&body.email), throttle::client_key(&client)];
    if let Some(until) = throttle::locked_until(&state.pool, &keys).await? {
        let wait = (until - Utc::now()).num_seconds().max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed sign-ins; try again later",
        )
        .into_response();
        response.headers_mut().insert(RETRY_AFTER, wait.into());
        return Ok(response);
    }

    let found = find_user(&state, &body.email).await?;
    let (user_id, hash) = match &found {
        Some((id, hash)) => (Some(*id), hash.clone()),
        None => (None, None),
    };
    let company = match user_id {
        Some(id) => first_company(&state, id).await?,
        None => None,
    };
    // Always one hash, whether or not the account exists.
    let valid = password::verify(body.password, hash).await;
    let (Some(user_id), Some(company_id), true) = (user_id, company, valid) else {
        throttle::record_failure(&state.pool, &keys).await?;
        floq_shared::telemetry::METRICS.login_failures.inc();
        tracing::info!(client = %client, "sign-in failed");
        return Err(invalid_credentials());
    };
    throttle::clear(&state.pool, &keys[0]).await?;
    let ttl = state.config.session_ttl;
    let token = session::create(&state.pool, user_id, company_id, Utc::now() + ttl).await?;
    let mut response = Json(json!({"user_id": user_id, "company_id": company_id})).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        session::set_cookie(&token, ttl.as_secs())
            .parse()
            .expect("cookie is ASCII"),
    );
    Ok(response)
}

async fn find_user(state: &AppState, email: &str) -> Result<Option<(Uuid, Option<String>)>, sqlx::Error> {
    let mut tx = db::system_tx(&state.pool).await?;
    let row = sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}

/// The company a fresh session starts in: the user's oldest membership.
async fn first_company(state: &AppState, user_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = db::system_tx(&state.pool).await?;
    let company =
        sqlx::query_scalar("SELECT company_id FROM memberships WHERE user_id = $1 ORDER BY created_at LIMIT 1")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(company)
}

async fn logout(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    let Credential::Session(session_id) = principal.credential else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_session",
            "only a browser session can log out",
        ));
    };
    session::revoke(&state.pool, session_id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, session::clear_cookie().parse().expect("cookie is ASCII"));
    Ok(response)
}

async fn me(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Value>> {
    let mut tx = db::system_tx(&state.pool).await?;
    let (email, name): (String, String) = sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
        .bind(principal.user_id)
        .fetch_one(&mut *tx)
        .await?;
    let companies: Vec<(Uuid, String, Vec<String>)> = sqlx::query_as(
        "SELECT c.id, c.name, m.roles FROM memberships m JOIN companies c ON c.id = m.company_id
          WHERE m.user_id = $1 ORDER BY m.created_at",
    )
    .bind(principal.user_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let active = companies.iter().find(|(id, _, _)| *id == principal.company_id);
    Ok(Json(json!({
        "user": {"id": principal.user_id, "email": email, "name": name},
        "company": active.map(|(id, name, _)| json!({"id": id, "name": name})),
        "roles": principal.roles,
        "companies": companies.iter().map(|(id, name, roles)| json!({"id": id, "name": name, "roles": roles})).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct SwitchCompany {
    company_id: Uuid,
}

async fn switch_company(
    State(state): State<AppState>,
    principal: Principal,
    ValidJson(body): ValidJson<SwitchCompany>,
) -> ApiResult<Json<Value>> {
    let Credential::Session(session_id) = principal.credential else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_session",
            "an API key belongs to one company; only a browser session can switch",
        ));
    };
    if !session::switch_company(&state.pool, session_id, principal.user_id, body.company_id).await? {
        return Err(ApiError::not_found("company"));
    }
    Ok(Json(json!({"company_id": body.company_id})))
}
