//! `/api/v1/audit`: reading, verifying and exporting the company's audit log.
//! `admin` and `audit_viewer` only; entries of other companies are invisible
//! under row-level security.

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::authz::{AuditRead, Authorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, page_limit};
use crate::state::AppState;
use floq_shared::db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit", get(list))
        .route("/api/v1/audit/verify", get(verify))
        .route("/api/v1/audit/export", get(export))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// A user id, or the label of a system or anonymous actor.
    actor: Option<String>,
    /// An exact action, or a prefix ending in `*` (`auth.*`).
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Filters shared by listing and export; `$1..$7` in this order. Queries
/// limit rows first and render entries after, so a plan that sorts many
/// candidates never renders more than one page.
const FILTERS: &str = "($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
    AND ($3::uuid IS NULL OR actor_id = $3) AND ($4::text IS NULL OR actor_label = $4)
    AND ($5::text IS NULL OR action = $5 OR (right($5, 1) = '*' AND starts_with(action, rtrim($5, '*'))))
    AND ($6::text IS NULL OR resource_type = $6) AND ($7::text IS NULL OR resource_id = $7)";

struct Filters {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    actor_id: Option<Uuid>,
    actor_label: Option<String>,
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
}

impl Filters {
    fn bind<'q>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, String), sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, String), sqlx::postgres::PgArguments> {
        query
            .bind(self.from)
            .bind(self.to)
            .bind(self.actor_id)
            .bind(self.actor_label.as_deref())
            .bind(self.action.as_deref())
            .bind(self.resource_type.as_deref())
            .bind(self.resource_id.as_deref())
    }
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
            Ok(id) => (Some(id), None),
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
async fn list(
    State(state): State<AppState>,
    auth: Authorized<AuditRead>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(q.limit)?;
    let before = cursor(q.cursor.as_deref())?;
    let filters = filters(q)?;
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let sql = format!(
        "SELECT id, floq_audit_json(a)::text FROM (
            SELECT * FROM audit_log WHERE {FILTERS} AND ($8::bigint IS NULL OR id < $8) ORDER BY id DESC LIMIT $9
         ) a ORDER BY id DESC"
    );
    let rows: Vec<(i64, String)> = filters
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|(id, _)| id.to_string()))
        .flatten();
    let items = rows
        .into_iter()
        .map(|(_, entry)| serde_json::from_str(&entry).map_err(ApiError::internal))
        .collect::<ApiResult<Vec<Value>>>()?;
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

/// Recomputes the company's hash chain. Entries not yet sealed (the scheduler
/// seals every second) are counted as pending, not checked.
async fn verify(State(state): State<AppState>, auth: Authorized<AuditRead>) -> ApiResult<Json<Value>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let (checked, broken_seq, broken_entry, reason): (i64, Option<i64>, Option<i64>, Option<String>) =
        sqlx::query_as("SELECT * FROM floq_audit_verify()")
            .fetch_one(&mut *tx)
            .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let first_broken = reason.map(|reason| json!({"seq": broken_seq, "entry_id": broken_entry, "reason": reason}));
    Ok(Json(json!({
        "ok": first_broken.is_none(),
        "checked": checked,
        "pending": (total - checked).max(0),
        "first_broken": first_broken,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

const EXPORT_PAGE: i64 = 1000;

/// Oldest first, one JSON entry per line, streamed a page at a time (each
/// page its own short transaction) so memory stays flat whatever the range.
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
    let company_id = auth.principal.company_id;
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
async fn page(pool: &PgPool, company_id: Uuid, filters: &Filters, after: i64) -> ApiResult<(Option<i64>, String)> {
    let mut tx = db::tenant_tx(pool, company_id).await?;
    let sql = format!(
        "SELECT id, floq_audit_json(a)::text FROM (
            SELECT * FROM audit_log WHERE {FILTERS} AND id > $8 ORDER BY id LIMIT $9
         ) a ORDER BY id"
    );
    let rows: Vec<(i64, String)> = filters
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .bind(after)
        .bind(EXPORT_PAGE)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut lines = String::with_capacity(rows.iter().map(|(_, l)| l.len() + 1).sum());
    for (_, line) in &rows {
        lines.push_str(line);
        lines.push('\n');
    }
    Ok((rows.last().map(|(id, _)| *id), lines))
}
