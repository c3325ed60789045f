//! `postgres`: one parameterized statement against the database of a
//! `postgres` credential (never an inline URI: reaching a database is a
//! grant, and the connection passes the egress policy); `$1, $2, …` are bound from `params` (strings as text,
//! integers as bigint, other numbers as double, booleans, null, objects and
//! arrays as jsonb; cast in SQL where a column wants another type). Outputs
//! `{rows, row_count, truncated}`; a statement runs at most `timeout_ms` and
//! returns at most `max_rows` rows.

use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Map, Value, json};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgRow};
use sqlx::{Column, ConnectOptions, Connection, Row, TypeInfo};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult, egress_error, millis};
use floq_shared::egress::{PgTargetError, origin};

pub struct Postgres;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_MAX_ROWS: u64 = 1_000;

impl Node for Postgres {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let params = &ctx.params;
            let uri = match &ctx.credential {
                Some(c) if c.kind == "postgres" => c.field("uri").unwrap_or_default(),
                Some(c) => {
                    return Err(NodeError::invalid(format!(
                        "a `{}` credential is not a database",
                        c.kind
                    )));
                }
                None => {
                    return Err(NodeError::invalid(
                        "`credential_id` (a postgres credential) is required",
                    ));
                }
            };
            ctx.check_destination(&origin::of_uri(uri).unwrap_or_default(), true)?;
            let query = params
                .get("query")
                .and_then(Value::as_str)
                .ok_or_else(|| NodeError::invalid("`query` must be a string"))?
                .to_string();
            let binds = match params.get("params") {
                None | Some(Value::Null) => vec![],
                Some(Value::Array(items)) => items.clone(),
                Some(_) => return Err(NodeError::invalid("`params` must be an array")),
            };
            let timeout = millis(params, "timeout_ms", DEFAULT_TIMEOUT, MAX_TIMEOUT)?;
            let max_rows = params
                .get("max_rows")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_MAX_ROWS) as usize;
            let options: PgConnectOptions = ctx.env.egress.postgres_options(uri).await.map_err(|e| match e {
                PgTargetError::Egress(e) => egress_error(&e),
                PgTargetError::Invalid => {
                    NodeError::invalid("the credential's `uri` is not a postgres:// URI with a host")
                }
                PgTargetError::Incomplete => {
                    NodeError::invalid("the credential's `uri` must name a user, a password and a database")
                }
            })?;
            let work = async {
                let mut conn = options
                    .application_name("floq-node")
                    .connect()
                    .await
                    .map_err(|_| NodeError::new("postgres_connect", "could not connect to the database"))?;
                // The server enforces the cap too, so a slow statement is cancelled there, not just abandoned.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SET statement_timeout = {}",
                    timeout.as_millis()
                )))
                .execute(&mut conn)
                .await
                .map_err(db_error)?;
                let mut rows = Vec::new();
                let mut truncated = false;
                {
                    let mut stream = bind_all(sqlx::query(sqlx::AssertSqlSafe(query)), &binds).fetch(&mut conn);
                    while let Some(row) = stream.next().await {
                        let row = row.map_err(db_error)?;
                        if rows.len() == max_rows {
                            truncated = true;
                            break;
                        }
                        rows.push(row_json(&row));
                    }
                }
                let _ = conn.close().await;
                Ok::<_, NodeError>(json!({"row_count": rows.len(), "rows": rows, "truncated": truncated}))
            };
            let out = tokio::time::timeout(timeout + Duration::from_secs(5), work)
                .await
                .map_err(|_| NodeError::new("postgres_timeout", "the statement timed out"))??;
            Ok(NodeOutput::value(out))
        }
        .boxed()
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, PgArguments>,
    binds: &[Value],
) -> sqlx::query::Query<'q, sqlx::Postgres, PgArguments> {
    for v in binds {
        query = match v {
            Value::Null => query.bind(None::<String>),
            Value::Bool(b) => query.bind(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => query.bind(i),
                None => query.bind(n.as_f64()),
            },
            Value::String(s) => query.bind(s.clone()),
            other => query.bind(sqlx::types::Json(other.clone())),
        };
    }
    query
}

/// Errors keep PostgreSQL's message (it is about the user's own SQL) but
/// never the connection details.
fn db_error(e: sqlx::Error) -> NodeError {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
            NodeError::new("postgres_timeout", "the statement timed out")
        }
        sqlx::Error::Database(db) => NodeError::new("postgres_error", db.message().to_string()),
        _ => NodeError::new("postgres_error", "the statement failed"),
    }
}

fn row_json(row: &PgRow) -> Value {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        out.insert(col.name().to_string(), cell(row, i, col.type_info().name()));
    }
    Value::Object(out)
}

fn cell(row: &PgRow, i: usize, type_name: &str) -> Value {
    fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
        row: &'r PgRow,
        i: usize,
    ) -> Option<T> {
        row.try_get::<Option<T>, _>(i).ok().flatten()
    }
    let value = match type_name {
        "BOOL" => get::<bool>(row, i).map(Value::from),
        "INT2" => get::<i16>(row, i).map(Value::from),
        "INT4" => get::<i32>(row, i).map(Value::from),
        "INT8" => get::<i64>(row, i).map(Value::from),
        "FLOAT4" => get::<f32>(row, i).map(Value::from),
        "FLOAT8" => get::<f64>(row, i).map(Value::from),
        "JSON" | "JSONB" => get::<sqlx::types::Json<Value>>(row, i).map(|j| j.0),
        "UUID" => get::<uuid::Uuid>(row, i).map(|u| Value::String(u.to_string())),
        "TIMESTAMPTZ" => get::<chrono::DateTime<chrono::Utc>>(row, i).map(|t| Value::String(t.to_rfc3339())),
        "TIMESTAMP" => get::<chrono::NaiveDateTime>(row, i).map(|t| Value::String(t.to_string())),
        "DATE" => get::<chrono::NaiveDate>(row, i).map(|d| Value::String(d.to_string())),
        "BYTEA" => get::<Vec<u8>>(row, i).map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b))),
        "TEXT[]" | "VARCHAR[]" => get::<Vec<String>>(row, i).map(Value::from),
        "INT4[]" => get::<Vec<i32>>(row, i).map(Value::from),
        "INT8[]" => get::<Vec<i64>>(row, i).map(Value::from),
        _ => get::<String>(row, i).map(Value::String),
    };
    // Types without a text decoding here (numeric, intervals, …) come back as null
    // rather than failing the node; cast them to text in SQL to read them.
    value.unwrap_or(Value::Null)
}
