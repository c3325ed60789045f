//! Starting runs and reading their outcome.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::accept::{Accepted, RunRequest};
use crate::access::{self, Level};
use crate::audit;
use crate::auth::Principal;
use crate::authz::{Authorized, FlowExecute, RunRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Id, ValidJson, page_limit};
use crate::openapi::{AnyJson, ErrorBody, page};
use crate::state::AppState;
use floq_shared::ids::{CompanyId, FlowId, RunId, UserId};
use floq_shared::queue::Control;
use floq_shared::run::{RunStatus, Trigger};
use floq_shared::runs::{cancel, query};
use floq_shared::{db, flows};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(cancel))
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartRun {
    /// The run's `$input`; `{}` when absent.
    #[serde(default = "empty_object")]
    #[schema(value_type = AnyJson)]
    input: Value,
}

/// `202`: the run is queued (committed, it will run).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
pub(super) struct RunQueued {
    run_id: Uuid,
    version: i32,
    /// `queued`
    status: String,
}

/// `200`: an `Idempotency-Key` seen within 24 h; the first run's id.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct RunReplayed {
    run_id: Uuid,
    idempotent_replay: bool,
}

fn empty_object() -> Value {
    json!({})
}

/// `Idempotency-Key`: 1-255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::validation(
            "the Idempotency-Key header is invalid",
            json!([{"field": "Idempotency-Key", "message": "must be 1 to 255 visible ASCII characters"}]),
        )),
    }
}

/// Runs the flow's latest deployed version.
#[utoipa::path(post, operation_id = "runs_start", path = "/api/v1/flows/{flow_id}/runs", tag = "runs",
    params(("flow_id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; a repeat within 24 h answers the first run")),
    request_body = StartRun,
    security(("api_key" = ["flow:execute"]), ("session" = ["flow:execute"])),
    responses((status = 202, description = "Queued", body = RunQueued),
        (status = 200, description = "A repeated `Idempotency-Key`", body = RunReplayed),
        (status = 403, description = "A grant below `execute`, or the role lacks `flow:execute`", body = ErrorBody),
        (status = 409, description = "The flow was never deployed (`not_deployed`)", body = ErrorBody),
        (status = 429, description = "Too many runs started for the flow or company (`rate_limited`), or too many of the company's runs waiting (`company_backlog_full`); see `Retry-After`", body = ErrorBody),
        (status = 503, description = "Too many runs waiting across the deployment (`backlog_full`); see `Retry-After`", body = ErrorBody)))]
async fn start(
    State(state): State<AppState>,
    auth: Authorized<FlowExecute>,
    Id(flow_id): Id,
    headers: HeaderMap,
    ValidJson(body): ValidJson<StartRun>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let idempotency_key = idempotency_key(&headers)?;
    state.trigger_limits.check(auth.principal.company_id, flow_id)?;
    let request = RunRequest {
        company_id: auth.principal.company_id,
        grantee: (!auth.principal.is_admin()).then_some(auth.principal.user_id),
        flow_id,
        input: body.input,
        trigger: Trigger::Api,
        actor: auth.principal.actor(),
        idempotency_key,
        wait: false,
        version: None,
        retry_of: None,
    };
    match state.acceptor.accept(request).await {
        Ok(Accepted::New { run_id, version, .. }) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": run_id, "version": version, "status": RunStatus::Queued})),
        )),
        Ok(Accepted::Existing { run_id }) => Ok((
            StatusCode::OK,
            Json(json!({"run_id": run_id, "idempotent_replay": true})),
        )),
        Err(e) => Err(e.into_api_error(not_runnable(&state, &auth.principal, flow_id)).await),
    }
}

