//! `/api/v1/flows/{id}/schedules`: cron schedules of a flow, with their next
//! fire times, their last fire and how late it was. The scheduler fires them
//! (`scheduler/src/cron_fire.rs`); the DST rule is in `shared/src/cron.rs`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;
use validator::Validate;

use crate::access::{self, Level};
use crate::audit;
use crate::authz::{Authorized, FlowEdit, FlowRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Id, Page, ValidJson};
use crate::openapi::{ErrorBody, PageParams, page};
use crate::state::AppState;
use floq_shared::cron::CronSchedule;
use floq_shared::db;
use floq_shared::ids::ScheduleId;
use floq_shared::schedules::{self, Misfire, Schedule};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, pause, remove))
}

#[derive(Serialize, ToSchema)]
#[schema(as = Schedule)]
#[allow(dead_code)] // documentation of `schedules::Schedule`, which the store returns
struct ScheduleDoc {
    id: Uuid,
    flow_id: Uuid,
    cron: String,
    timezone: String,
    enabled: bool,
    misfire: String,
    next_fire_at: Option<DateTime<Utc>>,
    last_tick: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    last_drift_ms: Option<i64>,
    created_at: DateTime<Utc>,
}

/// What [`shown`] answers.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // documentation of `shown`
struct ShownSchedule {
    #[serde(flatten)]
    schedule: ScheduleDoc,
    /// `true` while it does not fire (`enabled: false`).
    paused: bool,
    /// The next five fire times (UTC); empty while paused.
    next_fires: Vec<DateTime<Utc>>,
}

page!(SchedulePage, ShownSchedule);

/// How many fire times a schedule shows ahead.
const NEXT_FIRES: usize = 5;

/// A schedule as shown: its row, whether it is paused and its next fire times.
fn shown(s: &Schedule) -> Value {
    let mut out = serde_json::to_value(s).unwrap_or_default();
    let mut next_fires = Vec::new();
    if s.enabled
        && let Ok(cron) = CronSchedule::parse(&s.cron, &s.timezone)
    {
        let mut at = Utc::now();
        while next_fires.len() < NEXT_FIRES
            && let Some(next) = cron.next_after(at)
        {
            next_fires.push(next);
            at = next;
        }
    }
    out["paused"] = json!(!s.enabled);
    out["next_fires"] = json!(next_fires);
    out
}

/// The two ids of a schedule's path; anything that is not an id names no schedule.
fn schedule_path(flow_id: &str, schedule_id: &str) -> ApiResult<(Uuid, Uuid)> {
    match (Uuid::parse_str(flow_id), Uuid::parse_str(schedule_id)) {
        (Ok(flow_id), Ok(schedule_id)) => Ok((flow_id, schedule_id)),
        _ => Err(ApiError::not_found("schedule")),
    }
}

#[utoipa::path(get, operation_id = "schedules_show", path = "/api/v1/flows/{flow_id}/schedules/{schedule_id}", tag = "schedules",
    params(("flow_id" = Uuid, Path), ("schedule_id" = Uuid, Path)),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "The schedule", body = ShownSchedule),
        (status = 404, description = "No such flow visible to the caller, or no such schedule", body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    auth: Authorized<FlowRead>,
    Path((flow_id, schedule_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (flow_id, schedule_id) = schedule_path(&flow_id, &schedule_id)?;
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, flow_id, Level::View).await?;
    let schedule = schedules::find(
        &mut tx,
        company_id.into(),
        flow_id.into(),
        ScheduleId(schedule_id),
        false,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("schedule"))?;
    db::commit(tx).await?;
    Ok(Json(shown(&schedule)))
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct PauseSchedule {
    /// `true` pauses it (it stops firing); `false` resumes it from the next tick after now: ticks that fell in the
    /// pause are not fired, whatever its misfire policy.
    paused: bool,
}

/// Pauses or resumes a schedule; audited `schedule.pause` / `schedule.resume`.
#[utoipa::path(patch, operation_id = "schedules_pause", path = "/api/v1/flows/{flow_id}/schedules/{schedule_id}", tag = "schedules",
    params(("flow_id" = Uuid, Path), ("schedule_id" = Uuid, Path)), request_body = PauseSchedule,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 200, description = "The schedule as it now is", body = ShownSchedule),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody),
        (status = 404, description = "No such flow visible to the caller, or no such schedule", body = ErrorBody)))]
async fn pause(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Path((flow_id, schedule_id)): Path<(String, String)>,
    ValidJson(body): ValidJson<PauseSchedule>,
) -> ApiResult<Json<Value>> {
    let (flow_id, schedule_id) = schedule_path(&flow_id, &schedule_id)?;
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, flow_id, Level::Edit).await?;
    let id = ScheduleId(schedule_id);
    let before = schedules::find(&mut tx, company_id.into(), flow_id.into(), id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule"))?;
    let next_fire_at = CronSchedule::parse(&before.cron, &before.timezone)
        .ok()
        .and_then(|cron| cron.next_after(Utc::now()));
    let after = schedules::set_enabled(
        &mut tx,
        company_id.into(),
        flow_id.into(),
        id,
        !body.paused,
        next_fire_at,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("schedule"))?;
    let action = if body.paused {
        "schedule.pause"
    } else {
        "schedule.resume"
    };
    let entry = auth.principal.audit(action, "schedule", schedule_id);
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&after))]).await?;
    db::commit(tx).await?;
    Ok(Json(shown(&after)))
}

