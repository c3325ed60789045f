//! `/api/v1/flows/{flow_id}/versions`: a flow's deployed versions, each one's
//! frozen definition, and what changed between two of them (or a version and
//! the draft). Reading needs `flow:read` and a `view` grant on the flow.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::access::{self, Level};
use crate::authz::{Authorized, FlowRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, ByNumber, Id, Page};
use crate::openapi::{AnyJson, ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::db;
use floq_shared::flow::diff::{self, DefinitionDiff};
use floq_shared::flows::{self, VersionDetail, VersionSummary};
use floq_shared::ids::{CompanyId, FlowId};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(compare))
        .routes(routes!(show))
}

#[derive(ToSchema)]
#[schema(as = FlowVersion)]
#[allow(dead_code)] // documentation of `flows::VersionSummary`, which the store returns
struct VersionDoc {
    version: i32,
    deployed_at: DateTime<Utc>,
    /// Who deployed it; `null` for versions deployed before this was recorded.
    deployed_by: Option<Uuid>,
}

#[derive(ToSchema)]
#[schema(as = FlowVersionDetail)]
#[allow(dead_code)] // documentation of `flows::VersionDetail`
struct VersionDetailDoc {
    version: i32,
    deployed_at: DateTime<Utc>,
    deployed_by: Option<Uuid>,
    /// The frozen definition (docs/nodes.md).
    #[schema(value_type = AnyJson)]
    definition: Value,
}

page!(FlowVersionPage, VersionDoc);

/// `view` on the flow, answered as the flow's own `404`/`403`.
async fn viewable(state: &AppState, auth: &Authorized<FlowRead>, flow_id: Uuid) -> ApiResult<db::Tx> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, flow_id, Level::View).await?;
    Ok(tx)
}

/// The flow's deployed versions, newest first.
#[utoipa::path(get, operation_id = "flow_versions_list", path = "/api/v1/flows/{flow_id}/versions", tag = "flows",
    params(("flow_id" = Uuid, Path), PageParams),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "A page of versions, newest first", body = FlowVersionPage),
        (status = 404, description = "No such flow visible to the caller", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    auth: Authorized<FlowRead>,
    Id(flow_id): Id,
    page: Page<ByNumber>,
) -> ApiResult<Json<Value>> {
    let mut tx = viewable(&state, &auth, flow_id).await?;
    let company_id = CompanyId(auth.principal.company_id);
    let items = flows::versions_page(&mut tx, company_id, FlowId(flow_id), page.after.0, page.limit).await?;
    db::commit(tx).await?;
    Ok(Json(page.answer(items, |v: &VersionSummary| ByNumber(v.version))))
}

/// A version number from the path or a query: a positive integer.
fn version_number(raw: &str) -> Option<i32> {
    raw.parse::<i32>().ok().filter(|v| *v > 0)
}

async fn fetch_version(
    tx: &mut db::Tx,
    company_id: CompanyId,
    flow_id: Uuid,
    version: i32,
) -> ApiResult<VersionDetail> {
    flows::version_detail(tx, company_id, FlowId(flow_id), version)
        .await?
        .ok_or_else(|| ApiError::not_found("flow version"))
}

/// One deployed version with its definition.
#[utoipa::path(get, operation_id = "flow_versions_show", path = "/api/v1/flows/{flow_id}/versions/{version}", tag = "flows",
    params(("flow_id" = Uuid, Path), ("version" = i32, Path, minimum = 1)),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "The version", body = VersionDetailDoc),
        (status = 404, description = "No such flow visible to the caller, or no such version", body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    auth: Authorized<FlowRead>,
    Path((flow_id, version)): Path<(String, String)>,
) -> ApiResult<Json<VersionDetail>> {
    let Ok(flow_id) = Uuid::parse_str(&flow_id) else {
        return Err(ApiError::not_found("flow"));
    };
    let mut tx = viewable(&state, &auth, flow_id).await?;
    // A path that is no version number names no version.
    let version = version_number(&version).ok_or_else(|| ApiError::not_found("flow version"))?;
    let found = fetch_version(&mut tx, CompanyId(auth.principal.company_id), flow_id, version).await?;
    db::commit(tx).await?;
    Ok(Json(found))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DiffQuery {
    /// The older side: a version number or `draft`.
    #[param(required = true)]
    from: Option<String>,
    /// The newer side: a version number or `draft`.
    #[param(required = true)]
    to: Option<String>,
}

/// One side of a diff.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Draft,
    Version(i32),
}