/// Tells a missing or invisible flow (`404`), one the caller may not execute
/// (`403`) and one never deployed (`409`) apart; only on the failure path.
pub(super) async fn not_runnable(state: &AppState, principal: &Principal, flow_id: Uuid) -> ApiError {
    let lookup = async {
        let mut tx = db::tenant_tx(&state.pool, principal.company_id).await?;
        access::require_flow(&mut tx, principal, flow_id, Level::Execute).await?;
        let exists = flows::latest_version(&mut tx, principal.company_id.into(), flow_id.into()).await?;
        db::commit(tx).await?;
        Ok::<_, ApiError>(exists)
    };
    match lookup.await {
        Ok(None) => ApiError::not_found("flow"),
        Ok(Some(_)) => ApiError::new(
            StatusCode::CONFLICT,
            "not_deployed",
            "the flow has no deployed version; deploy it first",
        ),
        Err(e) => e,
    }
}

// The documented shape of `query::Run`, which is what is served (no doc comment: it would become the schema's description).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the served `query::Run`
struct Run {
    id: Uuid,
    flow_id: Uuid,
    version: i32,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String)]
    status: RunStatus,
    /// What started it: `api`, `webhook`, `schedule`, …
    #[schema(value_type = String)]
    trigger: Trigger,
    #[schema(value_type = AnyJson)]
    input: Value,
    #[schema(value_type = AnyJson)]
    output: Option<Value>,
    #[schema(value_type = AnyJson)]
    error: Option<Value>,
    attempt: i32,
    queued_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// When a cancel was asked; a running run ends `cancelled` at its next node boundary.
    cancel_requested_at: Option<DateTime<Utc>>,
    /// The run this one retries (`POST /api/v1/runs/{id}/retry` or a replay).
    retry_of: Option<Uuid>,
}

// The documented shape of `query::Step`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the served `query::Step`
struct Step {
    node_id: String,
    /// `succeeded`, `failed`, `skipped`, or `cancelled` (interrupted when its run was cancelled or passed its deadline).
    status: String,
    #[schema(value_type = AnyJson)]
    output: Option<Value>,
    #[schema(value_type = AnyJson)]
    error: Option<Value>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
struct RunWithSteps {
    #[serde(flatten)]
    #[schema(value_type = Run)]
    run: query::Run,
    #[schema(value_type = Vec<Step>)]
    steps: Vec<query::Step>,
}

/// A run: status, input, output, error and each step.
#[utoipa::path(get, operation_id = "runs_show", path = "/api/v1/runs/{run_id}", tag = "runs", params(("run_id" = Uuid, Path)),
    security(("api_key" = ["run:read"]), ("session" = ["run:read"])),
    responses((status = 200, description = "The run with its steps", body = RunWithSteps)))]
