//! The API's one error type. Client errors carry a code, a message and
//! details; internal errors are opaque (the cause is logged once, with the
//! request id, by the middleware). The middleware also stamps `request_id`
//! into every error body, including ones axum or tower produce.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        details: Value,
        denial: Option<Box<Denial>>,
        /// Seconds, sent as `Retry-After` (rate limits).
        retry_after: Option<u64>,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            details: Value::Null,
            denial: None,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, new: Value) -> Self {
        if let ApiError::Client { details, .. } = &mut self {
            *details = new;
        }
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        if let ApiError::Client { retry_after, .. } = &mut self {
            *retry_after = Some(seconds);
        }
        self
    }

    /// Marks the error as a denied permission check, which the request
    /// envelope audits with the capability and the entity asked for.
    pub fn denied(mut self, capability: &str, resource: Option<(&str, String)>) -> Self {
        if let ApiError::Client { denial, .. } = &mut self {
            *denial = Some(Box::new(Denial {
                capability: capability.to_string(),
                resource: resource.map(|(kind, id)| (kind.to_string(), id)),
            }));
        }
        self
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid API key is required")
    }

    pub fn forbidden(capability: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role does not allow `{capability}`"),
        )
        .denied(capability, None)
    }

    pub fn validation(message: impl Into<String>, details: Value) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message).with_details(details)
    }

    /// `422` for text PostgreSQL cannot store (U+0000), naming where it was.
    pub fn invalid_text(field: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_text",
            format!("`{field}` contains a NUL character (U+0000), which cannot be stored"),
        )
        .with_details(json!([{"field": field, "message": "must not contain U+0000"}]))
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        refusal(&e).unwrap_or_else(|| ApiError::Internal(e.into()))
    }
}

/// A batch writer's error, shared by every request of the part that failed.
impl From<std::sync::Arc<sqlx::Error>> for ApiError {
    fn from(e: std::sync::Arc<sqlx::Error>) -> Self {
        refusal(&e).unwrap_or_else(|| ApiError::Internal(anyhow::Error::new(e)))
    }
}

/// What a database error means to the client, in one place. Text the
/// database cannot store (ingress refuses it first; this is the second wall)
/// is `422`; a unique value another request just took (a race past a
/// handler's own check) is `409` naming the field; a deadlock or
/// serialization failure that outlived the statement's own retries, and a
/// database that cannot be reached, are `503` with `Retry-After`. Only what
/// no client can fix (a statement the server cannot run, say) is internal.
fn refusal(e: &sqlx::Error) -> Option<ApiError> {
    if is_outage(e) {
        return Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable; retry shortly",
            )
            .retry_after(2),
        );
    }
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    match db.code().as_deref() {
        // untranslatable_character, character_not_in_repertoire
        Some("22P05" | "22021") => Some(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_text",
            "the request holds text that cannot be stored",
        )),
        // unique_violation
        Some("23505") => {
            let field = db.constraint().and_then(floq_shared::db::unique_field);
            let message = match field {
                Some(field) => format!("a resource with the same `{field}` already exists"),
                None => "a resource with the same unique value already exists".into(),
            };
            let error = ApiError::new(StatusCode::CONFLICT, "conflict", message);
            Some(match field {
                Some(field) => error.with_details(json!([{"field": field, "message": "already taken"}])),
                None => error,
            })
        }
        // foreign_key_violation: what it names was deleted meanwhile
        Some("23503") => Some(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "something the request refers to was removed meanwhile",
        )),
        // serialization_failure, deadlock_detected
        Some("40001" | "40P01") => Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the request collided with concurrent changes; retry it",
            )
            .retry_after(1),
        ),
        _ => None,
    }
}

/// The database is down, restarting, out of connections or unreachable:
/// nothing about the request is wrong.
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // connection_exception (08), too_many_connections, admin_shutdown,
            // crash_shutdown, cannot_connect_now, database_dropped
            code.starts_with("08") || matches!(code.as_ref(), "53300" | "57P01" | "57P02" | "57P03" | "57P04")
        }),
        _ => false,
    }
}