impl Side {
    fn parse(field: &str, raw: Option<&str>) -> ApiResult<Side> {
        let Some(raw) = raw else {
            return Err(ApiError::validation(
                "a query parameter is missing",
                json!([{"field": field, "message": "is required: a version number or `draft`"}]),
            ));
        };
        match raw {
            "draft" => Ok(Side::Draft),
            _ => version_number(raw).map(Side::Version).ok_or_else(|| {
                ApiError::validation(
                    "a query parameter is invalid",
                    json!([{"field": field, "message": "must be a version number (1 or more) or `draft`"}]),
                )
            }),
        }
    }

    fn shown(self) -> Value {
        match self {
            Side::Draft => json!("draft"),
            Side::Version(v) => json!(v),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct FlowDiff {
    /// A version number or `"draft"`.
    #[schema(value_type = AnyJson)]
    from: Value,
    #[schema(value_type = AnyJson)]
    to: Value,
    #[serde(flatten)]
    #[schema(value_type = FlowDiffBody)]
    diff: DefinitionDiff,
}

// The documented shape of `diff::DefinitionDiff`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct FlowDiffBody {
    /// `{added: [node], removed: [node], changed: [{id, fields: [{field, before, after}]}]}`.
    #[schema(value_type = AnyJson)]
    nodes: Value,
    /// `{added: [edge], removed: [edge]}`.
    #[schema(value_type = AnyJson)]
    edges: Value,
    /// The definition's other top-level fields that changed: `[{field, before, after}]`.
    #[schema(value_type = Vec<AnyJson>)]
    fields: Vec<Value>,
}

/// What changed from `from` to `to`: nodes added, removed and changed (each
/// changed top-level field before and after), edges added and removed, and
/// the other top-level fields changed.
#[utoipa::path(get, operation_id = "flow_versions_diff", path = "/api/v1/flows/{flow_id}/versions/diff", tag = "flows",
    params(("flow_id" = Uuid, Path), DiffQuery),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "The difference", body = FlowDiff),
        (status = 404, description = "No such flow visible to the caller, or no such version", body = ErrorBody),
        (status = 422, description = "`from` or `to` is neither a version number nor `draft`", body = ErrorBody)))]
async fn compare(
    State(state): State<AppState>,
    auth: Authorized<FlowRead>,
    Id(flow_id): Id,
    ApiQuery(q): ApiQuery<DiffQuery>,
) -> ApiResult<Json<FlowDiff>> {
    let from = Side::parse("from", q.from.as_deref())?;
    let to = Side::parse("to", q.to.as_deref())?;
    let mut tx = viewable(&state, &auth, flow_id).await?;
    let company_id = CompanyId(auth.principal.company_id);
    let mut definitions = Vec::with_capacity(2);
    for side in [from, to] {
        definitions.push(match side {
            Side::Draft => {
                flows::find(&mut tx, company_id, FlowId(flow_id))
                    .await?
                    .ok_or_else(|| ApiError::not_found("flow"))?
                    .definition
            }
            Side::Version(v) => fetch_version(&mut tx, company_id, flow_id, v).await?.definition,
        });
    }
    db::commit(tx).await?;
    Ok(Json(FlowDiff {
        from: from.shown(),
        to: to.shown(),
        diff: diff::diff(&definitions[0], &definitions[1]),
    }))
}