async fn show(State(state): State<AppState>, auth: Authorized<RunRead>, Id(id): Id) -> ApiResult<Json<RunWithSteps>> {
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let run = query::find(&mut tx, company_id, RunId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    // A run is as visible as its flow.
    access::require_flow(&mut tx, &auth.principal, run.flow_id.0, Level::View)
        .await
        .map_err(|_| ApiError::not_found("run"))?;
    let steps = query::steps(&mut tx, company_id, RunId(id)).await?;
    db::commit(tx).await?;
    Ok(Json(RunWithSteps { run, steps }))
}

/// Cancels a run: a queued run ends `cancelled` at once and never starts; a
/// running one records `cancel_requested_at` and ends `cancelled` at its next
/// node boundary (a running `code`, `delay` or `http_request` node is
/// interrupted). Needs what starting the flow needs.
#[utoipa::path(post, operation_id = "runs_cancel", path = "/api/v1/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = Uuid, Path)),
    security(("api_key" = ["flow:execute"]), ("session" = ["flow:execute"])),
    responses((status = 202, description = "Cancelled (was queued), or cancel requested (running)", body = Run),
        (status = 403, description = "A grant below `execute` on the run's flow, or the role lacks `flow:execute`", body = ErrorBody),
        (status = 404, description = "No such run visible to the caller", body = ErrorBody),
        (status = 409, description = "The run already finished (`run_finished`)", body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    auth: Authorized<FlowExecute>,
    Id(id): Id,
) -> ApiResult<(StatusCode, Json<query::Run>)> {
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let run = query::find(&mut tx, company_id, RunId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    access::require_flow(&mut tx, &auth.principal, run.flow_id.0, Level::View)
        .await
        .map_err(|_| ApiError::not_found("run"))?;
    access::require_flow(&mut tx, &auth.principal, run.flow_id.0, Level::Execute).await?;
    let Some(cancelled) = cancel::request(&mut tx, company_id, RunId(id)).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_finished",
            format!("the run already finished ({})", run.status),
        )
        .with_details(json!({"run_id": id, "status": run.status})));
    };
    let entry = auth
        .principal
        .audit("run.cancel", "run", id)
        .details(json!({"flow_id": run.flow_id, "status_before": run.status, "status": cancelled.status}));
    audit::record(&mut tx, &[entry]).await?;
    db::commit(tx).await?;
    floq_shared::telemetry::METRICS
        .run_cancels
        .with_label_values(&[run.status.as_str()])
        .inc();
    // After the commit, so a worker reloading cancels from the database finds this one too. Without the broker the
    // cancel still holds in the database (a queued run stays cancelled, a redelivery finishes a running one
    // cancelled), but a worker holding the run now does not hear of it.
    if let Err(e) = state.publisher.broadcast(&Control::CancelV1 { run_id: id }).await {
        tracing::warn!(error = %e, run.id = %id, "cannot broadcast a cancel to the workers");
    }
    Ok((StatusCode::ACCEPTED, Json(cancelled)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this flow's runs.
    flow_id: Option<Uuid>,
    /// Only runs in this status.
    status: Option<String>,
    /// Only runs started this way: `api`, `webhook`, `cron` or `mcp`.
    trigger: Option<String>,
    /// Only runs created (accepted) at or after this RFC 3339 time.
    from: Option<String>,
    /// Only runs created before this RFC 3339 time.
    to: Option<String>,
    /// Rows on the page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

page!(RunPage, Run);

/// The runs of the flows the caller may see, newest first.
#[utoipa::path(get, operation_id = "runs_list", path = "/api/v1/runs", tag = "runs", params(ListQuery),
    security(("api_key" = ["run:read"]), ("session" = ["run:read"])),
    responses((status = 200, description = "A page of runs", body = RunPage)))]

async fn list(
    State(state): State<AppState>,
    auth: Authorized<RunRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<RunStatus>)
        .transpose()
        .map_err(|e| {
            ApiError::validation(
                "unknown run status",
                json!([{"field": "status", "message": format!("must be one of {}", e.allowed.join(", "))}]),
            )
        })?;
    let trigger = q
        .trigger
        .as_deref()
        .map(str::parse::<Trigger>)
        .transpose()
        .map_err(|e| bad_query("trigger", &format!("must be one of {}", e.allowed.join(", "))))?;
    let from = time_query("from", q.from.as_deref())?;
    let to = time_query("to", q.to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(bad_query("from", "must not be after `to`"));
    }
    let company_id = CompanyId(auth.principal.company_id);
    let viewer = query::Viewer {
        user_id: UserId(auth.principal.user_id),
        admin: auth.principal.is_admin(),
    };
    let filter = query::Filter {
        flow_id: q.flow_id.map(FlowId),
        status,
        trigger,
        from,
        to,
        before: q.cursor.map(RunId),
        limit,
    };
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let runs = query::page(&mut tx, company_id, viewer, filter).await?;
    db::commit(tx).await?;
    let next_cursor = (runs.len() as i64 == limit)
        .then(|| runs.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({"items": runs, "next_cursor": next_cursor})))
}

fn bad_query(field: &str, message: &str) -> ApiError {
    ApiError::validation(
        "a query parameter is invalid",
        json!([{"field": field, "message": message}]),
    )
}

/// An optional RFC 3339 time from the query string; anything else is `422` naming the parameter.
fn time_query(field: &str, value: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad_query(field, "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))
        })
        .transpose()
}
