//! OAuth2 integration links: the provider registry, starting a connect
//! (`POST /api/v1/credentials/{id}/oauth/authorize`) and finishing it
//! (`GET /api/v1/oauth/callback`).
//!
//! The callback is the one place the API decrypts a credential's secret: the
//! client secret, for the code exchange alone (docs/secrets.md). It is
//! reached by the browser coming back from the provider, cross-site, so the
//! `SameSite=Strict` session cookie is not sent: the single-use `state`
//! (256 random bits, stored as a hash, bound to the user, company and
//! credential that asked, ten minutes) is what authenticates it, together
//! with a `SameSite=Lax` cookie set by `authorize` that binds it to the
//! browser that asked (so a connect started by someone else cannot be
//! finished in a victim's browser with the victim's account at the
//! provider). Tokens are encrypted here as received and never opened by the
//! API again.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use validator::Validate;
use zeroize::Zeroizing;

use crate::access::{self, Level};
use crate::audit;
use crate::authz::{Authorized, IntegrationManage, IntegrationRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Id, ValidJson};
use crate::openapi::ErrorBody;
use crate::request::RequestMeta;
use crate::state::AppState;
use floq_shared::audit::{Actor, ActorType, Entry, Outcome};
use floq_shared::ids::{CompanyId, CredentialId, UserId};
use floq_shared::oauth::{self, links, states, token};
use floq_shared::{credentials, db};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(providers))
        .routes(routes!(authorize))
        .routes(routes!(callback))
}

/// What a read of an `oauth2` credential shows of its link; never a token.
#[derive(ToSchema)]
#[schema(as = OAuthLinkStatus)]
#[allow(dead_code)] // documentation of `links::Status`
pub struct LinkStatusDoc {
    /// Whether a connect completed (tokens are stored).
    connected: bool,
    /// When the stored access token expires (the worker refreshes it before).
    expires_at: Option<DateTime<Utc>>,
    /// The scopes the provider granted.
    scopes: Vec<String>,
    /// The provider refused the refresh token: connect again.
    needs_reconnect: bool,
}

/// A registered provider.
#[derive(ToSchema)]
#[schema(as = OAuthProvider)]
#[allow(dead_code)] // documentation of `oauth::Provider`
struct ProviderDoc {
    id: String,
    name: String,
    authorize_url: String,
    token_url: String,
    /// Requested when the credential names none.
    scopes: Vec<String>,
    /// Whether authorization requests carry a PKCE `S256` challenge.
    pkce: bool,
    /// `post` or `basic`.
    client_auth: String,
    /// The only origins its access tokens are sent to; empty: the credential's `allowed_origins`.
    api_origins: Vec<String>,
    authorize_params: std::collections::BTreeMap<String, String>,
    /// `builtin` or `operator` (`FLOQ_OAUTH_PROVIDERS_FILE`).
    source: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ProviderList {
    items: Vec<ProviderDoc>,
}

#[utoipa::path(get, operation_id = "oauth_providers", path = "/api/v1/oauth/providers", tag = "credentials",
    security(("api_key" = ["integration:read"]), ("session" = ["integration:read"])),
    responses((status = 200, description = "The OAuth2 providers an `oauth2` credential may name", body = ProviderList)))]
async fn providers(State(state): State<AppState>, _auth: Authorized<IntegrationRead>) -> Json<Value> {
    Json(json!({"items": state.oauth.registry.all()}))
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct AuthorizeBody {
    /// A path on this site to send the browser to once connected (`/settings/credentials`);
    /// absent: the callback answers JSON.
    #[validate(length(min = 1, max = 2000))]
    return_to: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Authorization {
    /// Send the user's browser here; the provider sends it back to `/api/v1/oauth/callback`.
    authorize_url: String,
    /// When this request expires (single use, ten minutes).
    expires_at: DateTime<Utc>,
}

fn not_oauth2() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "not_oauth2",
        "only an `oauth2` credential can be connected",
    )
}

