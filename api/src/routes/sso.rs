//! `/api/v1/sso/connections` and `/api/v1/settings/sso`: a company's single
//! sign-on connections (OpenID Connect providers), the e-mail domains they
//! claim, and whether members must sign in through them. Admin only
//! (`settings:manage`). A connection's client secret is encrypted here and
//! never returned. Signing in is `routes::sso_login`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::audit;
use crate::authz::{Authorized, SettingsManage};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, ValidJson};
use crate::openapi::ErrorBody;
use crate::state::AppState;
use crate::{domains, oidc};
use floq_shared::access::Role;
use floq_shared::db::{self, Fault};
use floq_shared::ids::{CompanyId, UserId};
use floq_shared::sso::{self, Connection, Preset, SealedSecret, VerifiedBy};
use floq_shared::users;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(verify_domain))
        .routes(routes!(show_policy, update_policy))
}

/// All a read shows of a connection; never its client secret.
#[derive(ToSchema)]
#[schema(as = SsoConnection)]
#[allow(dead_code)] // documentation of `sso::Connection`, which the store returns
struct ConnectionDoc {
    id: Uuid,
    name: String,
    /// `generic` (OIDC discovery of `issuer`) or `entra` (Microsoft Entra ID).
    preset: String,
    /// For Entra's multi-tenant forms it holds `{tenantid}`, replaced by the token's `tid`.
    issuer: String,
    tenant: Option<String>,
    allowed_tenants: Vec<String>,
    client_id: String,
    /// The role an auto-registered member gets.
    default_role: String,
    email_domains: Vec<DomainDoc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A claimed e-mail domain: it routes sign-ins and auto-registers members only once verified.
#[derive(ToSchema)]
#[schema(as = SsoDomain)]
#[allow(dead_code)]
struct DomainDoc {
    domain: String,
    verified: bool,
    /// `dns` or `operator`.
    verified_by: Option<String>,
    /// Publish a TXT record `txt_value` at this name, then verify.
    txt_name: String,
    txt_value: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct SsoConnectionList {
    items: Vec<ConnectionDoc>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct ConnectionBody {
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// `generic` (default) or `entra`.
    #[serde(default)]
    preset: Option<String>,
    /// generic: the issuer (its `/.well-known/openid-configuration` is used). entra: filled from `tenant`.
    #[validate(length(max = 500))]
    #[schema(max_length = 500)]
    #[serde(default)]
    issuer: Option<String>,
    /// entra: the Directory (tenant) ID, or `organizations` / `common` (multi-tenant, with `allowed_tenants`).
    #[validate(length(min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    #[serde(default)]
    tenant: Option<String>,
    /// entra multi-tenant: the tenant ids (`tid`) accepted.
    #[validate(length(max = 100))]
    #[serde(default)]
    allowed_tenants: Vec<String>,
    #[validate(length(min = 1, max = 500))]
    #[schema(min_length = 1, max_length = 500)]
    client_id: String,
    /// Encrypted, never returned. Required on create; omitted on update, it stays.
    #[validate(length(min = 1, max = 4000))]
    #[schema(min_length = 1, max_length = 4000)]
    #[serde(default)]
    client_secret: Option<String>,
    #[validate(length(max = 50))]
    #[serde(default)]
    email_domains: Vec<String>,
    /// The role an auto-registered member gets (default `none`).
    #[serde(default)]
    default_role: Option<String>,
}

fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation(
        "the connection is invalid",
        json!([{"field": field, "message": message.into()}]),
    )
}

/// A connection's settings, checked and resolved (the Entra preset's issuer filled in).
struct Resolved {
    name: String,
    preset: Preset,
    issuer: String,
    tenant: Option<String>,
    allowed_tenants: Vec<String>,
    client_id: String,
    default_role: Role,
    domains: Vec<String>,
}

impl Resolved {
    fn settings(&self) -> sso::Settings<'_> {
        sso::Settings {
            name: &self.name,
            preset: self.preset,
            issuer: &self.issuer,
            tenant: self.tenant.as_deref(),
            allowed_tenants: &self.allowed_tenants,
            client_id: &self.client_id,
            default_role: self.default_role,
        }
    }
}

fn resolve(state: &AppState, body: &ConnectionBody) -> ApiResult<Resolved> {
    let preset = body
        .preset
        .as_deref()
        .unwrap_or("generic")
        .parse::<Preset>()
        .map_err(|_| field_error("preset", "must be `generic` or `entra`"))?;
    let default_role = match body.default_role.as_deref() {
        None => Role::None,
        Some(r) => r
            .parse::<Role>()
            .map_err(|e| field_error("default_role", e.to_string()))?,
    };
    let mut allowed_tenants = Vec::new();
    for (i, t) in body.allowed_tenants.iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        if Uuid::parse_str(&t).is_err() {
            return Err(field_error(
                &format!("allowed_tenants[{i}]"),
                "must be a tenant id (a GUID)",
            ));
        }
        allowed_tenants.push(t);
    }
    let (issuer, tenant) = match preset {
        Preset::Generic => {
            let issuer = body
                .issuer
                .as_deref()
                .map(str::trim)
                .ok_or_else(|| field_error("issuer", "a generic connection needs its issuer"))?;
            crate::oidc::check_issuer(issuer).map_err(|m| field_error("issuer", m))?;
            if body.tenant.is_some() || !allowed_tenants.is_empty() {
                return Err(field_error("tenant", "only an `entra` connection has a tenant"));
            }
            (issuer.trim_end_matches('/').to_string(), None)
        }
        Preset::Entra => {
            let tenant = body
                .tenant
                .as_deref()
                .map(|t| t.trim().to_ascii_lowercase())
                .ok_or_else(|| field_error("tenant", "an `entra` connection needs its tenant"))?;
            let multi = oidc::ENTRA_MULTI_TENANT.contains(&tenant.as_str());
            // Tokens name the tenant by id (`iss`), never by a domain: a domain here could never match.
            if !multi && Uuid::parse_str(&tenant).is_err() {
                return Err(field_error(
                    "tenant",
                    "the Directory (tenant) ID (a GUID), or `organizations` / `common` with `allowed_tenants`",
                ));
            }
            if multi && allowed_tenants.is_empty() {
                return Err(field_error(
                    "allowed_tenants",
                    "a multi-tenant connection lists the tenant ids it accepts",
                ));
            }
            if !multi && !allowed_tenants.is_empty() {
                return Err(field_error(
                    "allowed_tenants",
                    "only a multi-tenant connection (`organizations`, `common`) lists tenants",
                ));
            }
            (oidc::entra_issuer(state.oidc.entra_authority(), &tenant), Some(tenant))
        }
    };
    let domains = domains::parse_all(&body.email_domains)?;
    Ok(Resolved {
        name: body.name.trim().to_string(),
        preset,
        issuer,
        tenant,
        allowed_tenants,
        client_id: body.client_id.trim().to_string(),
        default_role,
        domains,
    })
}