// Newest first by (v7) id; served by `schedules (company_id, flow_id, id)`.
#[utoipa::path(get, operation_id = "schedules_list", path = "/api/v1/flows/{flow_id}/schedules", tag = "schedules",
    params(("flow_id" = Uuid, Path), PageParams),
    security(("api_key" = ["flow:read"]), ("session" = ["flow:read"])),
    responses((status = 200, description = "The flow's schedules, newest first", body = SchedulePage)))]
async fn list(
    State(state): State<AppState>,
    auth: Authorized<FlowRead>,
    Id(id): Id,
    page: Page<Uuid>,
) -> ApiResult<Json<Value>> {
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::View).await?;
    let items = schedules::page(
        &mut tx,
        company_id.into(),
        id.into(),
        ScheduleId(page.after),
        page.limit,
    )
    .await?;
    db::commit(tx).await?;
    let next_cursor = page.next_cursor(&items, |s| s.id.as_uuid());
    Ok(Json(
        json!({"items": items.iter().map(shown).collect::<Vec<_>>(), "next_cursor": next_cursor}),
    ))
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

fn skip() -> String {
    "skip".into()
}

fn misfire_policy(v: &str) -> Result<(), validator::ValidationError> {
    if v.parse::<Misfire>().is_ok() {
        Ok(())
    } else {
        Err(validator::ValidationError::new("misfire").with_message("must be `skip` or `fire_once`".into()))
    }
}

#[derive(Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSchedule {
    /// 5 or 6 fields.
    #[validate(length(min = 9, max = 200))]
    #[schema(min_length = 9, max_length = 200)]
    cron: String,
    /// An IANA zone; `UTC` when absent.
    #[serde(default = "utc")]
    timezone: String,
    #[serde(default = "yes")]
    enabled: bool,
    /// `skip` (the default) or `fire_once`.
    #[serde(default = "skip")]
    #[validate(custom(function = "misfire_policy"))]
    misfire: String,
}

#[utoipa::path(post, operation_id = "schedules_create", path = "/api/v1/flows/{flow_id}/schedules", tag = "schedules",
    params(("flow_id" = Uuid, Path)), request_body = CreateSchedule,
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 201, description = "Created", body = ShownSchedule),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Id(id): Id,
    ValidJson(body): ValidJson<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let cron = CronSchedule::parse(&body.cron, &body.timezone).map_err(|e| {
        let field = match e {
            floq_shared::cron::CronError::TimeZone(_) => "timezone",
            floq_shared::cron::CronError::Expression(_) => "cron",
        };
        ApiError::validation(
            "the schedule is invalid",
            json!([{"field": field, "message": e.to_string()}]),
        )
    })?;
    let misfire: Misfire = body.misfire.parse().map_err(|_| {
        ApiError::validation(
            "the schedule is invalid",
            json!([{"field": "misfire", "message": "must be `skip` or `fire_once`"}]),
        )
    })?;
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    access::require_flow(&mut tx, &auth.principal, id, Level::Edit).await?;
    let new = schedules::NewSchedule {
        id: ScheduleId(Uuid::now_v7()),
        company_id: company_id.into(),
        flow_id: id.into(),
        cron: body.cron.trim(),
        timezone: &body.timezone,
        enabled: body.enabled,
        misfire,
        next_fire_at: cron.next_after(Utc::now()),
    };
    let schedule = schedules::create(&mut tx, new).await?;
    let entry = auth.principal.audit("schedule.create", "schedule", schedule.id);
    audit::record(&mut tx, &[entry.change(None::<&Schedule>, Some(&schedule))]).await?;
    db::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(shown(&schedule))))
}

#[utoipa::path(delete, operation_id = "schedules_remove", path = "/api/v1/flows/{flow_id}/schedules/{schedule_id}", tag = "schedules",
    params(("flow_id" = Uuid, Path), ("schedule_id" = Uuid, Path)),
    security(("api_key" = ["flow:edit"]), ("session" = ["flow:edit"])),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "A grant below `edit`, or the role lacks `flow:edit`", body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    auth: Authorized<FlowEdit>,
    Path((flow_id, schedule_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (flow_id, schedule_id) = schedule_path(&flow_id, &schedule_id)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    access::require_flow(&mut tx, &auth.principal, flow_id, Level::Edit).await?;
    let company_id = auth.principal.company_id;
    let removed = schedules::delete(&mut tx, company_id.into(), flow_id.into(), ScheduleId(schedule_id))
        .await?
        .ok_or_else(|| ApiError::not_found("schedule"))?;
    let entry = auth.principal.audit("schedule.delete", "schedule", schedule_id);
    audit::record(&mut tx, &[entry.change(Some(&removed), None::<&Schedule>)]).await?;
    db::commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
