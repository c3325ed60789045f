//! `/api/v1/audit`: reading, verifying and exporting the company's audit log.
//! `admin` and `audit_viewer` only; entries of other companies are invisible
//! under row-level security.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::authz::{AuditRead, Authorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, page_limit};
use crate::state::AppState;
use floq_shared::audit::query::{self, Filters, Order};
use floq_shared::db;
use floq_shared::ids::{CompanyId, UserId};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{AnyJson, page};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(verify))
        .routes(routes!(export))
}

/// One audit entry (secrets and personal data masked).
// Rendered by the database (`floq_audit_json`).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation: the database renders entries
struct AuditEntry {
    id: i64,
    company_id: Uuid,
    at: DateTime<Utc>,
    actor: AuditActor,
    client_ip: Option<String>,
    request_id: Option<String>,
    /// e.g. `flow.create`, `auth.login`, `http.request`.
    action: String,
    resource: AuditResource,
    /// `success`, `failure` or `denied`.
    outcome: String,
    details: AnyJson,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct AuditActor {
    /// `user`, `api_key`, `system`, `anonymous`, …
    #[schema(rename = "type")]
    kind: String,
    id: Option<Uuid>,
    label: Option<String>,
    via: Option<String>,
    via_id: Option<Uuid>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct AuditResource {
    #[schema(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
}

page!(AuditPage, AuditEntry);

/// What a verification step found.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Verification {
    /// No broken link in the range checked.
    ok: bool,
    checked: i64,
    /// Entries not sealed yet, so not checked.
    pending: i64,
    first_broken: Option<BrokenLink>,
    from_seq: Option<i64>,
    last_seq: Option<i64>,
    /// Where the next step starts; `null` once the newest seal was reached.
    next_seq: Option<i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct BrokenLink {
    seq: Option<i64>,
    entry_id: Option<i64>,
    reason: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// A user id, or the label of a system or anonymous actor.
    actor: Option<String>,
    /// An exact action, or a prefix ending in `*` (`auth.*`).
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    /// Rows on the page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn bad_param(field: &str, message: &str) -> ApiError {
    ApiError::validation(
        "a query parameter is invalid",
        json!([{"field": field, "message": message}]),
    )
}

fn cursor(raw: Option<&str>) -> ApiResult<Option<i64>> {
    raw.map(|c| {
        c.parse::<i64>()
            .map_err(|_| bad_param("cursor", "not a cursor from this listing"))
    })
    .transpose()
}

fn filters(q: ListQuery) -> ApiResult<Filters> {
    if let (Some(from), Some(to)) = (q.from, q.to)
        && from > to
    {
        return Err(bad_param("from", "must not be after `to`"));
    }
    let (actor_id, actor_label) = match q.actor {
        Some(a) => match Uuid::parse_str(&a) {
            Ok(id) => (Some(UserId(id)), None),
            Err(_) => (None, Some(a)),
        },
        None => (None, None),
    };
    Ok(Filters {
        from: q.from,
        to: q.to,
        actor_id,
        actor_label,
        action: q.action,
        resource_type: q.resource_type,
        resource_id: q.resource_id,
    })
}

/// Newest first.
#[utoipa::path(get, operation_id = "audit_list", path = "/api/v1/audit", tag = "audit", params(ListQuery),
    security(("api_key" = ["audit:read"]), ("session" = ["audit:read"])),
    responses((status = 200, description = "A page of the company's audit log, newest first", body = AuditPage)))]
async fn list(
    State(state): State<AppState>,
    auth: Authorized<AuditRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit)?;
    let before = cursor(q.cursor.as_deref())?;
    let filters = filters(q)?;
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let rows = query::page(&mut tx, company_id, &filters, Order::NewestBefore(before), limit).await?;
    db::commit(tx).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let items = rows
        .into_iter()
        .map(|r| serde_json::from_str(&r.json).map_err(ApiError::internal))
        .collect::<ApiResult<Vec<Value>>>()?;
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

/// The most seals one verification call checks (and its default): a call
/// costs at most this many hash computations, ≈ 20 µs each in PostgreSQL.
pub const MAX_VERIFY: i64 = 10_000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VerifyQuery {
    /// Where to start: a `next_seq` from an earlier call. Absent (or below
    /// the chain's oldest remaining seal): from that oldest seal.
    #[param(value_type = Option<i64>, minimum = 0)]
    from_seq: Option<String>,
    /// Links to check, 1 to 10 000 (the default).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10_000)]
    limit: Option<String>,
}