fn taken(field: String, domain: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "domain_taken",
        format!("{domain} belongs to another single sign-on connection"),
    )
    .with_details(json!([{"field": field, "message": "this domain is claimed by another connection"}]))
}

/// Refuses domains another company verified, or another connection of this company claims.
async fn check_domains(tx: &mut db::Tx, company_id: CompanyId, id: Uuid, domains: &[String]) -> ApiResult<()> {
    for (i, domain) in domains.iter().enumerate() {
        let field = format!("email_domains[{i}]");
        if sso::domain_taken(tx, domain).await? {
            return Err(taken(field, domain));
        }
        if let Some((other, _, _)) = sso::claim(tx, company_id, domain).await?
            && other != id
        {
            return Err(taken(field, domain));
        }
    }
    Ok(())
}

fn seal(state: &AppState, company_id: Uuid, id: Uuid, secret: &str) -> SealedSecret {
    let id_text = id.to_string();
    SealedSecret {
        data: state.keyring.encrypt(
            secret.as_bytes(),
            floq_shared::secrets::sso_binding(company_id, &id_text),
        ),
        key_id: state.keyring.primary_id(),
    }
}

fn name_taken() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "name_taken", "a connection with this name exists")
}

async fn fetch(tx: &mut db::Tx, company_id: Uuid, id: Uuid) -> ApiResult<Connection> {
    sso::find(tx, CompanyId(company_id), id)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))
}

/// A unique index refused the write: a concurrent claim won the name or the domain.
fn conflict(e: floq_shared::db::StoreError) -> ApiError {
    match e.fault() {
        Fault::Conflict { field: Some("name") } => name_taken(),
        Fault::Conflict {
            field: Some("email_domains"),
        } => ApiError::new(
            StatusCode::CONFLICT,
            "domain_taken",
            "a domain belongs to another single sign-on connection",
        ),
        _ => e.into(),
    }
}

#[utoipa::path(get, operation_id = "sso_connections_list", path = "/api/v1/sso/connections", tag = "sso",
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "The company's connections, by name; never their secrets", body = SsoConnectionList)))]
async fn list(State(state): State<AppState>, auth: Authorized<SettingsManage>) -> ApiResult<Json<Value>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let items = sso::list(&mut tx, CompanyId(auth.principal.company_id)).await?;
    db::commit(tx).await?;
    Ok(Json(json!({ "items": items })))
}

