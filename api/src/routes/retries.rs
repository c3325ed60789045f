//! Starting failed (or any finished) runs again: one run by id (`retry`), or
//! many failed runs matching a filter (`replay`). Each new run goes through
//! the same accept path as `POST /api/v1/flows/{id}/runs` with the original's
//! input and trigger, linked to it by `retry_of`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::runs::not_runnable;
use crate::accept::{AcceptError, Accepted, RunRequest};
use crate::access::{self, Level};
use crate::audit;
use crate::authz::{Authorized, FlowExecute};
use crate::error::{ApiError, ApiResult};
use crate::extract::Id;
use crate::openapi::ErrorBody;
use crate::state::AppState;
use floq_shared::audit::Entry;
use floq_shared::db;
use floq_shared::ids::{CompanyId, FlowId, RunId, UserId};
use floq_shared::run::RunStatus;
use floq_shared::runs::{query, retry};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(retry_run)).routes(routes!(replay))
}

/// Which deployed version a new run pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VersionChoice {
    /// The original run's version.
    Same,
    /// The flow's latest deployed version.
    Latest,
}

fn version_choice(value: Option<&str>) -> ApiResult<VersionChoice> {
    match value {
        None | Some("same") => Ok(VersionChoice::Same),
        Some("latest") => Ok(VersionChoice::Latest),
        Some(_) => Err(bad_field("version", "must be `same` or `latest`")),
    }
}

fn bad_field(field: &str, message: &str) -> ApiError {
    ApiError::validation(
        "the request body is invalid",
        json!([{"field": field, "message": message}]),
    )
}

/// An optional JSON body: empty means every field takes its default.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    crate::extract::storable_json(body, "")?;
    serde_json::from_slice(body).map_err(|e| {
        // serde names the unknown or mistyped field in its message; the path is the body.
        ApiError::validation(
            "the request body is invalid",
            json!([{"field": "body", "message": e.to_string()}]),
        )
    })
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct RetryRun {
    /// `same` (the original's version; the default) or `latest`.
    version: Option<String>,
}

/// `202`: the retry is queued.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct RetryQueued {
    run_id: Uuid,
    version: i32,
    /// `queued`
    status: String,
    /// The run this one retries.
    retry_of: Uuid,
}

/// Starts a finished run again with the same input and trigger, as a new run linked to it (`retry_of`).
#[utoipa::path(post, operation_id = "runs_retry", path = "/api/v1/runs/{run_id}/retry", tag = "runs",
    params(("run_id" = Uuid, Path)),
    request_body(content = RetryRun, description = "Optional; `{\"version\": \"same\"}` when absent"),
    security(("api_key" = ["flow:execute"]), ("session" = ["flow:execute"])),
    responses((status = 202, description = "The retry is queued", body = RetryQueued),
        (status = 403, description = "A grant below `execute` on the run's flow, or the role lacks `flow:execute`", body = ErrorBody),
        (status = 404, description = "No such run visible to the caller", body = ErrorBody),
        (status = 409, description = "The run is still queued or running (`run_not_finished`), or its flow has no deployed version (`not_deployed`)", body = ErrorBody),
        (status = 422, description = "A bad `version`", body = ErrorBody),
        (status = 429, description = "Too many runs started for the flow or company (`rate_limited`); see `Retry-After`", body = ErrorBody)))]
