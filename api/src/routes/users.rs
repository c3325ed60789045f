//! `/api/v1/users`: the members of the caller's company and their roles.
//! Admin only. A company never loses its last admin.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::audit;
use crate::authz::{Authorized, ROLES, UserManage};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, ValidJson};
use crate::password;
use crate::state::AppState;
use floq_shared::db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list).post(create))
        .route("/api/v1/users/{id}", get(show).patch(update).delete(remove))
}

fn valid_roles(roles: &[String]) -> Result<(), validator::ValidationError> {
    if roles.is_empty() || roles.iter().any(|r| !ROLES.contains(&r.as_str())) {
        return Err(validator::ValidationError::new("roles")
            .with_message(format!("roles are one or more of: {}", ROLES.join(", ")).into()));
    }
    Ok(())
}

fn normalized(mut roles: Vec<String>) -> Vec<String> {
    roles.sort();
    roles.dedup();
    roles
}

#[derive(Serialize, sqlx::FromRow)]
struct Member {
    id: Uuid,
    email: String,
    name: String,
    roles: Vec<String>,
    joined_at: DateTime<Utc>,
}

const MEMBER_SELECT: &str = "SELECT u.id, u.email, u.name, m.roles, m.created_at AS joined_at
                               FROM memberships m JOIN users u ON u.id = m.user_id";

async fn list(State(state): State<AppState>, auth: Authorized<UserManage>) -> ApiResult<Json<Value>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let members: Vec<Member> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{MEMBER_SELECT} ORDER BY m.created_at")))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(json!({"items": members})))
}

async fn fetch(tx: &mut db::Tx, id: Uuid) -> ApiResult<Member> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{MEMBER_SELECT} WHERE u.id = $1")))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))
}

async fn show(State(state): State<AppState>, auth: Authorized<UserManage>, Id(id): Id) -> ApiResult<Json<Member>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let member = fetch(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(member))
}

#[derive(Deserialize, Validate)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    #[validate(email)]
    email: String,
    #[validate(length(max = 200))]
    #[serde(default)]
    name: String,
    #[validate(length(min = 12, max = 1024, message = "passwords are 12 to 1024 characters"))]
    password: Option<String>,
    #[validate(custom(function = "valid_roles"))]
    #[serde(default = "no_role")]
    roles: Vec<String>,
}

fn no_role() -> Vec<String> {
    vec!["none".into()]
}

/// Creates the user, or adds an existing user (by e-mail) to this company.
async fn create(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    ValidJson(body): ValidJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<Member>)> {
    let company_id = auth.principal.company_id;
    let existing: Option<Uuid> = {
        let mut tx = db::system_tx(&state.pool).await?;
        let id = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
            .bind(&body.email)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        id
    };
    // The answer must not depend on whether the e-mail exists elsewhere, so a
    // new user may come without a password (they cannot sign in with one until
    // it is set), and a password given for an existing user is ignored.
    let hash = match (&existing, body.password) {
        (None, Some(p)) => Some(password::hash(p).await.map_err(ApiError::internal)?),
        _ => None,
    };
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let user_id = match existing {
        Some(id) => id,
        None => {
            let id = Uuid::now_v7();
            sqlx::query("INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(body.email.trim())
                .bind(body.name.trim())
                .bind(hash)
                .execute(&mut *tx)
                .await?;
            id
        }
    };
    let added =
        sqlx::query("INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(company_id)
            .bind(user_id)
            .bind(normalized(body.roles))
            .execute(&mut *tx)
            .await?;
    if added.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_member",
            "this user is already a member",
        ));
    }
    let member = fetch(&mut tx, user_id).await?;
    let entry = auth.principal.audit("user.add", "user", user_id);
    audit::record(&mut tx, &[entry.change(None::<&Member>, Some(&member))]).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(member)))
}

#[derive(Deserialize, Validate)]
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

/// Locks the company's admin memberships and tells whether `user_id` is the only one.
async fn is_last_admin(tx: &mut db::Tx, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let admins: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM memberships WHERE 'admin' = ANY(roles) FOR UPDATE")
        .fetch_all(&mut **tx)
        .await?;
    Ok(admins == [user_id])
}

async fn update(
    State(state): State<AppState>,
    auth: Authorized<UserManage>,
    Id(id): Id,
    ValidJson(body): ValidJson<UpdateUser>,
) -> ApiResult<Json<Member>> {
    let roles = normalized(body.roles);
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let before = fetch(&mut tx, id).await?;
    if !roles.iter().any(|r| r == "admin") && is_last_admin(&mut tx, id).await? {
        return Err(last_admin());
    }
    sqlx::query("UPDATE memberships SET roles = $2 WHERE user_id = $1")
        .bind(id)
        .bind(&roles)
        .execute(&mut *tx)
        .await?;
    let member = fetch(&mut tx, id).await?;
    let entry = auth.principal.audit("user.roles_update", "user", id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&member))]).await?;
    tx.commit().await?;
    Ok(Json(member))
}

/// Removes the membership; the user and their other companies stay.
async fn remove(State(state): State<AppState>, auth: Authorized<UserManage>, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let before = fetch(&mut tx, id).await?;
    if is_last_admin(&mut tx, id).await? {
        return Err(last_admin());
    }
    sqlx::query("DELETE FROM memberships WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entry = auth.principal.audit("user.remove", "user", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Member>)]).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