#[utoipa::path(get, operation_id = "sso_connections_show", path = "/api/v1/sso/connections/{connection_id}", tag = "sso",
    params(("connection_id" = Uuid, Path)),
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "The connection", body = ConnectionDoc)))]
async fn show(
    State(state): State<AppState>,
    auth: Authorized<SettingsManage>,
    Id(id): Id,
) -> ApiResult<Json<Connection>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let found = fetch(&mut tx, auth.principal.company_id, id).await?;
    db::commit(tx).await?;
    Ok(Json(found))
}

/// Adds a connection; its domains wait for verification (DNS TXT, or the operator).
#[utoipa::path(post, operation_id = "sso_connections_create", path = "/api/v1/sso/connections", tag = "sso",
    request_body = ConnectionBody,
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 201, description = "Created", body = ConnectionDoc),
        (status = 409, description = "The name is taken (`name_taken`), or a domain belongs to another connection (`domain_taken`)", body = ErrorBody),
        (status = 422, description = "Invalid, or a public webmail domain (`public_email_domain`)", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<SettingsManage>,
    ValidJson(body): ValidJson<ConnectionBody>,
) -> ApiResult<(StatusCode, Json<Connection>)> {
    let resolved = resolve(&state, &body)?;
    let secret = body
        .client_secret
        .as_deref()
        .ok_or_else(|| field_error("client_secret", "a new connection needs its client secret"))?;
    let company_id = auth.principal.company_id;
    let id = Uuid::now_v7();
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    if sso::name_taken(&mut tx, CompanyId(company_id), &resolved.name, None).await? {
        return Err(name_taken());
    }
    check_domains(&mut tx, CompanyId(company_id), id, &resolved.domains).await?;
    let sealed = seal(&state, company_id, id, secret);
    sso::create(&mut tx, CompanyId(company_id), id, resolved.settings(), sealed)
        .await
        .map_err(conflict)?;
    sso::set_domains(&mut tx, CompanyId(company_id), id, &resolved.domains)
        .await
        .map_err(conflict)?;
    let after = fetch(&mut tx, company_id, id).await?;
    let entry = auth.principal.audit("sso.connection_create", "sso_connection", id);
    audit::record(&mut tx, &[entry.change(None::<&Connection>, Some(&after))]).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(after)))
}

/// Replaces a connection's settings; its client secret stays unless given.
#[utoipa::path(put, operation_id = "sso_connections_update", path = "/api/v1/sso/connections/{connection_id}", tag = "sso",
    params(("connection_id" = Uuid, Path)), request_body = ConnectionBody,
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "Updated", body = ConnectionDoc),
        (status = 409, description = "The name is taken (`name_taken`), or a domain belongs to another connection (`domain_taken`)", body = ErrorBody),
        (status = 422, description = "Invalid, or a public webmail domain (`public_email_domain`)", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    auth: Authorized<SettingsManage>,
    Id(id): Id,
    ValidJson(body): ValidJson<ConnectionBody>,
) -> ApiResult<Json<Connection>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = fetch(&mut tx, company_id, id).await?;
    let resolved = resolve(&state, &body)?;
    if sso::name_taken(&mut tx, CompanyId(company_id), &resolved.name, Some(id)).await? {
        return Err(name_taken());
    }
    check_domains(&mut tx, CompanyId(company_id), id, &resolved.domains).await?;
    let sealed = body.client_secret.as_deref().map(|s| seal(&state, company_id, id, s));
    sso::update(&mut tx, CompanyId(company_id), id, resolved.settings(), sealed)
        .await
        .map_err(conflict)?;
    sso::set_domains(&mut tx, CompanyId(company_id), id, &resolved.domains)
        .await
        .map_err(conflict)?;
    let after = fetch(&mut tx, company_id, id).await?;
    let mut entry = auth.principal.audit("sso.connection_update", "sso_connection", id);
    entry = entry.change(Some(&before), Some(&after));
    entry.details["secret_replaced"] = body.client_secret.is_some().into();
    audit::record(&mut tx, &[entry]).await?;
    db::commit(tx).await?;
    Ok(Json(after))
}

#[utoipa::path(delete, operation_id = "sso_connections_remove", path = "/api/v1/sso/connections/{connection_id}", tag = "sso",
    params(("connection_id" = Uuid, Path)),
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 204, description = "Deleted, with its domains; identities linked through it stay")))]
async fn remove(State(state): State<AppState>, auth: Authorized<SettingsManage>, Id(id): Id) -> ApiResult<StatusCode> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = fetch(&mut tx, company_id, id).await?;
    sso::delete(&mut tx, CompanyId(company_id), id).await?;
    let entry = auth.principal.audit("sso.connection_delete", "sso_connection", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Connection>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifyDomain {
    #[validate(length(min = 1, max = 253))]
    #[schema(min_length = 1, max_length = 253)]
    domain: String,
}

/// Verifies one of the connection's domains by its DNS TXT record
/// (`txt_value` at `txt_name`, as the connection shows them).
#[utoipa::path(post, operation_id = "sso_connections_verify_domain", path = "/api/v1/sso/connections/{connection_id}/verify-domain", tag = "sso",
    params(("connection_id" = Uuid, Path)), request_body = VerifyDomain,
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "Verified: the connection now", body = ConnectionDoc),
        (status = 404, description = "No such connection, or it does not claim the domain", body = ErrorBody),
        (status = 409, description = "Another company verified the domain first (`domain_taken`)", body = ErrorBody),
        (status = 422, description = "The TXT record was not found (`domain_not_verified`)", body = ErrorBody)))]
