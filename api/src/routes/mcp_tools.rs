//! `/api/v1/flows/{id}/mcp`: an editor opts a flow in as an MCP tool (its
//! name, description and JSON Schema of arguments), changes it, or takes it
//! away. What MCP clients then see and call is `/mcp` (`routes/mcp.rs`).

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
use crate::authz::{Authorized, FlowEdit};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, ValidJson};
use crate::mcp;
use crate::openapi::{AnyJson, ErrorBody};
use crate::state::AppState;
use floq_shared::db;
use floq_shared::mcp_tools::{self, Definition, Tool};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, put, remove))
}

#[derive(ToSchema)]
#[schema(as = McpTool)]
#[allow(dead_code)] // documentation of `mcp_tools::Tool`, which the store returns
struct ToolDoc {
    flow_id: Uuid,
    tool_name: String,
    description: String,
    /// JSON Schema (an object schema) of the tool's arguments.
    #[schema(value_type = AnyJson)]
    input_schema: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Whether the flow is an MCP tool, and its definition.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct McpToolState {
    enabled: bool,
    tool: Option<ToolDoc>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PutMcpTool)]
struct PutTool {
    /// 1 to 128 of `A-Z a-z 0-9 _ - .`, unique in the company.
    #[validate(length(min = 1, max = 128))]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    tool_name: String,
    /// What the tool does, for the model choosing it.
    #[validate(length(min = 1, max = 4000))]
    #[schema(min_length = 1, max_length = 4000)]
    description: String,
    /// JSON Schema of the arguments; its root must be `"type": "object"`.
    #[schema(value_type = AnyJson)]
    input_schema: Value,
}

#[utoipa::path(get, operation_id = "mcp_tools_show", path = "/api/v1/flows/{flow_id}/mcp", tag = "mcp", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 200, description = "The flow's MCP tool, if it is one", body = McpToolState),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn show(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let tool = mcp_tools::find(&mut tx, company_id.into(), id.into()).await?;
    db::commit(tx).await?;
    Ok(Json(match tool {
        Some(t) => json!({"enabled": true, "tool": t}),
        None => json!({"enabled": false}),
    }))
}

/// Opts the flow in as an MCP tool, or changes its tool.
#[utoipa::path(put, operation_id = "mcp_tools_put", path = "/api/v1/flows/{flow_id}/mcp", tag = "mcp", params(("flow_id" = Uuid, Path)),
    request_body = PutTool,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 201, description = "The flow is now a tool", body = ToolDoc),
        (status = 200, description = "The tool changed", body = ToolDoc),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody),
        (status = 409, description = "Another flow's tool has this `tool_name` (`conflict`)", body = ErrorBody)))]
async fn put(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
    ValidJson(body): ValidJson<PutTool>,
) -> ApiResult<(StatusCode, Json<Tool>)> {
    let mut invalid = Vec::new();
    if !mcp::valid_tool_name(&body.tool_name) {
        invalid.push(json!({"field": "tool_name", "message": "must be 1 to 128 of A-Z a-z 0-9 _ - ."}));
    }
    if let Err(message) = mcp::check_input_schema(&body.input_schema) {
        invalid.push(json!({"field": "input_schema", "message": message}));
    }
    if !invalid.is_empty() {
        return Err(ApiError::validation("the MCP tool is invalid", Value::Array(invalid)));
    }
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = mcp_tools::find(&mut tx, company_id.into(), id.into()).await?;
    let def = Definition {
        tool_name: &body.tool_name,
        description: body.description.trim(),
        input_schema: &body.input_schema,
    };
    let tool = mcp_tools::put(&mut tx, company_id.into(), id.into(), def).await?;
    let (status, action) = match before {
        None => (StatusCode::CREATED, "mcp_tool.enable"),
        Some(_) => (StatusCode::OK, "mcp_tool.update"),
    };
    let entry = auth.principal.audit(action, "flow", id);
    audit::record(&mut tx, &[entry.change(before.as_ref(), Some(&tool))]).await?;
    db::commit(tx).await?;
    Ok((status, Json(tool)))
}

/// The flow stops being an MCP tool.
#[utoipa::path(delete, operation_id = "mcp_tools_remove", path = "/api/v1/flows/{flow_id}/mcp", tag = "mcp", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 204, description = "No longer a tool"),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn remove(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<StatusCode> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = mcp_tools::find(&mut tx, company_id.into(), id.into())
        .await?
        .ok_or_else(|| ApiError::not_found("MCP tool"))?;
    mcp_tools::delete(&mut tx, company_id.into(), id.into()).await?;
    let entry = auth.principal.audit("mcp_tool.disable", "flow", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Tool>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
