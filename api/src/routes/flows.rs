//! `/api/v1/flows`: drafts, and deploying them as immutable numbered versions.

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
use crate::auth::Principal;
use crate::authz::{Authorized, FlowEdit, FlowRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Id, ValidJson, page_limit};
use crate::openapi::{AnyJson, ErrorBody, page};
use crate::state::AppState;
use floq_shared::flow;
use floq_shared::flow::reach::{self, Target};
use floq_shared::flows::{self, Flow};
use floq_shared::ids::{FlowGroupId, FlowId};
use floq_shared::{credentials, db, kv};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(deploy))
}

#[derive(ToSchema)]
#[schema(as = Flow)]
#[allow(dead_code)] // documentation of `flows::Flow`, which the store returns
struct FlowDoc {
    id: Uuid,
    name: String,
    /// The draft's definition (docs/nodes.md).
    #[schema(value_type = AnyJson)]
    definition: Value,
    latest_version: Option<i32>,
    group_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateFlow {
    /// 1 to 200 characters, trimmed.
    #[validate(custom(function = "flow_name"))]
    name: String,
    /// `{nodes, edges}` (docs/nodes.md); validated against the node types' schemas.
    #[schema(value_type = AnyJson)]
    definition: Value,
    group_id: Option<Uuid>,
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateFlow {
    #[validate(custom(function = "flow_name"))]
    name: Option<String>,
    #[schema(value_type = AnyJson, required = false)]
    definition: Option<Value>,
    /// Absent: unchanged; `null`: out of its group; an id: into that group.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    group_id: Option<Option<Uuid>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Uuid>>, D::Error> {
    Option::<Uuid>::deserialize(d).map(Some)
}

/// Names are stored trimmed, so the rule applies to the trimmed text.
fn flow_name(raw: &str) -> Result<(), validator::ValidationError> {
    if (1..=200).contains(&raw.trim().chars().count()) {
        Ok(())
    } else {
        Err(validator::ValidationError::new("length").with_message("must be 1 to 200 characters".into()))
    }
}

/// A definition checked as saved and as deployed: floq's validation with the
/// node types this API knows (its plugins' included), the deadline cap, then
/// the plugins' own policies for the company (`node-policy`, docs/plugins.md).
fn definition(raw: &Value, state: &AppState, company_id: Uuid) -> ApiResult<Value> {
    let deadline_max = u64::try_from(state.config.flow_deadline_max.as_millis()).unwrap_or(u64::MAX);
    let def = flow::validate_in(raw, state.plugins.table())
        .and_then(|def| flow::check_deadline(&def, deadline_max).map(|()| def))
        .and_then(|def| {
            let refused = state.plugins.check_flow(company_id, &def);
            if refused.is_empty() { Ok(def) } else { Err(refused) }
        })
        .map_err(|errors| {
            ApiError::validation(
                "the flow definition is invalid",
                serde_json::to_value(errors).unwrap_or_default(),
            )
        })?;
    Ok(serde_json::to_value(def).expect("definitions serialize"))
}

/// A flow may only reach (credentials, sub-flows, secret KV values) what
/// `principal` may use: `execute` on each, or admin. Unknown, foreign and
/// unusable references are told apart from nothing: each is "not one you may
/// use". Checked for the author on save and for the deployer on deploy; the
/// worker checks the deployer again when the flow runs.
async fn usable_reach(tx: &mut db::Tx, principal: &Principal, def: &Value) -> ApiResult<()> {
    let (refs, misuse) = reach::references(def);
    let mut errors: Vec<Value> = misuse
        .iter()
        .map(|m| json!({"field": m.field, "message": m.message}))
        .collect();
    for r in refs {
        let usable: Option<bool> = match r.target {
            Target::Credential => match Uuid::parse_str(&r.name) {
                Ok(id) => {
                    credentials::may_use(tx, principal.company_id.into(), id.into(), principal.user_id.into()).await?
                }
                Err(_) => None,
            },
            Target::SubFlow => match Uuid::parse_str(&r.name) {
                Ok(id) => flows::may_run(tx, principal.company_id.into(), id.into(), principal.user_id.into()).await?,
                Err(_) => None,
            },
            Target::Secret => {
                kv::may_use_secret(tx, principal.company_id.into(), &r.name, principal.user_id.into()).await?
            }
        };
        if usable != Some(true) {
            let what = match r.target {
                Target::Credential => "no credential you may use has this id",
                Target::SubFlow => "no flow you may run has this id",
                Target::Secret => "no secret value you may use has this key",
            };
            errors.push(json!({"field": r.field, "message": what}));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(
            "the flow reaches what it may not use",
            json!(errors),
        ))
    }
}

/// Creates a draft; its creator gets `edit` on it.
#[utoipa::path(post, operation_id = "flows_create", path = "/api/v1/flows", tag = "flows", request_body = CreateFlow,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 201, description = "Created", body = FlowDoc),
        (status = 404, description = "The group is not one the caller may see", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    ValidJson(body): ValidJson<CreateFlow>,
) -> ApiResult<(StatusCode, Json<Flow>)> {
    let name = body.name.trim();
    let company_id = auth.principal.company_id;
    let definition = definition(&body.definition, &state, company_id)?;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    if let Some(group) = body.group_id {
        access::require_flow_group(&mut tx, &auth.principal, group, Level::Edit).await?;
    }
    usable_reach(&mut tx, &auth.principal, &definition).await?;
    let new = flows::NewFlow {
        id: FlowId(Uuid::now_v7()),
        company_id: company_id.into(),
        name,
        definition: &definition,
        group_id: body.group_id.map(FlowGroupId),
    };
    let flow = flows::create(&mut tx, new).await?;
    let entry = auth.principal.audit("flow.create", "flow", flow.id);
    audit::record(&mut tx, &[entry.change(None::<&Flow>, Some(&flow))]).await?;
    access::grant_creator(&mut tx, &auth.principal, "flow", flow.id.into()).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(flow)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Rows on the page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

page!(FlowPage, FlowDoc);

/// The flows the caller may see, newest first.
#[utoipa::path(get, operation_id = "flows_list", path = "/api/v1/flows", tag = "flows", params(ListQuery),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "A page of flows", body = FlowPage)))]

async fn list(
    State(state): State<AppState>,
    auth: Authorized<FlowRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let viewer = flows::Viewer {
        admin: auth.principal.is_admin(),
        user_id: auth.principal.user_id.into(),
    };
    let company_id = auth.principal.company_id.into();
    let visible = access::visible_flow_sql("$4", "$5");
    let flows = flows::page(&mut tx, company_id, q.cursor.map(FlowId), limit, viewer, &visible).await?;
    db::commit(tx).await?;
    let next_cursor = (flows.len() as i64 == limit)
        .then(|| flows.last().map(|f| f.id))
        .flatten();
    Ok(Json(json!({"items": flows, "next_cursor": next_cursor})))
}

#[utoipa::path(get, operation_id = "flows_show", path = "/api/v1/flows/{flow_id}", tag = "flows", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "The flow and its draft", body = FlowDoc)))]
async fn show(State(state): State<AppState>, auth: Authorized<FlowRead>, Id(id): Id) -> ApiResult<Json<Flow>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::View).await?;
    let flow = fetch(&mut tx, &auth.principal, id).await?;
    db::commit(tx).await?;
    Ok(Json(flow))
}

async fn fetch(tx: &mut db::Tx, principal: &Principal, id: Uuid) -> ApiResult<Flow> {
    flows::find(tx, principal.company_id.into(), id.into())
        .await?
        .ok_or_else(|| ApiError::not_found("flow"))
}

/// Edits the draft; absent fields stay.
#[utoipa::path(put, operation_id = "flows_update", path = "/api/v1/flows/{flow_id}", tag = "flows", params(("flow_id" = Uuid, Path)),
    request_body = UpdateFlow,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 200, description = "The edited flow", body = FlowDoc),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
    ValidJson(body): ValidJson<UpdateFlow>,
) -> ApiResult<Json<Flow>> {
    let name = body.name.as_deref().map(str::trim);
    let definition = body
        .definition
        .as_ref()
        .map(|raw| definition(raw, &state, auth.principal.company_id))
        .transpose()?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, &auth.principal, id).await?;
    if let Some(def) = &definition {
        usable_reach(&mut tx, &auth.principal, def).await?;
    }
    if let Some(Some(group)) = body.group_id {
        access::require_flow_group(&mut tx, &auth.principal, group, Level::Edit).await?;
    }
    let edit = flows::Edit {
        name,
        definition: definition.as_ref(),
        group_id: body.group_id.map(|g| g.map(FlowGroupId)),
    };
    let flow = flows::update(&mut tx, auth.principal.company_id.into(), id.into(), edit)
        .await?
        .ok_or_else(|| ApiError::not_found("flow"))?;
    let entry = auth.principal.audit("flow.update", "flow", id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&flow))]).await?;
    db::commit(tx).await?;
    Ok(Json(flow))
}

