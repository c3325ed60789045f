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

/// Two refusals are the client's to fix and map here, once: text the
/// database cannot store (ingress refuses it first; this is the second
/// wall) and a unique value another request just took (a race past a
/// handler's own check). Everything else is an internal error.
fn refusal(e: &sqlx::Error) -> Option<ApiError> {
    match floq_shared::batch::sqlstate(e).as_deref() {
        // untranslatable_character, character_not_in_repertoire
        Some("22P05" | "22021") => Some(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_text",
            "the request holds text that cannot be stored",
        )),
        // unique_violation
        Some("23505") => Some(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a resource with the same unique value already exists",
        )),
        _ => None,
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

    use floq_shared::batch::refused_by as Server;

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
        assert_eq!(mapped("42P01"), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
        assert_eq!(mapped("08006"), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    }
}
