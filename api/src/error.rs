//! The API's one error type. Client errors carry a code, a message and
//! details; internal errors are opaque (the cause is logged once, with the
//! request id, by the middleware). The middleware also stamps `request_id`
//! into every error body, including ones axum or tower produce.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

use floq_shared::db::{Fault, StoreError};

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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        refusal(e.fault()).unwrap_or_else(|| ApiError::Internal(e.into()))
    }
}

/// A batch writer's error, shared by every request of the part that failed.
impl From<Arc<StoreError>> for ApiError {
    fn from(e: Arc<StoreError>) -> Self {
        refusal(e.fault()).unwrap_or_else(|| ApiError::Internal(anyhow::Error::new(e)))
    }
}

/// What a database fault means to the client, in one place. Text the
/// database cannot store (ingress refuses it first; this is the second wall)
/// is `422`; a unique value another request just took (a race past a
/// handler's own check) is `409` naming the field; a deadlock or
/// serialization failure that outlived the statement's own retries, and a
/// database that cannot be reached, are `503` with `Retry-After`. Only what
/// no client can fix (a statement the server cannot run, say) is internal.
fn refusal(fault: Fault) -> Option<ApiError> {
    Some(match fault {
        Fault::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unavailable; retry shortly",
        )
        .retry_after(2),
        Fault::InvalidText => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_text",
            "the request holds text that cannot be stored",
        ),
        Fault::Conflict { field } => {
            let message = match field {
                Some(field) => format!("a resource with the same `{field}` already exists"),
                None => "a resource with the same unique value already exists".into(),
            };
            let error = ApiError::new(StatusCode::CONFLICT, "conflict", message);
            match field {
                Some(field) => error.with_details(json!([{"field": field, "message": "already taken"}])),
                None => error,
            }
        }
        Fault::Removed => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "something the request refers to was removed meanwhile",
        ),
        Fault::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the request collided with concurrent changes; retry it",
        )
        .retry_after(1),
        Fault::Other => return None,
    })
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

    use floq_shared::db::fake::{connection_reset, pool_timeout, refused, refused_on};

    fn response(e: StoreError) -> (StatusCode, Value, Option<String>) {
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
        match ApiError::from(refused(code)) {
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
        let (status, body, _) = response(refused_on("23505", Some("users_email_key")));
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
        let (_, body, _) = response(refused_on("23505", Some("credentials_company_id_name_key")));
        assert_eq!(
            body["error"]["details"],
            json!([{"field": "name", "message": "already taken"}])
        );
        // A constraint no client value stands behind names no field.
        let (_, body, _) = response(refused_on("23505", Some("sessions_token_hash_key")));
        assert_eq!(body["error"]["details"], Value::Null);
    }

    #[test]
    fn collisions_and_outages_ask_the_client_to_retry() {
        for code in ["40001", "40P01"] {
            let (status, body, retry) = response(refused(code));
            assert_eq!((status, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("1")));
            assert_eq!(body["error"]["code"], "busy");
        }
        for e in [
            pool_timeout(),
            connection_reset(),
            refused("08006"),
            refused("57P01"),
            refused("53300"),
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
