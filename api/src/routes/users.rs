//! `/api/v1/users`: the members of the caller's company and their roles.
//! Admin only. A company never loses its last admin. Adding an identity the
//! company does not own is an invitation (see [`crate::accounts`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use floq_shared::access::Role;
use floq_shared::db::StoreError;
use floq_shared::ids::{CompanyId, InvitationId, UserId};
use floq_shared::users::Member;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::accounts;
use crate::audit;
use crate::authz::{Authorized, UserManage};
use crate::error::{ApiError, ApiResult};
use crate::extract::{self, ByTime, Id, Page, ValidJson};
use crate::openapi::{ErrorBody, PageParams, page};
use crate::password;
use crate::state::AppState;
use floq_shared::{account_tokens, api_keys, db, mail, users};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(invitations))
        .routes(routes!(withdraw))
}

/// One or more roles, each a [`Role`]; what an unknown one is told names them all.
fn parse_roles(raw: &[String]) -> Result<Vec<Role>, validator::ValidationError> {
    let roles: Option<Vec<Role>> = raw.iter().map(|r| r.parse::<Role>().ok()).collect();
    match roles {
        Some(roles) if !roles.is_empty() => Ok(roles),
        _ => {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            Err(validator::ValidationError::new("roles")
                .with_message(format!("roles are one or more of: {}", names.join(", ")).into()))
        }
    }
}

fn valid_roles(roles: &[String]) -> Result<(), validator::ValidationError> {
    parse_roles(roles).map(|_| ())
}

/// A body's roles, which [`valid_roles`] has passed, each once, in the order
/// of their names (as stored and audited).
fn normalized(raw: &[String]) -> ApiResult<Vec<Role>> {
    let mut roles = parse_roles(raw).map_err(|e| {
        let mut errors = validator::ValidationErrors::new();
        errors.add("roles", e);
        extract::invalid_body(errors)
    })?;
    roles.sort_by_key(|r| r.as_str());
    roles.dedup();
    Ok(roles)
}

#[derive(ToSchema)]
#[schema(as = Member)]
#[allow(dead_code)] // documentation of `users::Member`, which the store returns
struct MemberDoc {
    id: Uuid,
    email: String,
    name: String,
    roles: Vec<String>,
    joined_at: DateTime<Utc>,
}

page!(MemberPage, MemberDoc);

// Newest member first, by when they joined, then user id: a user's id tells
// when the identity was made, not when it joined this company. Served by
// `memberships (company_id, created_at, user_id)`.
#[utoipa::path(get, operation_id = "users_list", path = "/api/v1/users", tag = "users", params(PageParams),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 200, description = "The company's members, newest first", body = MemberPage)))]
async fn list(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    page: Page<ByTime>,
) -> ApiResult<Json<Value>> {
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.as_uuid()).await?;
    let after = (page.after.0, UserId(page.after.1));
    let members = users::members_page(&mut tx, company_id, after, page.limit).await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(members, |m| ByTime(m.joined_at, m.id.as_uuid()))))
}

async fn fetch(tx: &mut db::Tx, company_id: Uuid, id: Uuid) -> ApiResult<Member> {
    users::member(tx, CompanyId(company_id), UserId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

#[utoipa::path(get, operation_id = "users_show", path = "/api/v1/users/{user_id}", tag = "users", params(("user_id" = Uuid, Path)),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 200, description = "The member", body = MemberDoc)))]
async fn show(State(state): State<AppState>, auth: Authorized<UserManage>, Id(id): Id) -> ApiResult<Json<Member>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let member = fetch(&mut tx, company_id, id).await?;
    db::commit(tx).await?;
    Ok(Json(member))
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    #[validate(email, custom(function = "crate::extract::ascii_email"))]
    #[schema(format = Email)]
    email: String,
    #[validate(length(max = 200))]
    #[schema(max_length = 200)]
    #[serde(default)]
    name: String,
    #[validate(length(min = 12, max = 1024, message = "passwords are 12 to 1024 characters"))]
    #[schema(min_length = 12, max_length = 1024)]
    password: Option<String>,
    /// `none` when absent.
    #[validate(custom(function = "valid_roles"))]
    #[serde(default = "no_role")]
    roles: Vec<String>,
}

/// The one answer to an invitation, whoever the address belongs to.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of `invited`
struct Invited {
    /// `invited`
    status: String,
    email: String,
    message: String,
}

fn no_role() -> Vec<String> {
    vec!["none".into()]
}

fn mail_not_configured() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "mail_not_configured",
        "adding this address needs an invitation by mail, and this deployment sends none: the operator must set FLOQ_SMTP_URL",
    )
}