/// Starts connecting an `oauth2` credential: answers the provider's
/// authorization URL (PKCE `S256` where the provider supports it) with a
/// single-use `state` bound to the caller, company and credential.
#[utoipa::path(post, operation_id = "credentials_oauth_authorize", path = "/api/v1/credentials/{credential_id}/oauth/authorize",
    tag = "credentials", params(("credential_id" = Uuid, Path)), request_body = AuthorizeBody,
    security(("api_key" = ["integration:manage"]), ("session" = ["integration:manage"])),
    responses((status = 200, description = "Where to send the browser; sets the `floq_oauth_browser` cookie the callback checks", body = Authorization),
        (status = 403, description = "A grant below `edit`, or the role lacks `integration:manage`", body = ErrorBody),
        (status = 422, description = "Not an `oauth2` credential (`not_oauth2`), or `return_to` is not a path of this site", body = ErrorBody)))]
async fn authorize(
    State(state): State<AppState>,
    auth: Authorized<IntegrationManage>,
    Id(id): Id,
    headers: HeaderMap,
    ValidJson(body): ValidJson<AuthorizeBody>,
) -> ApiResult<([(header::HeaderName, HeaderValue); 1], Json<Authorization>)> {
    if let Some(r) = &body.return_to
        && !(oauth::relative_return_to(r)
            && crate::redirects::RedirectOrigins::default()
                .check("location", r)
                .is_ok())
    {
        return Err(ApiError::validation(
            "return_to is invalid",
            json!([{"field": "return_to", "message": "must be a path on this site, like /settings"}]),
        ));
    }
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_integration(&mut tx, &auth.principal, id, Level::Edit).await?;
    let credential = super::credentials::fetch(&mut tx, company_id, id).await?;
    if credential.kind != "oauth2" {
        return Err(not_oauth2());
    }
    let (client, _) = credentials::oauth_client(&mut tx, CompanyId(company_id), CredentialId(id))
        .await?
        .ok_or_else(not_oauth2)?;
    let provider = state.oauth.registry.get(&client.provider).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "provider_unknown",
            "the credential's provider is no longer registered (FLOQ_OAUTH_PROVIDERS_FILE)",
        )
    })?;
    // One binding per browser, reused by its concurrent connects.
    let browser = browser_cookie(&headers)
        .filter(|v| oauth::browser_binding_ok(v))
        .unwrap_or_else(oauth::new_browser_binding);
    let browser_hash = oauth::state_hash(&browser);
    let state_value = Zeroizing::new(oauth::new_state(company_id));
    let hash = oauth::state_hash(&state_value);
    let (verifier, challenge) = oauth::pkce_pair();
    let mut url = url::Url::parse(&provider.authorize_url).map_err(ApiError::internal)?;
    let scopes = if client.scopes.is_empty() {
        provider.scopes.join(" ")
    } else {
        client.scopes.join(" ")
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &oauth::redirect_uri(&state.config.public_url))
            .append_pair("state", &state_value);
        if !scopes.is_empty() {
            q.append_pair("scope", &scopes);
        }
        if provider.pkce {
            q.append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
        }
        for (k, v) in &provider.authorize_params {
            q.append_pair(k, v);
        }
    }
    let sealed_verifier = provider.pkce.then(|| {
        state.keyring.encrypt(
            verifier.as_bytes(),
            oauth::verifier_binding(company_id, &hex::encode(&hash)),
        )
    });
    let new = states::NewState {
        hash: &hash,
        credential_id: CredentialId(id),
        user_id: UserId(auth.principal.user_id),
        browser_hash: &browser_hash,
        code_verifier: sealed_verifier,
        return_to: body.return_to.as_deref(),
        ttl: oauth::STATE_TTL,
    };
    states::create(&mut tx, CompanyId(company_id), new).await?;
    let entry = auth
        .principal
        .audit("credential.oauth_authorize", "credential", id)
        .details(json!({"provider": provider.id}));
    audit::record(&mut tx, &[entry]).await?;
    db::commit(tx).await?;
    // Lax: sent on the provider's top-level redirect back; only to the callback.
    let cookie = format!(
        "{}={browser}; Path=/api/v1/oauth/callback; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
        oauth::BROWSER_COOKIE,
        oauth::STATE_TTL.as_secs()
    );
    Ok((
        [(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
        )],
        Json(Authorization {
            authorize_url: url.to_string(),
            expires_at: Utc::now() + oauth::STATE_TTL,
        }),
    ))
}

