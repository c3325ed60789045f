//! `/api/v1/credentials`: integrations' secrets. Data is checked per type,
//! encrypted here, and never returned: reads show the type, the field names
//! and a masked hint. Managing needs `integration:manage` (and, for
//! non-admins, `edit` on the credential); seeing one needs a grant too.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::access::{self, Level};
use crate::audit;
use crate::authz::{Authorized, IntegrationManage, IntegrationRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ByName, Id, Page, ValidJson};
use crate::openapi::{AnyJson, ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::access::{Entity, Viewer};
use floq_shared::credentials::{self, Change, Credential, NewCredential, Sealed};
use floq_shared::ids::{CompanyId, CredentialId, UserId};
use floq_shared::{db, secrets};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
}

/// All a read ever shows of a credential.
#[derive(ToSchema)]
#[schema(as = Credential)]
#[allow(dead_code)] // documentation of `credentials::Credential`, which the store returns
struct CredentialDoc {
    id: Uuid,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    fields: Vec<String>,
    hint: String,
    /// Where its secrets may be sent; empty: anywhere the egress policy allows.
    allowed_origins: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// `oauth2` credentials only: the link's state; never a token.
    oauth: Option<crate::routes::oauth::LinkStatusDoc>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateCredential {
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// `http_bearer`, `http_basic`, `api_key_header`, `api_key_query`, `postgres`, … (docs/secrets.md).
    #[serde(rename = "type")]
    kind: String,
    /// The secret fields the type needs; encrypted, never returned.
    #[schema(value_type = AnyJson)]
    data: Value,
    #[serde(default)]
    allowed_origins: Vec<String>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateCredential {
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(value_type = AnyJson, required = false)]
    data: Option<Value>,
    allowed_origins: Option<Vec<String>>,
}

fn checked(state: &AppState, kind: &str, data: &Value) -> ApiResult<()> {
    let mut errors = secrets::check(kind, data);
    // Only a registered provider: the credential names it and can carry no endpoint of its own.
    if kind == "oauth2"
        && errors.is_empty()
        && let Some(provider) = data.get("provider").and_then(Value::as_str)
        && state.oauth.registry.get(provider).is_none()
    {
        errors.push((
            "data.provider".into(),
            "is not a registered OAuth provider (GET /api/v1/oauth/providers)".into(),
        ));
    }
    if errors.is_empty() {
        return Ok(());
    }
    let details: Vec<Value> = errors
        .into_iter()
        .map(|(field, message)| json!({"field": field, "message": message}))
        .collect();
    Err(ApiError::validation("the credential is invalid", json!(details)))
}

/// Normalized `allowed_origins`, or a validation error naming each bad entry.
pub fn origins(raw: &[String]) -> ApiResult<Vec<String>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    if raw.len() > 50 {
        errors.push(json!({"field": "allowed_origins", "message": "at most 50 origins"}));
    }
    for (i, o) in raw.iter().enumerate() {
        match floq_shared::egress::origin::parse(o) {
            Ok(o) => out.push(o),
            Err(message) => errors.push(json!({"field": format!("allowed_origins[{i}]"), "message": message})),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::validation("allowed_origins is invalid", json!(errors)))
    }
}

fn fields(data: &Value) -> Vec<String> {
    data.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn name_taken() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "name_taken", "a credential with this name exists")
}

page!(CredentialPage, CredentialDoc);

// By name (unique per company), then id; served by `credentials (company_id, name)`.
#[utoipa::path(get, operation_id = "credentials_list", path = "/api/v1/credentials", tag = "credentials", params(PageParams),
    security(("api_key" = ["integration:read"]), ("session" = ["integration:read"])),
    responses((status = 200, description = "The credentials the caller may see, by name; never their secrets", body = CredentialPage)))]
async fn list(
    State(state): State<AppState>,
    auth: Authorized<IntegrationRead>,
    page: Page<ByName>,
) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let viewer = Viewer {
        user_id: UserId(auth.principal.user_id),
        admin: auth.principal.is_admin(),
    };
    let after = (page.after.0.as_str(), CredentialId(page.after.1));
    let mut items = credentials::page(&mut tx, CompanyId(company_id), viewer, after, page.limit).await?;
    credentials::with_links(&mut tx, CompanyId(company_id), &mut items).await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(items, |c| ByName(c.name.clone(), c.id.as_uuid()))))
}

pub(crate) async fn fetch(tx: &mut db::Tx, company_id: Uuid, id: Uuid) -> ApiResult<Credential> {
    let mut found = credentials::find(tx, CompanyId(company_id), CredentialId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("credential"))?;
    credentials::with_links(tx, CompanyId(company_id), std::slice::from_mut(&mut found)).await?;
    Ok(found)
}

#[utoipa::path(get, operation_id = "credentials_show", path = "/api/v1/credentials/{credential_id}", tag = "credentials", params(("credential_id" = Uuid, Path)),
    security(("api_key" = ["integration:read"]), ("session" = ["integration:read"])),
    responses((status = 200, description = "The credential: type, field names and a masked hint", body = CredentialDoc)))]
async fn show(
    State(state): State<AppState>,
    auth: Authorized<IntegrationRead>,
    Id(id): Id,
) -> ApiResult<Json<Credential>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_integration(&mut tx, &auth.principal, id, Level::View).await?;
    let credential = fetch(&mut tx, auth.principal.company_id, id).await?;
    db::commit(tx).await?;
    Ok(Json(credential))
}