/// A permission check that failed, carried to the request envelope.
#[derive(Clone, Debug)]
pub struct Denial {
    pub capability: String,
    pub resource: Option<(String, String)>,
}

/// Carried in response extensions so the middleware can add the request id
/// and log internal causes once.
#[derive(Clone, Debug)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    pub cause: Option<Arc<anyhow::Error>>,
}

impl ErrorBody {
    pub fn render(&self, request_id: &str) -> Value {
        json!({"error": {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "request_id": request_id,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body, denial, retry_after) = match self {
            ApiError::Client {
                status,
                code,
                message,
                details,
                denial,
                retry_after,
            } => (
                status,
                ErrorBody {
                    code,
                    message,
                    details,
                    cause: None,
                },
                denial,
                retry_after,
            ),
            ApiError::Internal(cause) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorBody {
                    code: "internal",
                    message: "internal error; quote the request id when reporting it".into(),
                    details: Value::Null,
                    cause: Some(Arc::new(cause)),
                },
                None,
                None,
            ),
        };
        let mut response = (status, Json(body.render(""))).into_response();
        response.extensions_mut().insert(body);
        if let Some(denial) = denial {
            response.extensions_mut().insert(*denial);
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    use floq_shared::batch::{refused_by as Server, refused_on};

    fn response(e: sqlx::Error) -> (StatusCode, Value, Option<String>) {
        let response = ApiError::from(e).into_response();
        let retry = response
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = response
            .extensions()
            .get::<ErrorBody>()
            .expect("an error body")
            .render("r");
        (response.status(), body, retry)
    }

    fn mapped(code: &'static str) -> (StatusCode, &'static str) {
        match ApiError::from(sqlx::Error::Database(Box::new(Server(code)))) {
            ApiError::Client { status, code, .. } => (status, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    #[test]
    fn database_refusals_the_client_can_fix_are_4xx_and_the_rest_stay_opaque() {
        assert_eq!(mapped("22P05"), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_text"));
        assert_eq!(mapped("22021"), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_text"));
        assert_eq!(mapped("23505"), (StatusCode::CONFLICT, "conflict"));
        assert_eq!(mapped("23503"), (StatusCode::CONFLICT, "conflict"));
        assert_eq!(mapped("42P01"), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
        assert_eq!(mapped("XX000"), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    }

    #[test]
    fn a_taken_unique_value_names_its_field() {
        let (status, body, _) = response(sqlx::Error::Database(Box::new(refused_on("23505", "users_email_key"))));
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body,
            json!({"error": {
                "code": "conflict",
                "message": "a resource with the same `email` already exists",
                "details": [{"field": "email", "message": "already taken"}],
                "request_id": "r",
            }})
        );
        let (_, body, _) = response(sqlx::Error::Database(Box::new(refused_on(
            "23505",
            "credentials_company_id_name_key",
        ))));
        assert_eq!(
            body["error"]["details"],
            json!([{"field": "name", "message": "already taken"}])
        );
        // A constraint no client value stands behind names no field.
        let (_, body, _) = response(sqlx::Error::Database(Box::new(refused_on(
            "23505",
            "sessions_token_hash_key",
        ))));
        assert_eq!(body["error"]["details"], Value::Null);
    }

    #[test]
    fn collisions_and_outages_ask_the_client_to_retry() {
        for code in ["40001", "40P01"] {
            let (status, body, retry) = response(sqlx::Error::Database(Box::new(Server(code))));
            assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
            assert_eq!(body["error"]["code"], "busy");
        }
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::other("connection reset")),
            sqlx::Error::Database(Box::new(Server("08006"))),
            sqlx::Error::Database(Box::new(Server("57P01"))),
            sqlx::Error::Database(Box::new(Server("53300"))),
        ] {
            let (status, body, retry) = response(e);
            assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("2")));
            assert_eq!(
                body,
                json!({"error": {
                    "code": "unavailable",
                    "message": "the database is unavailable; retry shortly",
                    "details": null,
                    "request_id": "r",
                }})
            );
        }
    }
}
