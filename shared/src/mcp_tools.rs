//! Flows as MCP tools: the one home of the `flow_mcp_tools` table's
//! statements (migration 0030). A flow an editor opts in has one tool: a
//! name unique in its company, a description and a JSON Schema for its
//! arguments (validated by the API before it gets here).
//!
//! Every statement runs in the caller's tenant transaction and names the
//! company explicitly beside row-level security. Which tools a caller may
//! list or call is answered in the same statement, by `floq_may_use` (admin,
//! or an `execute` grant on the flow or its group); whether the caller's
//! role may execute at all is the API's.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowId, UserId};

/// A flow's tool as its company sees it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Tool {
    pub flow_id: FlowId,
    pub tool_name: String,
    pub description: String,
    pub input_schema: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "t.flow_id, t.tool_name, t.description, t.input_schema, t.created_at, t.updated_at";

/// The tool of a flow, if it has one.
pub async fn find(tx: &mut Tx, company_id: CompanyId, flow_id: FlowId) -> Result<Option<Tool>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flow_mcp_tools t WHERE t.company_id = $1 AND t.flow_id = $2"
    )))
    .bind(company_id)
    .bind(flow_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// What an editor sets.
pub struct Definition<'a> {
    pub tool_name: &'a str,
    pub description: &'a str,
    pub input_schema: &'a Value,
}

/// Opts a flow in, or changes its tool. A name another flow of the company
/// uses is a conflict on `tool_name`.
pub async fn put(tx: &mut Tx, company_id: CompanyId, flow_id: FlowId, def: Definition<'_>) -> Result<Tool, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO flow_mcp_tools AS t (flow_id, company_id, tool_name, description, input_schema)
         VALUES ($2, $1, $3, $4, $5)
         ON CONFLICT (flow_id) DO UPDATE
            SET tool_name = EXCLUDED.tool_name, description = EXCLUDED.description,
                input_schema = EXCLUDED.input_schema, updated_at = now()
         RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(flow_id)
    .bind(def.tool_name)
    .bind(def.description)
    .bind(def.input_schema)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Takes a flow's tool away; whether there was one.
pub async fn delete(tx: &mut Tx, company_id: CompanyId, flow_id: FlowId) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM flow_mcp_tools WHERE company_id = $1 AND flow_id = $2")
        .bind(company_id)
        .bind(flow_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Tools `user` may call: of live, deployed flows they may run (admin, or an
/// `execute` grant on the flow or its group).
const CALLABLE: &str = "JOIN flows f ON f.id = t.flow_id AND f.company_id = t.company_id
     WHERE t.company_id = $1 AND f.deleted_at IS NULL AND f.latest_version IS NOT NULL
       AND floq_may_use($2, 'flow', f.id, f.group_id)";

/// One page of the tools `user` may call, by name, after `after`.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    user: UserId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Tool>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flow_mcp_tools t {CALLABLE}
            AND ($3::text IS NULL OR t.tool_name > $3)
          ORDER BY t.tool_name LIMIT $4"
    )))
    .bind(company_id)
    .bind(user)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// The tool called `name`, if `user` may call it.
pub async fn callable(
    tx: &mut Tx,
    company_id: CompanyId,
    user: UserId,
    name: &str,
) -> Result<Option<Tool>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flow_mcp_tools t {CALLABLE} AND t.tool_name = $3"
    )))
    .bind(company_id)
    .bind(user)
    .bind(name)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}
