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
        }
    }

    pub fn with_details(self, details: Value) -> Self {
        match self {
            ApiError::Client {
                status, code, message, ..
            } => ApiError::Client {
                status,
                code,
                message,
                details,
            },
            internal => internal,
        }
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
    }

    pub fn validation(message: impl Into<String>, details: Value) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message).with_details(details)
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
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
        let (status, body) = match self {
            ApiError::Client {
                status,
                code,
                message,
                details,
            } => (
                status,
                ErrorBody {
                    code,
                    message,
                    details,
                    cause: None,
                },
            ),
            ApiError::Internal(cause) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorBody {
                    code: "internal",
                    message: "internal error; quote the request id when reporting it".into(),
                    details: Value::Null,
                    cause: Some(Arc::new(cause)),
                },
            ),
        };
        let mut response = (status, Json(body.render(""))).into_response();
        response.extensions_mut().insert(body);
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