/// Deleting keeps the row (and its versions) so past runs stay readable.
#[utoipa::path(delete, operation_id = "flows_remove", path = "/api/v1/flows/{flow_id}", tag = "flows", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(state): State<AppState>, auth: Authorized<FlowEdit>, Id(id): Id) -> ApiResult<StatusCode> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let before = fetch(&mut tx, &auth.principal, id).await?;
    flows::delete(&mut tx, auth.principal.company_id.into(), id.into()).await?;
    // A deleted flow is no MCP tool, and its tool's name is free again.
    floq_shared::mcp_tools::delete(&mut tx, auth.principal.company_id.into(), id.into()).await?;
    let entry = auth.principal.audit("flow.delete", "flow", id);
    audit::record(&mut tx, &[entry.change(Some(&before), None::<&Flow>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
struct Deployed {
    flow_id: Uuid,
    version: i32,
}

/// Freezes the draft as the next immutable version.
#[utoipa::path(post, operation_id = "flows_deploy", path = "/api/v1/flows/{flow_id}/deploy", tag = "flows", params(("flow_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 201, description = "The new version", body = Deployed),
        (status = 422, description = "The draft reaches what the deployer may not use", body = ErrorBody)))]
async fn deploy(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
) -> ApiResult<(StatusCode, Json<Deployed>)> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    // The row lock taken here serializes concurrent deploys of one flow (numbers never collide)
    // and holds off edits, so the definition checked below is the one frozen.
    let version = flows::next_version(&mut tx, company_id.into(), id.into())
        .await?
        .ok_or_else(|| ApiError::not_found("flow"))?;
    let draft = fetch(&mut tx, &auth.principal, id).await?;
    // Checked again: a policy or a node type may have changed since the draft was saved.
    definition(&draft.definition, &state, company_id)?;
    // The version runs with what its deployer may use, so the deployer must be able to use all of it now.
    usable_reach(&mut tx, &auth.principal, &draft.definition).await?;
    let frozen = flows::NewVersion {
        company_id: company_id.into(),
        flow_id: id.into(),
        version,
        definition: &draft.definition,
        deployed_by: auth.principal.user_id.into(),
    };
    flows::insert_version(&mut tx, frozen).await?;
    let deployed = Deployed { flow_id: id, version };
    let entry = auth
        .principal
        .audit("flow.deploy", "flow_version", format!("{id}:{version}"));
    audit::record(&mut tx, &[entry.change(None::<&Deployed>, Some(&deployed))]).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(Deployed { flow_id: id, version })))
}
