//! The OpenAPI 3.1 document, generated from the handlers' own `#[utoipa::path]`
//! annotations: `routes::router()` registers each handler with `routes!(…)`,
//! which puts its route on the axum router and its operation in the document
//! in one step, so no route can exist undocumented. Served, public, at
//! `GET /api/v1/openapi.json`.
//!
//! How the document says who may call an operation (the tests read it so):
//! an operation without `security` is public; a guarded one lists the
//! [`BEARER`] and [`SESSION`] schemes, and their scopes name the capability
//! it needs (`["flow:edit"]`, a name from [`crate::authz::Capability`]);
//! empty scopes mean any authenticated caller.
//!
//! The error statuses every operation shares because an extractor or the
//! middleware produces them (401 for a guarded operation, 403 for a
//! capability or a cookie without an allowed `Origin`, 404 for an id in the
//! path, 400/413/415/422 for a JSON body, 422 for a query string, 503 for a
//! database outage) are added here by [`Finish`], so each annotation lists
//! only what its handler decides (409, 429, …).

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{IntoParams, Modify, ToSchema};

/// `Authorization: Bearer <API key>` (or `X-API-Key: <API key>`).
pub const BEARER: &str = "api_key";
/// The `floq_session` cookie `POST /api/v1/auth/login` sets.
pub const SESSION: &str = "session";

/// Every client error: `{"error": {code, message, details, request_id}}`.
/// Internal errors have the same shape with an opaque message.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: ApiError renders the body
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `validation_failed`, `not_found`, `forbidden`.
    code: String,
    /// For people; may change.
    message: String,
    /// Depends on the code: for `validation_failed` a list of `{field, message}`; else often `null`.
    #[schema(value_type = Value)]
    details: Value,
    /// The `x-request-id` of the request, to find its log lines.
    request_id: String,
}

/// Any JSON value, as given (a run's input, a flow definition, a webhook's body).
#[derive(ToSchema)]
#[schema(value_type = Value)]
#[allow(dead_code)]
pub struct AnyJson(Value);

/// A body taken as it came, in any media type (a webhook call's).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct RawBody(Vec<u8>);

/// `?limit=&cursor=` of every list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Rows on the page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page; absent for the first.
    cursor: Option<String>,
}

/// A page of a list whose item type is `$item`, as `$name`.
macro_rules! page {
    ($name:ident, $item:ty) => {
        /// One page: `next_cursor` is `null` on the last page; pass it back as `cursor` for the next.
        #[derive(utoipa::ToSchema)]
        #[allow(dead_code)]
        struct $name {
            items: Vec<$item>,
            #[schema(required = true)]
            next_cursor: Option<String>,
        }
    };
}
pub(crate) use page;

/// Adds the security schemes, the shared error responses to every operation,
/// and a method suffix to operation ids one handler shares between methods.
struct Finish;

impl Modify for Finish {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An API key (`POST /api/v1/api-keys`); `X-API-Key: <key>` works the same",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            SESSION,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::session::COOKIE_NAME,
                "A browser session (`POST /api/v1/auth/login`); requests that change state must carry an allowed `Origin`",
            ))),
        );
        for item in doc.paths.paths.values_mut() {
            // One handler serving several methods (a webhook's GET/POST/PUT) is one
            // annotation; each of its operations still needs an id of its own.
            let mut ids: Vec<String> = [&item.get, &item.put, &item.post, &item.delete, &item.patch]
                .into_iter()
                .flatten()
                .filter_map(|op| op.operation_id.clone())
                .collect();
            ids.sort();
            let shared: Vec<String> = ids.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0].clone()).collect();
            for (method, op) in [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ] {
                if let Some(op) = op {
                    if let Some(id) = op.operation_id.as_mut().filter(|id| shared.contains(id)) {
                        id.push('_');
                        id.push_str(method);
                    }
                    add_shared_errors(method, op);
                }
            }
        }
    }
}

fn add_shared_errors(method: &str, op: &mut Operation) {
    // A body taken as it came (any media type) may also be empty.
    if let Some(RefOr::T(body)) = op.request_body.as_mut()
        && body.content.contains_key("*/*")
    {
        body.required = Some(Required::False);
    }
    let scopes: Option<Vec<String>> = op
        .security
        .as_ref()
        .and_then(|s| s.first())
        .and_then(|req| serde_json::to_value(req).ok())
        .map(|v| {
            v.get(BEARER)
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default()
        });
    let located = |place: ParameterIn| {
        op.parameters
            .iter()
            .flatten()
            .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
    };
    let (in_path, in_query) = (located(ParameterIn::Path), located(ParameterIn::Query));
    let mut shared: Vec<(&str, &str)> = Vec::new();
    if op.request_body.is_some() {
        shared.push(("400", "The body is not valid JSON (`malformed_json`)"));
        shared.push(("413", "The body is over the limit (`payload_too_large`)"));
        shared.push(("415", "The body is not `application/json` (`unsupported_media_type`)"));
        shared.push((
            "422",
            "The body or a parameter is invalid (`validation_failed`, `invalid_text`), naming the field",
        ));
    } else if in_query {
        shared.push(("422", "A query parameter is invalid, naming it"));
    }
    if let Some(scopes) = &scopes {
        shared.push(("401", "No valid API key or session (`unauthorized`)"));
        if !scopes.is_empty() {
            shared.push(("403", "The caller's role lacks the capability (`forbidden`)"));
        } else if method != "get" {
            shared.push(("403", "A session without an allowed `Origin` (`origin_not_allowed`)"));
        }
    }
    if in_path {
        shared.push(("404", "Nothing the caller may see has this id (`not_found`)"));
    }
    shared.push(("503", "The database is unavailable or busy; retry after `Retry-After`"));
    for (status, description) in shared {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(description));
    }
}

/// A response carrying [`ErrorBody`].
pub fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "floq API",
        description = "Workflow automation: flows, runs, schedules, webhooks, credentials, audit. \
                       Errors are `ErrorBody`; lists page with `limit` and `cursor`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail, AnyJson, RawBody))
)]
struct Header;

/// The document for `paths`, completed with the header, schemes and shared errors.
pub fn complete(paths: OpenApi) -> OpenApi {
    let mut doc = <Header as utoipa::OpenApi>::openapi();
    doc.merge(paths);
    Finish.modify(&mut doc);
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The served document: built once, with a strong validator for caches.
struct Served {
    body: Bytes,
    etag: HeaderValue,
}

static SERVED: LazyLock<Served> = LazyLock::new(|| {
    let body = serde_json::to_vec(&crate::document()).expect("the document serializes");
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    Served {
        body: body.into(),
        etag: HeaderValue::from_str(&etag).expect("hex is a valid header"),
    }
});

/// This document. It is the same for every caller and changes only with a release.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = AnyJson),
        (status = 304, description = "Unchanged since the `ETag` sent in `If-None-Match`"),
    ),
)]
pub async fn serve(headers: HeaderMap) -> Response {
    let served = &*SERVED;
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        (header::ETAG, served.etag.clone()),
    ];
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim() == "*" || t.trim() == served.etag.to_str().unwrap_or_default())
        });
    if unchanged {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        served.body.clone(),
    )
        .into_response()
}
