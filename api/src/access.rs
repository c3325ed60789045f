//! Entity-level access: non-admins reach a flow (or flow group) only through
//! a grant, direct, via one of their groups, or inherited from the flow's
//! group. Admins reach everything in their company.
//!
//! Not visible at all answers `404` (as for another company's id); visible
//! but below the level needed answers `403`.

use floq_shared::db::StoreError;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use floq_shared::db;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    View = 1,
    Execute = 2,
    Edit = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::View => "view",
            Level::Execute => "execute",
            Level::Edit => "edit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Level::View, Level::Execute, Level::Edit]
            .into_iter()
            .find(|l| l.name() == s)
    }
}

/// SQL predicate over a `flows` row aliased `f`, true when user `$user` may see it
/// (admins pass `$admin = true`). Used by listings.
pub fn visible_flow_sql(admin: &str, user: &str) -> String {
    format!("({admin} OR floq_access({user}, 'flow', f.id, f.group_id) >= 1)")
}

/// `granted` is the caller's level on an entity that exists. Both refusals are
/// audited as denials; the hidden one still answers like a missing entity.
fn check(granted: i32, need: Level, kind: &str, id: Uuid) -> ApiResult<()> {
    if granted >= need as i32 {
        return Ok(());
    }
    let what = kind.replace('_', " ");
    let capability = format!("{kind}:{}", need.name());
    let error = if granted < Level::View as i32 {
        ApiError::not_found(&what)
    } else {
        ApiError::forbidden(&capability)
    };
    Err(error.denied(&capability, Some((kind, id.to_string()))))
}

/// Requires `need` on a flow; `404` if the flow is missing or invisible to the caller.
pub async fn require_flow(tx: &mut db::Tx, principal: &Principal, flow_id: Uuid, need: Level) -> ApiResult<()> {
    let granted: Option<i32> = sqlx::query_scalar(
        "SELECT floq_access($1, 'flow', id, group_id) FROM flows WHERE id = $2 AND deleted_at IS NULL",
    )
    .bind(principal.user_id)
    .bind(flow_id)
    .fetch_optional(&mut **tx)
    .await?;
    match granted {
        // Admins reach every flow of their company, but only one that exists there.
        None => Err(ApiError::not_found("flow")),
        Some(_) if principal.is_admin() => Ok(()),
        Some(granted) => check(granted, need, "flow", flow_id),
    }
}

pub async fn require_flow_group(tx: &mut db::Tx, principal: &Principal, group_id: Uuid, need: Level) -> ApiResult<()> {
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT floq_access($1, 'flow_group', id, NULL) FROM flow_groups WHERE id = $2")
            .bind(principal.user_id)
            .bind(group_id)
            .fetch_optional(&mut **tx)
            .await?;
    match exists {
        None => Err(ApiError::not_found("flow group")),
        Some(_) if principal.is_admin() => Ok(()),
        Some(granted) => check(granted, need, "flow_group", group_id),
    }
}

/// Requires `need` on a credential; `404` if it is missing or invisible to the caller.
pub async fn require_integration(
    tx: &mut db::Tx,
    principal: &Principal,
    credential_id: Uuid,
    need: Level,
) -> ApiResult<()> {
    let granted: Option<i32> =
        sqlx::query_scalar("SELECT floq_access($1, 'integration', id, NULL) FROM credentials WHERE id = $2")
            .bind(principal.user_id)
            .bind(credential_id)
            .fetch_optional(&mut **tx)
            .await?;
    match granted {
        None => Err(ApiError::not_found("credential")),
        Some(_) if principal.is_admin() => Ok(()),
        Some(granted) => check(granted, need, "integration", credential_id),
    }
}

/// Replacing or deleting a secret KV value needs `edit` on it (or admin): who
/// may write KV in general may not swap a secret another member's flows send.
pub async fn require_secret_edit(tx: &mut db::Tx, principal: &Principal, secret_id: Uuid) -> ApiResult<()> {
    if principal.is_admin() {
        return Ok(());
    }
    let granted: i32 = sqlx::query_scalar("SELECT floq_access($1, 'secret', $2, NULL)")
        .bind(principal.user_id)
        .bind(secret_id)
        .fetch_one(&mut **tx)
        .await?;
    if granted >= Level::Edit as i32 {
        Ok(())
    } else {
        Err(ApiError::forbidden("secret:edit").denied("secret:edit", Some(("secret", secret_id.to_string()))))
    }
}

/// Removes every grant on an entity that is being deleted, in the deleting transaction.
pub async fn revoke_all(tx: &mut db::Tx, entity_type: &str, entity_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM grants WHERE entity_type = $1 AND entity_id = $2")
        .bind(entity_type)
        .bind(entity_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Gives the creator of an entity `edit` on it, so a non-admin can reach what they made.
pub async fn grant_creator(
    tx: &mut db::Tx,
    principal: &Principal,
    entity_type: &str,
    entity_id: Uuid,
) -> Result<(), StoreError> {
    if principal.is_admin() {
        return Ok(());
    }
    let id = Uuid::now_v7();
    let created = sqlx::query(
        "INSERT INTO grants (id, company_id, subject_type, subject_id, entity_type, entity_id, level)
         VALUES ($1, $2, 'user', $3, $4, $5, 'edit') ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(principal.company_id)
    .bind(principal.user_id)
    .bind(entity_type)
    .bind(entity_id)
    .execute(&mut **tx)
    .await?;
    if created.rows_affected() == 1 {
        let grant = json!({"id": id, "subject_type": "user", "subject_id": principal.user_id,
                           "entity_type": entity_type, "entity_id": entity_id, "level": "edit", "implicit": true});
        let entry = principal.audit("grant.create", "grant", id);
        audit::record(tx, &[entry.change(None::<&Value>, Some(&grant))]).await?;
    }
    Ok(())
}