async fn retry_run(
    State(state): State<AppState>,
    auth: Authorized<FlowExecute>,
    Id(run_id): Id,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: RetryRun = optional_body(&body)?;
    let choice = version_choice(body.version.as_deref())?;
    let principal = &auth.principal;
    let company_id = CompanyId(principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let original = query::find(&mut tx, company_id, RunId(run_id))
        .await?
        .ok_or_else(|| ApiError::not_found("run"))?;
    // A run is as visible as its flow; retrying it is executing that flow.
    access::require_flow(&mut tx, principal, original.flow_id.0, Level::Execute)
        .await
        .map_err(|e| match e {
            ApiError::Client {
                status: StatusCode::NOT_FOUND,
                ..
            } => ApiError::not_found("run"),
            e => e,
        })?;
    db::commit(tx).await?;
    if !original.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_not_finished",
            format!("the run is {}; only a finished run can be retried", original.status),
        ));
    }
    state.trigger_limits.check(principal.company_id, original.flow_id.0)?;
    let request = RunRequest {
        company_id: company_id.0,
        grantee: (!principal.is_admin()).then_some(principal.user_id),
        flow_id: original.flow_id.0,
        input: original.input,
        trigger: original.trigger,
        actor: principal.actor(),
        idempotency_key: None,
        wait: false,
        version: (choice == VersionChoice::Same).then_some(original.version),
        retry_of: Some(run_id),
    };
    match state.acceptor.accept(request).await {
        Ok(Accepted::New {
            run_id: new, version, ..
        }) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": new, "version": version, "status": RunStatus::Queued, "retry_of": run_id})),
        )),
        // No idempotency key was given, so no earlier run can answer.
        Ok(Accepted::Existing { run_id: new }) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": new, "status": RunStatus::Queued, "retry_of": run_id})),
        )),
        Err(e) => Err(e
            .into_api_error(not_runnable(&state, principal, original.flow_id.0))
            .await),
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct Replay {
    /// Only this flow's runs.
    flow_id: Option<String>,
    /// Only runs that failed with this error code (`runs.error.code`), e.g. `delivery_limit_exceeded`.
    error_code: Option<String>,
    /// Only runs accepted at or after this time (RFC 3339).
    from: Option<String>,
    /// Only runs accepted before this time (RFC 3339).
    to: Option<String>,
    /// At most this many runs, 1 to `FLOQ_REPLAY_MAX` (default 1000); 100 when absent.
    limit: Option<i64>,
    /// `same` (each original's version; the default) or `latest`.
    version: Option<String>,
    /// Say what would be replayed without starting anything.
    #[serde(default)]
    dry_run: bool,
}

/// One replayed run.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct Replayed {
    /// The new run; `null` in a dry run.
    run_id: Option<Uuid>,
    original_run_id: Uuid,
}

/// What a replay did.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct ReplayAnswer {
    replayed: Vec<Replayed>,
    /// Failed runs matching the filter that no run retries yet.
    matched: i64,
    /// More matched than `limit`: replay again for the rest.
    truncated: bool,
    dry_run: bool,
}

const REPLAY_DEFAULT_LIMIT: i64 = 100;

fn time_field(field: &str, value: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad_field(field, "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))
        })
        .transpose()
}

/// Starts again the failed runs matching a filter (of flows the caller may
/// execute), oldest first, each at most once: a run some run already retries
/// is not replayed.
#[utoipa::path(post, operation_id = "runs_replay", path = "/api/v1/runs/replay", tag = "runs",
    request_body = Replay,
    security(("api_key" = ["flow:execute"]), ("session" = ["flow:execute"])),
    responses((status = 202, description = "The replayed runs are queued", body = ReplayAnswer),
        (status = 200, description = "A dry run: what would be replayed", body = ReplayAnswer),
        (status = 403, description = "A grant below `execute` on `flow_id`, or the role lacks `flow:execute`", body = ErrorBody),
        (status = 404, description = "`flow_id` names no flow visible to the caller", body = ErrorBody),
        (status = 422, description = "A bad filter, naming the field", body = ErrorBody)))]