fn browser_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == oauth::BROWSER_COOKIE)
        .map(|(_, value)| value.to_string())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // error_description is documented, never echoed
struct CallbackQuery {
    /// The authorization code.
    code: Option<String>,
    state: Option<String>,
    /// Set instead of `code` when the user or provider refused (`access_denied`).
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Connected {
    credential_id: Uuid,
    #[schema(value_type = LinkStatusDoc)]
    oauth: links::Status,
}

fn bad_state() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "oauth_state_invalid",
        "this connect request is unknown, used already or expired: start connecting again",
    )
}

/// A user entry for the callback, whose caller is named by the `state`, not a session.
fn user_entry(company_id: Uuid, user_id: Uuid, meta: &RequestMeta, action: &str, credential_id: Uuid) -> Entry {
    let actor = Actor {
        kind: ActorType::User,
        id: Some(user_id),
        label: None,
        via: None,
        client_ip: Some(meta.client_ip.to_string()),
        request_id: Some(meta.request_id.clone()),
    };
    Entry::new(company_id, actor, action).resource("credential", credential_id)
}

/// Finishes a connect: spends the `state`, exchanges the code at the
/// provider's token endpoint and stores the tokens encrypted; then sends the
/// browser to the `return_to` of the request, or answers JSON.
#[utoipa::path(get, operation_id = "oauth_callback", path = "/api/v1/oauth/callback", tag = "credentials",
    params(CallbackQuery),
    responses((status = 200, description = "Connected (no `return_to` was given)", body = Connected),
        (status = 303, description = "Connected: on to the request's `return_to` (the body says the same as a 200)", body = Connected,
            headers(("Location" = String, description = "The `return_to` of the request: a path on this site"))),
        (status = 400, description = "The state is unknown, spent or expired (`oauth_state_invalid`), this is not the browser that started the connect (`oauth_browser_mismatch`), or the provider refused (`oauth_denied`)", body = ErrorBody),
        (status = 502, description = "The provider refused the code or could not be reached (`oauth_exchange_failed`)", body = ErrorBody)))]
