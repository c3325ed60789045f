//! `GET /api/v1/runs/events`: the caller's company's run status changes as
//! Server-Sent Events, for live lists. Each stream polls the runs store about
//! once a second for what changed after its cursor ([`query::changes`]:
//! one range of `runs_changed_idx`, at most [`PER_TICK`] rows), so a stream
//! costs one short transaction a second whatever the company's volume. It
//! shows only runs the caller may see (admins: all; others: runs of flows
//! they hold a grant on), optionally of one flow. Each event's `id` is its
//! cursor: a client reconnecting with `Last-Event-ID` resumes after it. A
//! change shows once it is [`query::CHANGE_SETTLE`] old (so a late commit is
//! never skipped). The stream ends when the client goes or the API shuts
//! down; a keep-alive comment goes out every 15 s.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::access::{self, Level};
use crate::authz::{Authorized, RunRead};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::openapi::ErrorBody;
use crate::state::AppState;
use floq_shared::db;
use floq_shared::ids::{CompanyId, FlowId, RunId, UserId};
use floq_shared::runs::query::{self, ChangeCursor};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// How often a stream looks for changes.
const TICK: Duration = Duration::from_secs(1);
/// The most changes one look reads.
const PER_TICK: i64 = 200;
/// A stream this many seconds behind what it could read skips to the present and says so (`overflow`).
const BEHIND_AT_MOST_SECONDS: i64 = 10;

/// The `data` of a `run` event.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of `query::Change`, which is what is sent
struct RunEvent {
    run_id: Uuid,
    flow_id: Uuid,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    status: String,
    /// When the run reached this status.
    updated_at: DateTime<Utc>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only this flow's runs.
    flow_id: Option<Uuid>,
}

/// `<microseconds since 1970>_<run id>`: an event's `id`, and what `Last-Event-ID` gives back.
fn encode(cursor: ChangeCursor) -> String {
    format!("{}_{}", cursor.at.timestamp_micros(), cursor.run_id)
}

fn decode(raw: &str) -> Option<ChangeCursor> {
    let (micros, id) = raw.split_once('_')?;
    Some(ChangeCursor {
        at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        run_id: RunId(Uuid::parse_str(id).ok()?),
    })
}

fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<ChangeCursor>> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(None);
    };
    raw.to_str().ok().and_then(decode).map(Some).ok_or_else(|| {
        ApiError::validation(
            "the Last-Event-ID header is invalid",
            json!([{"field": "Last-Event-ID", "message": "not an event id from this stream"}]),
        )
    })
}

/// One stream's state between looks.
struct Poll {
    state: AppState,
    company_id: CompanyId,
    viewer: query::Viewer,
    flow_id: Option<FlowId>,
    cursor: Option<ChangeCursor>,
    first: bool,
}

impl Poll {
    /// One look: the events it found (the cursor moves on past them).
    async fn look(&mut self) -> Result<Vec<Event>, ApiError> {
        let mut tx = db::tenant_tx(&self.state.pool, self.company_id.0).await?;
        let found = query::changes(
            &mut tx,
            self.company_id,
            self.viewer,
            self.flow_id,
            self.cursor,
            PER_TICK,
        )
        .await?;
        db::commit(tx).await?;
        let mut out: Vec<Event> = found
            .items
            .iter()
            .map(|c| {
                let id = encode(ChangeCursor {
                    at: c.updated_at,
                    run_id: c.run_id,
                });
                Event::default().event("run").id(id).json_data(c).unwrap_or_default()
            })
            .collect();
        self.cursor = Some(found.cursor);
        let settle = i64::try_from(query::CHANGE_SETTLE.as_secs()).unwrap_or(0);
        let behind = Utc::now() - found.cursor.at > chrono::Duration::seconds(BEHIND_AT_MOST_SECONDS + settle);
        if found.items.len() as i64 == PER_TICK && behind {
            // Too many changes to follow one by one: go to the present; the client reloads its list.
            self.cursor = None;
            out.push(Event::default().event("overflow").data("{}"));
        }
        Ok(out)
    }
}

/// The run status changes the caller may see, as they happen (`text/event-stream`): `event: run` with `id:` (its
/// cursor, for `Last-Event-ID`) and `data: {run_id, flow_id, status, updated_at}`; `event: overflow` when the
/// stream skipped ahead past more changes than it sends (reload the list).
#[utoipa::path(get, operation_id = "runs_events", path = "/api/v1/runs/events", tag = "runs",
    params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event received: resume after it")),
    security(("api_key" = ["run:read"]), ("session" = ["run:read"])),
    responses((status = 200, description = "An endless stream of `run` events", content_type = "text/event-stream", body = RunEvent),
        (status = 404, description = "`flow_id` names no flow visible to the caller", body = ErrorBody),
        (status = 422, description = "`Last-Event-ID` is not an id this stream sent", body = ErrorBody)))]
async fn events(
    State(state): State<AppState>,
    auth: Authorized<RunRead>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let cursor = last_event_id(&headers)?;
    let principal = auth.principal;
    if let Some(flow_id) = q.flow_id {
        let mut tx = db::tenant_tx(&state.pool, principal.company_id).await?;
        access::require_flow(&mut tx, &principal, flow_id, Level::View).await?;
        db::commit(tx).await?;
    }
    let poll = Poll {
        company_id: CompanyId(principal.company_id),
        viewer: query::Viewer {
            user_id: UserId(principal.user_id),
            admin: principal.is_admin(),
        },
        flow_id: q.flow_id.map(FlowId),
        cursor,
        first: true,
        state,
    };
    let stream = stream::unfold(poll, |mut poll| async move {
        if !poll.first {
            tokio::select! {
                () = poll.state.shutdown.cancelled() => return None,
                () = tokio::time::sleep(TICK) => {}
            }
        }
        poll.first = false;
        if poll.state.shutdown.is_cancelled() {
            return None;
        }
        let events = match poll.look().await {
            Ok(events) => events,
            Err(e) => {
                // The next look tries again; the cursor stays where it was.
                tracing::warn!(error = ?e, company.id = %poll.company_id, "a run event stream could not look for changes");
                Vec::new()
            }
        };
        Some((stream::iter(events.into_iter().map(Ok)), poll))
    })
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_anything_else_is_refused() {
        let cursor = ChangeCursor {
            at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            run_id: RunId(Uuid::now_v7()),
        };
        assert_eq!(decode(&encode(cursor)), Some(cursor));
        for bad in [
            "",
            "12",
            "x_y",
            "12_not-a-uuid",
            "_0190b4a0-0000-7000-8000-000000000000",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