/// Recomputes up to `limit` links of the company's hash chain from `from_seq`
/// and says where it stopped (`next_seq`, null once it reached the newest
/// seal), so a caller verifies a chain of any length in bounded steps.
/// Entries not yet sealed (the scheduler seals every second) are counted as
/// pending, not checked.
#[utoipa::path(get, operation_id = "audit_verify", path = "/api/v1/audit/verify", tag = "audit", params(VerifyQuery),
    security(("api_key" = ["audit:read"]), ("session" = ["audit:read"])),
    responses((status = 200, description = "What this step of the verification found", body = Verification)))]
async fn verify(
    State(state): State<AppState>,
    auth: Authorized<AuditRead>,
    ApiQuery(q): ApiQuery<VerifyQuery>,
) -> ApiResult<Json<Value>> {
    let from_seq = q
        .from_seq
        .map(|raw| {
            raw.parse::<i64>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or_else(|| bad_param("from_seq", "a `next_seq` from an earlier verification"))
        })
        .transpose()?;
    let limit = match q.limit {
        None => MAX_VERIFY,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_VERIFY).contains(l))
            .ok_or_else(|| bad_param("limit", &format!("must be between 1 and {MAX_VERIFY}")))?,
    };
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let step = query::verify(&mut tx, from_seq, limit).await?;
    let pending = query::unsealed(&mut tx, company_id).await?;
    db::commit(tx).await?;
    let (checked, first_seq, last_seq) = (step.checked, step.first_seq, step.last_seq);
    let first_broken = step
        .broken
        .map(|b| json!({"seq": b.seq, "entry_id": b.entry_id, "reason": b.reason}));
    // A full step may have more after it; a short one reached the newest seal.
    let next_seq = (checked == limit).then(|| last_seq.map(|s| s + 1)).flatten();
    Ok(Json(json!({
        "ok": first_broken.is_none(),
        "checked": checked,
        "pending": pending,
        "first_broken": first_broken,
        "from_seq": first_seq,
        "last_seq": last_seq,
        "next_seq": next_seq,
    })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

const EXPORT_PAGE: i64 = 1000;

/// Oldest first, one JSON entry per line, streamed a page at a time (each
/// page its own short transaction) so memory stays flat whatever the range.
#[utoipa::path(get, operation_id = "audit_export", path = "/api/v1/audit/export", tag = "audit", params(ExportQuery),
    security(("api_key" = ["audit:read"]), ("session" = ["audit:read"])),
    responses((status = 200, description = "Every entry in the range, oldest first, one JSON `AuditEntry` a line",
        content_type = "application/x-ndjson", body = AuditEntry)))]
async fn export(
    State(state): State<AppState>,
    auth: Authorized<AuditRead>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let filters = filters(ListQuery {
        from: q.from,
        to: q.to,
        actor: None,
        action: None,
        resource_type: None,
        resource_id: None,
        limit: None,
        cursor: None,
    })?;
    let company_id = CompanyId(auth.principal.company_id);
    // The first page is read before answering, so a database failure is still a clean 500.
    let first = page(&state.pool, company_id, &filters, 0).await?;
    let pages = stream::try_unfold(
        (state.pool.clone(), filters, Some(first)),
        move |(pool, filters, ready)| async move {
            let (last, lines) = match ready {
                Some(p) => p,
                None => return Ok(None),
            };
            let Some(last) = last else {
                return Ok(None);
            };
            let next = page(&pool, company_id, &filters, last)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(Some((Bytes::from(lines), (pool, filters, Some(next)))))
        },
    );
    Ok(([(CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(pages)).into_response())
}

/// One page after entry `after`: the last id (if the page was full or not
/// empty) and its lines.
async fn page(
    pool: &db::Pool,
    company_id: CompanyId,
    filters: &Filters,
    after: i64,
) -> ApiResult<(Option<i64>, String)> {
    let mut tx = db::tenant_tx(pool, company_id.0).await?;
    let rows = query::page(&mut tx, company_id, filters, Order::OldestAfter(after), EXPORT_PAGE).await?;
    db::commit(tx).await?;
    let mut lines = String::with_capacity(rows.iter().map(|r| r.json.len() + 1).sum());
    for row in &rows {
        lines.push_str(&row.json);
        lines.push('\n');
    }
    Ok((rows.last().map(|r| r.id), lines))
}
