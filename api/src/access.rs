//! Entity-level access: non-admins reach a flow (or flow group) only through
//! a grant, direct, via one of their groups, or inherited from the flow's
//! group. Admins reach everything in their company.
//!
//! Not visible at all answers `404` (as for another company's id); visible
//! but below the level needed answers `403`. The rule is
//! [`floq_shared::access::decide`]; this module turns its verdict into the
//! answer and audits denials.

use floq_shared::access::{self as store, Entity, Reach, Target, Verdict};
use floq_shared::db::StoreError;
use floq_shared::ids::{CompanyId, CredentialId, FlowGroupId, FlowId, UserId};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use floq_shared::db;

pub use floq_shared::access::Level;

/// SQL predicate over a `flows` row aliased `f`, true when user `$user` may see it
/// (admins pass `$admin = true`). Used by listings.
pub fn visible_flow_sql(admin: &str, user: &str) -> String {
    store::visible_flow_sql(admin, user)
}

/// The answer to a caller who reached `reach` on an entity of `kind` and needs `need`.
/// Both refusals of an entity that exists are audited as denials; the hidden
/// one still answers like a missing entity.
fn check(reach: Reach, admin: bool, need: Level, kind: Entity, id: Uuid) -> ApiResult<()> {
    let what = kind.as_str().replace('_', " ");
    let capability = format!("{kind}:{need}");
    let error = match store::decide(reach, admin, need) {
        Verdict::Allow => return Ok(()),
        Verdict::Missing => return Err(ApiError::not_found(missing_name(kind))),
        Verdict::Hidden => ApiError::not_found(&what),
        Verdict::Forbidden => ApiError::forbidden(&capability),
    };
    Err(error.denied(&capability, Some((kind.as_str(), id.to_string()))))
}

/// What a missing entity is called in its `404` (a credential is granted as an `integration`).
fn missing_name(kind: Entity) -> &'static str {
    match kind {
        Entity::Flow => "flow",
        Entity::FlowGroup => "flow group",
        Entity::Integration => "credential",
        Entity::Secret => "secret",
    }
}

async fn require(tx: &mut db::Tx, principal: &Principal, target: Target, need: Level) -> ApiResult<()> {
    let (kind, id) = match target {
        Target::Flow(id) => (Entity::Flow, id.as_uuid()),
        Target::FlowGroup(id) => (Entity::FlowGroup, id.as_uuid()),
        Target::Integration(id) => (Entity::Integration, id.as_uuid()),
        Target::Secret(id) => (Entity::Secret, id),
    };
    let reach = store::reach(tx, company(principal), user(principal), target).await?;
    check(reach, principal.is_admin(), need, kind, id)
}

fn company(principal: &Principal) -> CompanyId {
    CompanyId(principal.company_id)
}

fn user(principal: &Principal) -> UserId {
    UserId(principal.user_id)
}

/// Requires `need` on a flow; `404` if the flow is missing or invisible to the caller.
pub async fn require_flow(tx: &mut db::Tx, principal: &Principal, flow_id: Uuid, need: Level) -> ApiResult<()> {
    require(tx, principal, Target::Flow(FlowId(flow_id)), need).await
}

pub async fn require_flow_group(tx: &mut db::Tx, principal: &Principal, group_id: Uuid, need: Level) -> ApiResult<()> {
    require(tx, principal, Target::FlowGroup(FlowGroupId(group_id)), need).await
}

/// Requires `need` on a credential; `404` if it is missing or invisible to the caller.
pub async fn require_integration(
    tx: &mut db::Tx,
    principal: &Principal,
    credential_id: Uuid,
    need: Level,
) -> ApiResult<()> {
    require(tx, principal, Target::Integration(CredentialId(credential_id)), need).await
}

/// Replacing or deleting a secret KV value needs `edit` on it (or admin): who
/// may write KV in general may not swap a secret another member's flows send.
/// The caller has found the secret, so holding nothing on it is a `403` too.
pub async fn require_secret_edit(tx: &mut db::Tx, principal: &Principal, secret_id: Uuid) -> ApiResult<()> {
    if principal.is_admin() {
        return Ok(());
    }
    let reach = store::reach(tx, company(principal), user(principal), Target::Secret(secret_id)).await?;
    match reach {
        Reach::Held(Some(Level::Edit)) => Ok(()),
        _ => Err(ApiError::forbidden("secret:edit").denied("secret:edit", Some(("secret", secret_id.to_string())))),
    }
}

fn entity(entity_type: &str) -> Result<Entity, StoreError> {
    entity_type
        .parse()
        .map_err(|e| StoreError::corrupt(format!("grants on {entity_type:?}: {e}")))
}

/// Removes every grant on an entity that is being deleted, in the deleting transaction.
pub async fn revoke_all(tx: &mut db::Tx, entity_type: &str, entity_id: Uuid) -> Result<(), StoreError> {
    store::revoke_all_in_tenant(tx, entity(entity_type)?, entity_id).await
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
    let kind = entity(entity_type)?;
    let created = store::grant_creator(tx, company(principal), user(principal), kind, entity_id).await?;
    if let Some(id) = created {
        let grant = json!({"id": id, "subject_type": "user", "subject_id": principal.user_id,
                           "entity_type": kind, "entity_id": entity_id, "level": "edit", "implicit": true});
        let entry = principal.audit("grant.create", "grant", id);
        audit::record(tx, &[entry.change(None::<&Value>, Some(&grant))]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;

    fn status(result: ApiResult<()>) -> Option<StatusCode> {
        result.err().map(|e| e.into_response().status())
    }

    #[test]
    fn a_verdict_answers_with_its_status() {
        let id = Uuid::nil();
        let kind = Entity::Flow;
        assert_eq!(
            status(check(Reach::Held(Some(Level::Edit)), false, Level::Edit, kind, id)),
            None
        );
        assert_eq!(
            status(check(Reach::Held(Some(Level::View)), false, Level::Execute, kind, id)),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(check(Reach::Held(None), false, Level::View, kind, id)),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            status(check(Reach::Missing, true, Level::View, kind, id)),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(status(check(Reach::Held(None), true, Level::Edit, kind, id)), None);
    }

    #[test]
    fn refusals_of_what_exists_are_denials_and_a_missing_entity_is_not() {
        let id = Uuid::nil();
        let denied = |r: ApiResult<()>| matches!(r, Err(ApiError::Client { denial: Some(_), .. }));
        let kind = Entity::Integration;
        assert!(denied(check(Reach::Held(None), false, Level::View, kind, id)));
        assert!(denied(check(
            Reach::Held(Some(Level::View)),
            false,
            Level::Edit,
            kind,
            id
        )));
        assert!(!denied(check(Reach::Missing, false, Level::View, kind, id)));
    }

    #[test]
    fn creator_grants_name_entities_the_schema_allows() {
        for raw in ["flow", "flow_group", "integration", "secret"] {
            assert_eq!(entity(raw).unwrap().as_str(), raw);
        }
        assert!(entity("robot").is_err());
    }
}