/// Stores an integration's secret, encrypted; its creator gets `edit` on it.
#[utoipa::path(post, operation_id = "credentials_create", path = "/api/v1/credentials", tag = "credentials", request_body = CreateCredential,
    security(("api_key" = ["integration:manage"]), ("session" = ["integration:manage"])),
    responses((status = 201, description = "Created", body = CredentialDoc),
        (status = 409, description = "The name is taken (`name_taken`)", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<IntegrationManage>,
    ValidJson(body): ValidJson<CreateCredential>,
) -> ApiResult<(StatusCode, Json<Credential>)> {
    checked(&state, &body.kind, &body.data)?;
    let allowed_origins = origins(&body.allowed_origins)?;
    let company_id = auth.principal.company_id;
    let id = Uuid::now_v7();
    let id_text = id.to_string();
    let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(&body.data).map_err(ApiError::internal)?);
    let sealed = state
        .keyring
        .encrypt(&plaintext, secrets::credential_binding(company_id, &id_text));
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let new = NewCredential {
        id: CredentialId(id),
        name: body.name.trim(),
        kind: &body.kind,
        sealed: Sealed {
            data: sealed,
            key_id: state.keyring.primary_id(),
            fields: fields(&body.data),
            hint: secrets::hint(&body.kind, &body.data),
        },
        created_by: UserId(auth.principal.user_id),
        allowed_origins,
        oauth_client: (body.kind == "oauth2").then(|| credentials::OAuthClient::of_data(&body.data)),
    };
    let mut credential = credentials::create(&mut tx, CompanyId(company_id), new)
        .await?
        .ok_or_else(name_taken)?;
    credentials::with_links(&mut tx, CompanyId(company_id), std::slice::from_mut(&mut credential)).await?;
    let entry = auth.principal.audit("credential.create", "credential", id);
    audit::record(&mut tx, &[entry.change(None::<&Credential>, Some(&credential))]).await?;
    access::grant_creator(&mut tx, &auth.principal, "integration", id).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(credential)))
}

#[utoipa::path(put, operation_id = "credentials_update", path = "/api/v1/credentials/{credential_id}", tag = "credentials", params(("credential_id" = Uuid, Path)),
    request_body = UpdateCredential,
    security(("api_key" = ["integration:manage"]), ("session" = ["integration:manage"])),
    responses((status = 200, description = "Updated", body = CredentialDoc),
        (status = 403, description = "A grant below `edit`, or the role lacks `integration:manage`", body = ErrorBody),
        (status = 409, description = "The name is taken (`name_taken`)", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    auth: Authorized<IntegrationManage>,
    Id(id): Id,
    ValidJson(body): ValidJson<UpdateCredential>,
) -> ApiResult<Json<Credential>> {
    let company_id = auth.principal.company_id;
    let allowed_origins = body.allowed_origins.as_deref().map(origins).transpose()?;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_integration(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, company_id, id).await?;
    let sealed = match &body.data {
        Some(data) => {
            checked(&state, &before.kind, data)?;
            let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(data).map_err(ApiError::internal)?);
            let id_text = id.to_string();
            let sealed = state
                .keyring
                .encrypt(&plaintext, secrets::credential_binding(company_id, &id_text));
            Some(Sealed {
                data: sealed,
                key_id: state.keyring.primary_id(),
                fields: fields(data),
                hint: secrets::hint(&before.kind, data),
            })
        }
        None => None,
    };
    let name = body.name.as_deref().map(str::trim);
    if let Some(name) = name
        && credentials::name_taken(&mut tx, CompanyId(company_id), name, CredentialId(id)).await?
    {
        return Err(name_taken());
    }
    let oauth_client = body
        .data
        .as_ref()
        .filter(|_| before.kind == "oauth2")
        .map(credentials::OAuthClient::of_data);
    let change = Change {
        name,
        sealed,
        allowed_origins,
        oauth_client,
    };
    let mut after = credentials::update(&mut tx, CompanyId(company_id), CredentialId(id), change)
        .await?
        .ok_or_else(|| ApiError::not_found("credential"))?;
    credentials::with_links(&mut tx, CompanyId(company_id), std::slice::from_mut(&mut after)).await?;
    let mut entry = auth.principal.audit("credential.update", "credential", id);
    entry = entry.change(Some(&before), Some(&after));
    entry.details["data_replaced"] = body.data.is_some().into();
    audit::record(&mut tx, &[entry]).await?;
    db::commit(tx).await?;
    Ok(Json(after))
}

#[utoipa::path(delete, operation_id = "credentials_remove", path = "/api/v1/credentials/{credential_id}", tag = "credentials", params(("credential_id" = Uuid, Path)),
    security(("api_key" = ["integration:manage"]), ("session" = ["integration:manage"])),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "A grant below `edit`, or the role lacks `integration:manage`", body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    auth: Authorized<IntegrationManage>,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_integration(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, company_id, id).await?;
    floq_shared::access::revoke_all(&mut tx, CompanyId(company_id), Entity::Integration, id).await?;
    credentials::delete(&mut tx, CompanyId(company_id), CredentialId(id)).await?;
    let entry = auth.principal.audit("credential.delete", "credential", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Credential>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