async fn verify_domain(
    State(state): State<AppState>,
    auth: Authorized<SettingsManage>,
    Id(id): Id,
    ValidJson(body): ValidJson<VerifyDomain>,
) -> ApiResult<Json<Connection>> {
    let company_id = auth.principal.company_id;
    let domain = body.domain.trim().to_ascii_lowercase();
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    fetch(&mut tx, company_id, id).await?;
    let claim = sso::claim(&mut tx, CompanyId(company_id), &domain).await?;
    db::commit(tx).await?;
    let Some((connection, token, verified)) = claim.filter(|(c, _, _)| *c == id) else {
        return Err(ApiError::not_found("domain"));
    };
    if !verified {
        let expected = sso::txt_value(&token);
        let published = domains::txt_records(&state.config, &sso::txt_name(&domain)).await;
        if !published.iter().any(|r| r.trim() == expected) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "domain_not_verified",
                format!(
                    "no TXT record `{expected}` found at {}; publish it and try again (DNS changes can take a while to show)",
                    sso::txt_name(&domain)
                ),
            )
            .with_details(json!([{"field": "domain", "message": "the TXT record was not found"}])));
        }
        let mut tx = db::tenant_tx(&state.pool, company_id).await?;
        sso::mark_verified(&mut tx, CompanyId(company_id), &domain, VerifiedBy::Dns)
            .await
            .map_err(|e| match e.fault() {
                Fault::Conflict { .. } => taken("domain".into(), &domain),
                _ => e.into(),
            })?;
        let entry = auth
            .principal
            .audit("sso.domain_verify", "sso_connection", connection)
            .details(json!({"domain": domain, "by": "dns"}));
        audit::record(&mut tx, &[entry]).await?;
        db::commit(tx).await?;
    }
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let after = fetch(&mut tx, company_id, id).await?;
    db::commit(tx).await?;
    Ok(Json(after))
}

/// Whether members must sign in through single sign-on.
#[derive(Clone, Debug, Deserialize, Serialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct SsoPolicy {
    /// Password sign-in is refused for members (but the break-glass member).
    require_sso: bool,
    /// An admin of the company who may still sign in with a password.
    #[serde(default)]
    break_glass_user_id: Option<Uuid>,
}

#[utoipa::path(get, operation_id = "settings_sso_show", path = "/api/v1/settings/sso", tag = "settings",
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "Whether SSO is required", body = SsoPolicy)))]
async fn show_policy(State(state): State<AppState>, auth: Authorized<SettingsManage>) -> ApiResult<Json<SsoPolicy>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let p = sso::policy(&mut tx, CompanyId(auth.principal.company_id)).await?;
    db::commit(tx).await?;
    Ok(Json(SsoPolicy {
        require_sso: p.require_sso,
        break_glass_user_id: p.break_glass_user_id.map(UserId::as_uuid),
    }))
}

#[utoipa::path(put, operation_id = "settings_sso_update", path = "/api/v1/settings/sso", tag = "settings",
    request_body = SsoPolicy,
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "The policy now in force", body = SsoPolicy),
        (status = 422, description = "The break-glass user is not an admin of the company", body = ErrorBody)))]
async fn update_policy(
    State(state): State<AppState>,
    auth: Authorized<SettingsManage>,
    ValidJson(body): ValidJson<SsoPolicy>,
) -> ApiResult<Json<SsoPolicy>> {
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    if let Some(user) = body.break_glass_user_id {
        let admin = users::member(&mut tx, company_id, UserId(user))
            .await?
            .is_some_and(|m| m.roles.contains(&Role::Admin));
        if !admin {
            return Err(ApiError::validation(
                "the request body is invalid",
                json!([{"field": "break_glass_user_id", "message": "must be an admin of the company"}]),
            ));
        }
    }
    let before = sso::policy(&mut tx, company_id).await?;
    let after = sso::Policy {
        require_sso: body.require_sso,
        break_glass_user_id: body.break_glass_user_id.map(UserId),
    };
    sso::save_policy(&mut tx, company_id, &after).await?;
    let entry = auth.principal.audit("settings.sso_update", "settings", "sso");
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&after))]).await?;
    db::commit(tx).await?;
    Ok(Json(body))
}