async fn callback(
    State(state): State<AppState>,
    Extension(meta): Extension<Arc<RequestMeta>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CallbackQuery>,
) -> ApiResult<Response> {
    let raw_state = q.state.as_deref().ok_or_else(bad_state)?;
    let company_id = oauth::state_company(raw_state).ok_or_else(bad_state)?;
    let hash = oauth::state_hash(raw_state);
    // Spent before anything else, so it cannot be replayed whatever happens next.
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let spent = states::take(&mut tx, CompanyId(company_id), &hash).await?;
    let Some(spent) = spent.filter(|s| s.live) else {
        db::commit(tx).await?;
        return Err(bad_state());
    };
    let (credential_id, user_id) = (spent.credential_id.as_uuid(), spent.user_id.as_uuid());
    let fail = |reason: &str| {
        user_entry(company_id, user_id, &meta, "credential.oauth_connect", credential_id)
            .outcome(Outcome::Failure)
            .details(json!({"reason": reason}))
    };
    let same_browser = browser_cookie(&headers).is_some_and(|b| oauth::state_hash(&b) == spent.browser_hash);
    if !same_browser {
        audit::record(&mut tx, &[fail("browser_mismatch")]).await?;
        db::commit(tx).await?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "oauth_browser_mismatch",
            "finish connecting in the browser that started it: start connecting again there",
        ));
    }
    if let Some(error) = &q.error {
        let reason = if error.len() <= 64 && error.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            error.as_str()
        } else {
            "unknown_error"
        };
        audit::record(&mut tx, &[fail(reason)]).await?;
        db::commit(tx).await?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "oauth_denied",
            "the provider did not grant access: start connecting again",
        )
        .with_details(json!({"provider_error": reason})));
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        ApiError::validation(
            "the callback is missing its code",
            json!([{"field": "code", "message": "is required"}]),
        )
    })?;
    let client = credentials::oauth_client(&mut tx, CompanyId(company_id), spent.credential_id).await?;
    let sealed = credentials::oauth_sealed(&mut tx, CompanyId(company_id), spent.credential_id).await?;
    let (Some((client, _)), Some(sealed)) = (client, sealed) else {
        // The credential went (or changed type) while the user was at the provider.
        db::commit(tx).await?;
        return Err(bad_state());
    };
    db::commit(tx).await?;
    let provider = state.oauth.registry.get(&client.provider).ok_or_else(bad_state)?;
    let id_text = credential_id.to_string();
    // The documented exception: the client secret is opened here, for this exchange only.
    let data = state
        .keyring
        .decrypt(&sealed, floq_shared::secrets::credential_binding(company_id, &id_text))
        .map_err(|_| ApiError::internal(anyhow::anyhow!("an oauth2 credential could not be opened")))?;
    let fields: Value = serde_json::from_slice(&data).map_err(ApiError::internal)?;
    let secret = Zeroizing::new(
        fields
            .get("client_secret")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    );
    drop(fields);
    drop(data);
    let verifier = match &spent.code_verifier {
        Some(v) => Some(
            state
                .keyring
                .decrypt(v, oauth::verifier_binding(company_id, &hex::encode(&hash)))
                .map_err(|_| ApiError::internal(anyhow::anyhow!("a PKCE verifier could not be opened")))?,
        ),
        None => None,
    };
    let verifier_text = verifier
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .map(Zeroizing::new);
    let redirect_uri = oauth::redirect_uri(&state.config.public_url);
    let exchanged = token::request(
        &state.oauth.http,
        &state.oauth.egress,
        provider,
        token::Client {
            id: &client.client_id,
            secret: &secret,
        },
        token::Grant::Code {
            code,
            redirect_uri: &redirect_uri,
            verifier: verifier_text.as_deref().map(String::as_str),
        },
    )
    .await;
    drop(secret);
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let tokens = match exchanged {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(credential.id = %credential_id, error = %e, "an OAuth code exchange failed");
            let reason = match &e {
                token::TokenError::InvalidGrant(c) | token::TokenError::Refused(c) => c.clone(),
                token::TokenError::Egress(_) => "egress_denied".into(),
                token::TokenError::Transport => "unreachable".into(),
                token::TokenError::Malformed => "malformed_response".into(),
            };
            audit::record(&mut tx, &[fail(&reason)]).await?;
            db::commit(tx).await?;
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "oauth_exchange_failed",
                "the provider did not accept the authorization: start connecting again",
            )
            .with_details(json!({"reason": reason})));
        }
    };
    let key_id = state.keyring.primary_id();
    let sealed = links::SealedTokens {
        access_token: state.keyring.encrypt(
            tokens.access_token.as_bytes(),
            oauth::access_token_binding(company_id, &id_text),
        ),
        refresh_token: tokens.refresh_token.as_ref().map(|r| {
            state
                .keyring
                .encrypt(r.as_bytes(), oauth::refresh_token_binding(company_id, &id_text))
        }),
        key_id,
        expires_at: tokens
            .expires_in
            .map(|s| Utc::now() + chrono::Duration::seconds(s.max(0))),
        scopes: tokens.scopes.clone().unwrap_or_else(|| {
            if client.scopes.is_empty() {
                provider.scopes.clone()
            } else {
                client.scopes.clone()
            }
        }),
    };
    let status = links::connect(
        &mut tx,
        CompanyId(company_id),
        spent.credential_id,
        &provider.id,
        sealed,
    )
    .await?;
    let entry = user_entry(company_id, user_id, &meta, "credential.oauth_connect", credential_id).details(json!({
        "provider": provider.id, "scopes": status.scopes, "refresh_token": tokens.refresh_token.is_some(),
    }));
    audit::record(&mut tx, &[entry]).await?;
    db::commit(tx).await?;
    let connected = Json(Connected {
        credential_id,
        oauth: status,
    });
    Ok(match spent.return_to {
        Some(to) => (
            StatusCode::SEE_OTHER,
            [(
                header::LOCATION,
                HeaderValue::from_str(&to).map_err(ApiError::internal)?,
            )],
            connected,
        )
            .into_response(),
        None => connected.into_response(),
    })
}
