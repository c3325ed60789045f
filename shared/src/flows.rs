//! Flows and their deployed versions: the one home of the `flows` and
//! `flow_versions` tables' statements. A flow is a draft the API edits; each
//! deploy freezes it as an immutable, numbered version the worker runs (and
//! caches: a version never changes once written).
//!
//! Every statement runs in the caller's tenant transaction (row-level
//! security) and names the company explicitly. This module never decides who
//! may do what: callers check grants first; the only grant questions asked
//! here are the ones a statement answers in the same breath
//! ([`may_run`], [`runnable`]). It never deletes a flow's row or versions:
//! past runs refer to them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::db::{StoreError, Tx};
use crate::flow::FlowDefinition;
use crate::ids::{CompanyId, FlowGroupId, FlowId, UserId};

/// A flow as its company sees it: the draft and the number of its latest version.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Flow {
    pub id: FlowId,
    pub name: String,
    /// The draft's definition (docs/nodes.md).
    pub definition: Value,
    pub latest_version: Option<i32>,
    pub group_id: Option<FlowGroupId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, definition, latest_version, group_id, created_at, updated_at";

/// A draft to create (its definition already validated).
pub struct NewFlow<'a> {
    pub id: FlowId,
    pub company_id: CompanyId,
    pub name: &'a str,
    pub definition: &'a Value,
    pub group_id: Option<FlowGroupId>,
}

pub async fn create(tx: &mut Tx, new: NewFlow<'_>) -> Result<Flow, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO flows (id, company_id, name, definition, group_id) VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    )))
    .bind(new.id)
    .bind(new.company_id)
    .bind(new.name)
    .bind(new.definition)
    .bind(new.group_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Who lists flows: admins see all of their company's, others what their grants show.
#[derive(Clone, Copy, Debug)]
pub struct Viewer {
    pub admin: bool,
    pub user_id: UserId,
}

/// One page of the flows `viewer` may see, newest first (by v7 id), before
/// `before`. `visible` is the grants visibility predicate over `f` with the
/// viewer's admin flag as `$4` and user as `$5`; it comes from the API's
/// access module until that predicate lives in `crate::access`.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    before: Option<FlowId>,
    limit: i64,
    viewer: Viewer,
    visible: &str,
) -> Result<Vec<Flow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flows f
          WHERE company_id = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR id < $2) AND {visible}
          ORDER BY id DESC LIMIT $3"
    )))
    .bind(company_id)
    .bind(before)
    .bind(limit)
    .bind(viewer.admin)
    .bind(viewer.user_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A flow that is not deleted.
pub async fn find(tx: &mut Tx, company_id: CompanyId, id: FlowId) -> Result<Option<Flow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flows WHERE company_id = $1 AND id = $2 AND deleted_at IS NULL"
    )))
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// An edit of a draft: `None` keeps a field as it is.
#[derive(Default)]
pub struct Edit<'a> {
    pub name: Option<&'a str>,
    pub definition: Option<&'a Value>,
    /// `Some(None)` takes the flow out of its group.
    pub group_id: Option<Option<FlowGroupId>>,
}

