//! `/api/v1/credentials`: integrations' secrets. Data is checked per type,
//! encrypted here, and never returned: reads show the type, the field names
//! and a masked hint. Managing needs `integration:manage` (and, for
//! non-admins, `edit` on the credential); seeing one needs a grant too.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
#[derive(Clone, Serialize, sqlx::FromRow, ToSchema)]
struct Credential {
    id: Uuid,
    name: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    kind: String,
    fields: Vec<String>,
    hint: String,
    /// Where its secrets may be sent; empty: anywhere the egress policy allows.
    allowed_origins: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, type, fields, hint, allowed_origins, created_at, updated_at";

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

fn checked(kind: &str, data: &Value) -> ApiResult<()> {
    let errors = secrets::check(kind, data);
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

page!(CredentialPage, Credential);

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
    let items: Vec<Credential> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM credentials
          WHERE company_id = $1 AND (name, id) > ($2, $3)
            AND ($4 OR floq_access($5, 'integration', id, NULL) >= 1)
          ORDER BY name, id LIMIT $6"
    )))
    .bind(company_id)
    .bind(&page.after.0)
    .bind(page.after.1)
    .bind(auth.principal.is_admin())
    .bind(auth.principal.user_id)
    .bind(page.limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(page.answer(items, |c| ByName(c.name.clone(), c.id))))
}

async fn fetch(tx: &mut db::Tx, id: Uuid) -> ApiResult<Credential> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM credentials WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found("credential"))
}

#[utoipa::path(get, operation_id = "credentials_show", path = "/api/v1/credentials/{credential_id}", tag = "credentials", params(("credential_id" = Uuid, Path)),
    security(("api_key" = ["integration:read"]), ("session" = ["integration:read"])),
    responses((status = 200, description = "The credential: type, field names and a masked hint", body = Credential)))]
async fn show(
    State(state): State<AppState>,
    auth: Authorized<IntegrationRead>,
    Id(id): Id,
) -> ApiResult<Json<Credential>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_integration(&mut tx, &auth.principal, id, Level::View).await?;
    let credential = fetch(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(credential))
}

/// Stores an integration's secret, encrypted; its creator gets `edit` on it.
#[utoipa::path(post, operation_id = "credentials_create", path = "/api/v1/credentials", tag = "credentials", request_body = CreateCredential,
    security(("api_key" = ["integration:manage"]), ("session" = ["integration:manage"])),
    responses((status = 201, description = "Created", body = Credential),
        (status = 409, description = "The name is taken (`name_taken`)", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<IntegrationManage>,
    ValidJson(body): ValidJson<CreateCredential>,
) -> ApiResult<(StatusCode, Json<Credential>)> {
    checked(&body.kind, &body.data)?;
    let allowed_origins = origins(&body.allowed_origins)?;
    let company_id = auth.principal.company_id;
    let id = Uuid::now_v7();
    let id_text = id.to_string();
    let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(&body.data).map_err(ApiError::internal)?);
    let sealed = state
        .keyring
        .encrypt(&plaintext, secrets::credential_binding(company_id, &id_text));
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let credential: Credential = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO credentials (id, company_id, name, type, data, key_id, fields, hint, created_by, allowed_origins)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(company_id)
    .bind(body.name.trim())
    .bind(&body.kind)
    .bind(sealed)
    .bind(state.keyring.primary_id())
    .bind(fields(&body.data))
    .bind(secrets::hint(&body.kind, &body.data))
    .bind(auth.principal.user_id)
    .bind(allowed_origins)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(name_taken)?;
    let entry = auth.principal.audit("credential.create", "credential", id);
    audit::record(&mut tx, &[entry.change(None::<&Credential>, Some(&credential))]).await?;
    access::grant_creator(&mut tx, &auth.principal, "integration", id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(credential)))
}

#[utoipa::path(put, operation_id = "credentials_update", path = "/api/v1/credentials/{credential_id}", tag = "credentials", params(("credential_id" = Uuid, Path)),
    request_body = UpdateCredential,
    security(("api_key" = ["integration:manage"]), ("session" = ["integration:manage"])),
    responses((status = 200, description = "Updated", body = Credential),
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
    let before = fetch(&mut tx, id).await?;
    let sealed = match &body.data {
        Some(data) => {
            checked(&before.kind, data)?;
            let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(data).map_err(ApiError::internal)?);
            let id_text = id.to_string();
            let sealed = state
                .keyring
                .encrypt(&plaintext, secrets::credential_binding(company_id, &id_text));
            Some((sealed, fields(data), secrets::hint(&before.kind, data)))
        }
        None => None,
    };
    let taken = match &body.name {
        Some(name) => {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM credentials WHERE name = $1 AND id <> $2)")
                .bind(name.trim())
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
        }
        None => false,
    };
    if taken {
        return Err(name_taken());
    }
    let (data, fields, hint) = match sealed {
        Some((d, f, h)) => (Some(d), Some(f), Some(h)),
        None => (None, None, None),
    };
    let after: Credential = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE credentials SET name = COALESCE($2, name), data = COALESCE($3, data),
                key_id = CASE WHEN $3 IS NULL THEN key_id ELSE $4 END,
                fields = COALESCE($5, fields), hint = COALESCE($6, hint),
                allowed_origins = COALESCE($7, allowed_origins), updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(body.name.as_deref().map(str::trim))
    .bind(data)
    .bind(state.keyring.primary_id())
    .bind(fields)
    .bind(hint)
    .bind(allowed_origins)
    .fetch_one(&mut *tx)
    .await?;
    let mut entry = auth.principal.audit("credential.update", "credential", id);
    entry = entry.change(Some(&before), Some(&after));
    entry.details["data_replaced"] = body.data.is_some().into();
    audit::record(&mut tx, &[entry]).await?;
    tx.commit().await?;
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
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_integration(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, id).await?;
    access::revoke_all(&mut tx, "integration", id).await?;
    sqlx::query("DELETE FROM credentials WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entry = auth.principal.audit("credential.delete", "credential", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Credential>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