/// Creates a brand-new identity owned by this company (201, as a member), or
/// invites the address (202): an identity that exists already, or that another
/// company created, joins only once its mailbox owner accepts. The invitation
/// answer is one and the same whether or not the address exists, and says
/// nothing about the identity; without a password every address is invited, so
/// nothing at all is learned. A password or name given for an existing identity
/// is ignored: no company sets anything on an identity it does not own.
#[utoipa::path(post, operation_id = "users_create", path = "/api/v1/users", tag = "users", request_body = CreateUser,
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 201, description = "A brand-new identity, now a member", body = MemberDoc),
        (status = 202, description = "Invited", body = Invited),
        (status = 409, description = "Already a member (`already_member`)", body = ErrorBody),
        (status = 503, description = "Inviting needs mail and none is configured (`mail_not_configured`)", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    ValidJson(body): ValidJson<CreateUser>,
) -> ApiResult<Response> {
    let company_id = auth.principal.company_id;
    let company = CompanyId(company_id);
    let address = extract::email(&body.email)?;
    let email = address.to_string();
    let roles = normalized(&body.roles)?;
    let existing = {
        let mut tx = db::lookup_tx(&state.pool, db::Duty::SignIn, db::Lookup::Email(address.as_str())).await?;
        let found = users::by_email(&mut tx, &address).await?;
        db::commit(tx).await?;
        found.map(|identity| identity.id)
    };
    let mailing = mail::configured(&state.config);
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    if let Some(id) = existing {
        // Members are visible to their company anyway, so this tells nothing new.
        if users::is_member(&mut tx, company, id).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_member",
                "this user is already a member",
            ));
        }
    }
    if existing.is_some() || (body.password.is_none() && mailing) {
        if !mailing {
            return Err(mail_not_configured());
        }
        let (invitation_id, token) = account_tokens::invite(
            &mut tx,
            accounts::Invitation {
                company_id: company,
                email: &address,
                user_id: existing,
                roles: &roles,
                invited_by: UserId(auth.principal.user_id),
                ttl: state.config.invitation_ttl,
            },
        )
        .await?;
        let entry = auth
            .principal
            .audit("user.invite", "invitation", invitation_id)
            .details(json!({"email": email, "roles": roles}));
        audit::record(&mut tx, &[entry]).await?;
        db::commit(tx).await?;
        let company: String = company_name(&state, company_id).await?;
        let text = format!(
            "You have been invited to join {company} on floq.\n\n\
             To accept, open this link and choose your password:\n\n{}\n\n\
             The link works once and expires in {} hours. If you did not expect\n\
             this invitation, ignore this message.\n",
            accounts::link(&state.config.public_url, &token),
            state.config.invitation_ttl.as_secs().div_ceil(3600),
        );
        mail::send_detached(state.config.clone(), email.clone(), "Your floq invitation", text);
        return Ok((StatusCode::ACCEPTED, Json(invited(&email))).into_response());
    }
    let hash = match body.password {
        Some(p) => Some(password::hash(p).await.map_err(ApiError::internal)?),
        None => None,
    };
    let new = users::NewIdentity {
        email: &address,
        name: &body.name,
        password_hash: hash.as_deref(),
        owner: Some(company),
    };
    let user_id = users::create(&mut tx, new).await?;
    users::add_member(&mut tx, company, user_id, &roles).await?;
    let member = fetch(&mut tx, company_id, user_id.as_uuid()).await?;
    let entry = auth.principal.audit("user.add", "user", user_id);
    audit::record(&mut tx, &[entry.change(None::<&Member>, Some(&member))]).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(member)).into_response())
}

/// The one answer to an invitation, whoever the address belongs to.
fn invited(email: &str) -> Value {
    json!({
        "status": "invited",
        "email": email,
        "message": "an invitation has been sent; the address joins once its owner accepts",
    })
}