/// Edits a draft; `None` if the flow is gone.
pub async fn update(
    tx: &mut Tx,
    company_id: CompanyId,
    id: FlowId,
    edit: Edit<'_>,
) -> Result<Option<Flow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE flows SET name = COALESCE($3, name), definition = COALESCE($4, definition),
                group_id = CASE WHEN $5 THEN $6 ELSE group_id END, updated_at = now()
          WHERE company_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(id)
    .bind(edit.name)
    .bind(edit.definition)
    .bind(edit.group_id.is_some())
    .bind(edit.group_id.flatten())
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Marks a flow deleted; its row and versions stay so past runs stay readable.
pub async fn delete(tx: &mut Tx, company_id: CompanyId, id: FlowId) -> Result<(), StoreError> {
    sqlx::query("UPDATE flows SET deleted_at = now() WHERE company_id = $1 AND id = $2")
        .bind(company_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes the next version number of a flow; `None` if the flow is gone. The
/// row lock this takes serializes concurrent deploys of one flow (numbers
/// never collide) and holds off edits until the caller's transaction ends,
/// so the draft it then reads is the one it freezes.
pub async fn next_version(tx: &mut Tx, company_id: CompanyId, id: FlowId) -> Result<Option<i32>, StoreError> {
    sqlx::query_scalar(
        "UPDATE flows SET latest_version = COALESCE(latest_version, 0) + 1
          WHERE company_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING latest_version",
    )
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A version to freeze, numbered by [`next_version`] in the same transaction.
pub struct NewVersion<'a> {
    pub company_id: CompanyId,
    pub flow_id: FlowId,
    pub version: i32,
    pub definition: &'a Value,
    pub deployed_by: UserId,
}

pub async fn insert_version(tx: &mut Tx, new: NewVersion<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO flow_versions (company_id, flow_id, version, definition, deployed_by)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new.company_id)
    .bind(new.flow_id)
    .bind(new.version)
    .bind(new.definition)
    .bind(new.deployed_by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A deployed version as the worker runs it.
#[derive(Debug)]
pub struct Version {
    pub definition: FlowDefinition,
    /// `None` for versions deployed before this was recorded.
    pub deployed_by: Option<UserId>,
}

/// One deployed version of a flow (deleted flows' versions too: a queued run still runs).
pub async fn version(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    version: i32,
) -> Result<Option<Version>, StoreError> {
    let row: Option<(sqlx::types::Json<FlowDefinition>, Option<UserId>)> = sqlx::query_as(
        "SELECT definition, deployed_by FROM flow_versions WHERE company_id = $1 AND flow_id = $2 AND version = $3",
    )
    .bind(company_id)
    .bind(flow_id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(definition, deployed_by)| Version {
        definition: definition.0,
        deployed_by,
    }))
}

/// Whether `user` may use (run, as a sub-flow) a flow that is not deleted;
/// `None` if there is no such flow.
pub async fn may_run(tx: &mut Tx, company_id: CompanyId, id: FlowId, user: UserId) -> Result<Option<bool>, StoreError> {
    sqlx::query_scalar(
        "SELECT floq_may_use($3, 'flow', id, group_id) FROM flows WHERE company_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(company_id)
    .bind(id)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A deployed flow a running flow wants to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runnable {
    /// The version a run accepted at `as_of` calls ([`runnable`]).
    pub version: i32,
    /// Whether the caller's deployer may run it (grants can be revoked after deploy).
    pub permitted: bool,
}

/// A flow a run accepted at `as_of` calls, if it is deployed and not
/// deleted, and whether `deployer` may run it (never, for a version with no
/// recorded deployer). The version is pinned by the run's accept time, so
/// every execution of one run (a resumed one too) calls the same: the latest
/// version deployed at or before `as_of`, or the first version when the flow
/// was first deployed after it.
pub async fn runnable(
    tx: &mut Tx,
    company_id: CompanyId,
    id: FlowId,
    deployer: Option<UserId>,
    as_of: DateTime<Utc>,
) -> Result<Option<Runnable>, StoreError> {
    let row: Option<(i32, bool)> = sqlx::query_as(
        "SELECT COALESCE((SELECT max(v.version) FROM flow_versions v WHERE v.flow_id = f.id AND v.created_at <= $4),
                         (SELECT min(v.version) FROM flow_versions v WHERE v.flow_id = f.id)),
                COALESCE(floq_may_use($3, 'flow', f.id, f.group_id), false)
           FROM flows f
          WHERE f.company_id = $1 AND f.id = $2 AND f.deleted_at IS NULL AND f.latest_version IS NOT NULL",
    )
    .bind(company_id)
    .bind(id)
    .bind(deployer)
    .bind(as_of)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(version, permitted)| Runnable { version, permitted }))
}

/// A flow's latest version number: `None` if there is no such flow (or it is
/// deleted), `Some(None)` if it was never deployed.
pub async fn latest_version(tx: &mut Tx, company_id: CompanyId, id: FlowId) -> Result<Option<Option<i32>>, StoreError> {
    sqlx::query_scalar("SELECT latest_version FROM flows WHERE company_id = $1 AND id = $2 AND deleted_at IS NULL")
        .bind(company_id)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// A deployed version as a listing shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct VersionSummary {
    pub version: i32,
    pub deployed_at: DateTime<Utc>,
    /// `None` for versions deployed before this was recorded.
    pub deployed_by: Option<UserId>,
}

/// A deployed version with its frozen definition, as the API shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct VersionDetail {
    pub version: i32,
    pub deployed_at: DateTime<Utc>,
    pub deployed_by: Option<UserId>,
    pub definition: Value,
}

/// One page of a flow's versions, newest first, below `before`: one range
/// of the `flow_versions` primary key `(flow_id, version)`.
pub async fn versions_page(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    before: i32,
    limit: i64,
) -> Result<Vec<VersionSummary>, StoreError> {
    sqlx::query_as(
        "SELECT version, created_at AS deployed_at, deployed_by FROM flow_versions
          WHERE company_id = $1 AND flow_id = $2 AND version < $3 ORDER BY version DESC LIMIT $4",
    )
    .bind(company_id)
    .bind(flow_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// One deployed version with its definition as stored; `None` if there is no such version.
pub async fn version_detail(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    version: i32,
) -> Result<Option<VersionDetail>, StoreError> {
    sqlx::query_as(
        "SELECT version, created_at AS deployed_at, deployed_by, definition FROM flow_versions
          WHERE company_id = $1 AND flow_id = $2 AND version = $3",
    )
    .bind(company_id)
    .bind(flow_id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}