async fn replay(
    State(state): State<AppState>,
    auth: Authorized<FlowExecute>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: Replay = optional_body(&body)?;
    let choice = version_choice(body.version.as_deref())?;
    let flow_id = body
        .flow_id
        .as_deref()
        .map(|v| Uuid::parse_str(v).map_err(|_| bad_field("flow_id", "must be a flow id (UUID)")))
        .transpose()?;
    let from = time_field("from", body.from.as_deref())?;
    let to = time_field("to", body.to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(bad_field("from", "must not be after `to`"));
    }
    let max = i64::from(state.config.replay_max);
    let limit = body.limit.unwrap_or(REPLAY_DEFAULT_LIMIT.min(max));
    if !(1..=max).contains(&limit) {
        return Err(bad_field(
            "limit",
            &format!("must be between 1 and {max} (FLOQ_REPLAY_MAX)"),
        ));
    }
    if let Some(code) = &body.error_code
        && !(1..=100).contains(&code.len())
    {
        return Err(bad_field("error_code", "must be 1 to 100 characters"));
    }
    let principal = &auth.principal;
    let company_id = CompanyId(principal.company_id);
    let filter = retry::ReplayFilter {
        flow_id: flow_id.map(FlowId),
        error_code: body.error_code.clone(),
        from,
        to,
        grantee: (!principal.is_admin()).then_some(UserId(principal.user_id)),
    };
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    if let Some(flow_id) = flow_id {
        access::require_flow(&mut tx, principal, flow_id, Level::Execute).await?;
    }
    let (originals, matched) = retry::replayable(&mut tx, company_id, &filter, limit).await?;
    db::commit(tx).await?;
    let truncated = matched > originals.len() as i64;
    if body.dry_run {
        let replayed: Vec<Value> = originals
            .iter()
            .map(|o| json!({"run_id": null, "original_run_id": o.id}))
            .collect();
        return Ok((
            StatusCode::OK,
            Json(json!({"replayed": replayed, "matched": matched, "truncated": truncated, "dry_run": true})),
        ));
    }
    // All at once: the acceptor commits them together (group commit).
    let started = futures_util::future::join_all(originals.iter().map(|o| {
        state.acceptor.accept(RunRequest {
            company_id: company_id.0,
            grantee: (!principal.is_admin()).then_some(principal.user_id),
            flow_id: o.flow_id.0,
            input: o.input.clone(),
            trigger: o.trigger,
            actor: principal.actor(),
            idempotency_key: None,
            wait: false,
            version: (choice == VersionChoice::Same).then_some(o.version),
            retry_of: Some(o.id.0),
        })
    }))
    .await;
    let mut replayed = Vec::with_capacity(started.len());
    let mut not_started = 0;
    for (original, result) in originals.iter().zip(started) {
        match result {
            Ok(Accepted::New { run_id, .. } | Accepted::Existing { run_id }) => {
                replayed.push(json!({"run_id": run_id, "original_run_id": original.id}));
            }
            // Its flow was deleted or lost its grant meanwhile: the others still run.
            Err(AcceptError::NotRunnable) => not_started += 1,
            Err(e) => {
                if replayed.is_empty() {
                    return Err(e.into_api_error(async { ApiError::not_found("flow") }).await);
                }
                tracing::warn!(error = %e, "a replayed run was not accepted");
                not_started += 1;
            }
        }
    }
    let entry = Entry::new(company_id.0, principal.actor(), "run.replay").details(json!({
        "filter": {
            "flow_id": flow_id, "error_code": body.error_code, "from": from, "to": to,
            "limit": limit, "version": if choice == VersionChoice::Same { "same" } else { "latest" },
        },
        "matched": matched,
        "replayed": replayed.len(),
        "not_started": not_started,
    }));
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    audit::record(&mut tx, &[entry]).await?;
    db::commit(tx).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replayed": replayed, "matched": matched, "truncated": truncated, "dry_run": false})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_default_to_the_same_and_name_the_field_when_bad() {
        assert_eq!(version_choice(None).unwrap(), VersionChoice::Same);
        assert_eq!(version_choice(Some("latest")).unwrap(), VersionChoice::Latest);
        let ApiError::Client { status, details, .. } = version_choice(Some("newest")).unwrap_err() else {
            panic!("a client error");
        };
        assert_eq!(
            (status, details[0]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("version"))
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert!(time_field("from", Some("2026-01-31T12:00:00Z")).unwrap().is_some());
        assert!(time_field("from", Some("yesterday")).is_err());
        assert!(time_field("from", None).unwrap().is_none());
    }
}