async fn company_name(state: &AppState, company_id: Uuid) -> Result<String, StoreError> {
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let name = users::company_name(&mut tx, CompanyId(company_id)).await?;
    db::commit(tx).await?;
    Ok(name)
}

/// A company's invitations not yet accepted, newest first.
#[derive(ToSchema)]
#[schema(as = Invitation)]
#[allow(dead_code)] // documentation of `account_tokens::Pending`, which the store returns
struct InvitationDoc {
    id: Uuid,
    email: String,
    roles: Vec<String>,
    invited_by: Option<Uuid>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

page!(InvitationPage, InvitationDoc);

/// Pending invitations of the caller's company (addresses it typed itself).
/// Newest first by (v7) id.
#[utoipa::path(get, operation_id = "users_invitations", path = "/api/v1/invitations", tag = "users", params(PageParams),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 200, description = "Pending invitations, newest first", body = InvitationPage)))]
async fn invitations(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    page: Page<Uuid>,
) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let items = account_tokens::pending(&mut tx, CompanyId(company_id), InvitationId(page.after), page.limit).await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(items, |p| p.id.as_uuid())))
}

/// Withdraws a pending invitation.
#[utoipa::path(delete, operation_id = "users_withdraw", path = "/api/v1/invitations/{invitation_id}", tag = "users", params(("invitation_id" = Uuid, Path)),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 204, description = "Withdrawn")))]
async fn withdraw(State(state): State<AppState>, auth: Authorized<UserManage>, Id(id): Id) -> ApiResult<StatusCode> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = account_tokens::withdraw(&mut tx, CompanyId(company_id), InvitationId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("invitation"))?;
    let entry = auth.principal.audit("user.invitation_withdraw", "invitation", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&accounts::Pending>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    #[validate(custom(function = "valid_roles"))]
    roles: Vec<String>,
}

fn last_admin() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "last_admin",
        "a company must keep at least one admin",
    )
}

/// Replaces the member's roles.
#[utoipa::path(patch, operation_id = "users_update", path = "/api/v1/users/{user_id}", tag = "users", params(("user_id" = Uuid, Path)),
    request_body = UpdateUser,
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 200, description = "The member", body = MemberDoc),
        (status = 409, description = "It would leave the company without an admin (`last_admin`)", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    Id(id): Id,
    ValidJson(body): ValidJson<UpdateUser>,
) -> ApiResult<Json<Member>> {
    let roles = normalized(&body.roles)?;
    let company_id = auth.principal.company_id;
    let (company, user) = (CompanyId(company_id), UserId(id));
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = fetch(&mut tx, company_id, id).await?;
    if !roles.contains(&Role::Admin) && users::is_last_admin(&mut tx, company, user).await? {
        return Err(last_admin());
    }
    users::set_roles(&mut tx, company, user, &roles).await?;
    let member = fetch(&mut tx, company_id, id).await?;
    let entry = auth.principal.audit("user.roles_update", "user", id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&member))]).await?;
    db::commit(tx).await?;
    Ok(Json(member))
}

/// Removes the membership; the user and their other companies stay.
#[utoipa::path(delete, operation_id = "users_remove", path = "/api/v1/users/{user_id}", tag = "users", params(("user_id" = Uuid, Path)),
    security(("api_key" = ["user:manage"]), ("session" = ["user:manage"])),
    responses((status = 204, description = "No longer a member"),
        (status = 409, description = "The company's last admin (`last_admin`)", body = ErrorBody)))]
async fn remove(State(state): State<AppState>, auth: Authorized<UserManage>, Id(id): Id) -> ApiResult<StatusCode> {
    let company_id = auth.principal.company_id;
    let (company, user) = (CompanyId(company_id), UserId(id));
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = fetch(&mut tx, company_id, id).await?;
    if users::is_last_admin(&mut tx, company, user).await? {
        return Err(last_admin());
    }
    users::remove_member(&mut tx, company, user).await?;
    api_keys::revoke_all_of(&mut tx, company, user).await?;
    let entry = auth.principal.audit("user.remove", "user", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Member>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
