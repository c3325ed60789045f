//! Request extractors whose rejections are structured `ApiError`s:
//! malformed JSON is `400`, a wrong shape is `422` naming the field, a body
//! over the limit is `413`, a malformed id in the path is `404`.
//!
//! They are also where text PostgreSQL cannot store stops: a NUL (U+0000)
//! anywhere in a JSON body or a query parameter is `422 invalid_text`
//! naming the field, for every endpoint, before a handler sees the request
//! (and before the row could fail a batch it shares with other tenants).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;
use floq_shared::email::Email;
use floq_shared::pgtext;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // axum's `Json`, step by step, so the bytes can be checked for text it would accept
        // but the database would not.
        if !json_content_type(req.headers()) {
            return Err(json_rejection(
                JsonRejection::MissingJsonContentType(Default::default()),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes).map_err(json_rejection)?;
        storable_json(&bytes, "")?;
        Ok(ApiJson(value))
    }
}

/// Refuses JSON text holding a NUL in any string or key with `422 invalid_text`
/// naming its path below `prefix`. One scan of the bytes in the common case.
pub fn storable_json(bytes: &[u8], prefix: &str) -> Result<(), ApiError> {
    if !pgtext::json_text_may_hold_nul(bytes) {
        return Ok(());
    }
    let field = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| pgtext::nul_path(&v, prefix))
        .unwrap_or_else(|| {
            if prefix.is_empty() {
                "body".into()
            } else {
                prefix.into()
            }
        });
    Err(ApiError::invalid_text(&field))
}

/// `application/json` or `application/<anything>+json`, as axum's `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(mime) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind == "application" && (subtype == "json" || subtype.ends_with("+json"))
}

fn bytes_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else {
        ApiError::new(e.status(), "bad_request", "the request body could not be read")
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            let message = e.body_text();
            ApiError::validation(
                "the request body has the wrong shape",
                json!([{"field": "body", "message": message}]),
            )
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the request body is not valid JSON",
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ),
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        other => ApiError::new(other.status(), "bad_request", "the request body could not be read"),
    }
}

/// A body taken as it came (webhooks), refused with `422 invalid_text` if
/// it holds a NUL: as a raw byte (`body`), or, in JSON, escaped in a string or
/// key (`body.<path>`).
pub struct StorableBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for StorableBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        if bytes.contains(&0) {
            return Err(ApiError::invalid_text("body"));
        }
        storable_json(&bytes, "body")?;
        Ok(StorableBytes(bytes))
    }
}

pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let query = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e: QueryRejection| {
                ApiError::validation(
                    "the query string is invalid",
                    json!([{"field": "query", "message": e.body_text()}]),
                )
            })?;
        storable_query(&parts.uri)?;
        Ok(ApiQuery(query.0))
    }
}

/// A NUL reaches a query parameter only as `%00`: refuse it naming the parameter.
fn storable_query(uri: &axum::http::Uri) -> Result<(), ApiError> {
    if !uri.query().is_some_and(|q| q.contains("%00")) {
        return Ok(());
    }
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default();
    match pairs.iter().find(|(k, v)| k.contains('\0') || v.contains('\0')) {
        Some((k, _)) if !k.contains('\0') => Err(ApiError::invalid_text(k)),
        Some(_) => Err(ApiError::invalid_text("query")),
        None => Ok(()),
    }
}

/// A resource id from the path. Something that is not a UUID cannot name a
/// resource, so it answers `404` like any other unknown id.
pub struct Id(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("resource"))?;
        Uuid::parse_str(&raw)
            .map(Id)
            .map_err(|_| ApiError::not_found("resource"))
    }
}

/// Rows a list answers when the caller gives no `limit`, and the most it may ask for.
pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

/// `limit` and `cursor` for list endpoints; newest first, keyed on time-ordered ids.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(l) if (1..=MAX_PAGE).contains(&l) => Ok(l),
        Some(_) => Err(ApiError::validation(
            "limit is out of range",
            json!([{"field": "limit", "message": "must be between 1 and 200"}]),
        )),
    }
}

/// Where a page of a keyset-ordered list starts. Every list has one fixed
/// order with a unique key, and a page is "the first `limit` rows after the
/// key": one index range scan however deep the caller pages, where an
/// offset would read every row it skips. Without a cursor a page starts at
/// [`Cursor::START`], a key before every row, so each list is one statement
/// whose bound the planner can always put on its index (no
/// `$n IS NULL OR …` that a generic plan cannot).
pub trait Cursor: Sized {
    const START: Self;
    fn encode(&self) -> String;
    fn decode(raw: &str) -> Option<Self>;
}

/// Newest first by time-ordered (v7) id, the order of flows and runs: the
/// cursor is the last id seen, rows continue with `id < cursor`.
impl Cursor for Uuid {
    const START: Self = Uuid::max();
    fn encode(&self) -> String {
        self.to_string()
    }
    fn decode(raw: &str) -> Option<Self> {
        Uuid::parse_str(raw).ok()
    }
}

/// By name, then id, for lists of things a company names uniquely
/// (credentials, groups, flow groups, KV keys): rows continue with
/// `(name, id) > cursor`. Opaque (base64url of the pair): clients pass it back, never build it.
#[derive(Debug, PartialEq, Eq)]
pub struct ByName(pub String, pub Uuid);

impl Cursor for ByName {
    const START: Self = ByName(String::new(), Uuid::nil());
    fn encode(&self) -> String {
        opaque(&(&self.0, self.1))
    }
    fn decode(raw: &str) -> Option<Self> {
        let (name, id): (String, Uuid) = unopaque(raw)?;
        Some(ByName(name, id))
    }
}

/// Newest first by a time, then id, for rows without a time-ordered id of
/// their own (members, by when they joined): rows continue with
/// `(at, id) < cursor`. Opaque like [`ByName`].
#[derive(Debug, PartialEq, Eq)]
pub struct ByTime(pub DateTime<Utc>, pub Uuid);

impl Cursor for ByTime {
    // 9999-12-31T23:59:59Z: after every row, and a timestamptz PostgreSQL holds.
    const START: Self = match DateTime::from_timestamp(253_402_300_799, 0) {
        Some(end_of_9999) => ByTime(end_of_9999, Uuid::max()),
        None => panic!("9999-12-31 is a valid time"),
    };
    fn encode(&self) -> String {
        opaque(&(self.0, self.1))
    }
    fn decode(raw: &str) -> Option<Self> {
        let (at, id): (DateTime<Utc>, Uuid) = unopaque(raw)?;
        Some(ByTime(at, id))
    }
}

/// Newest first by a number that grows with each row (a flow's versions):
/// the cursor is the last number seen, rows continue with `n < cursor`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct ByNumber(pub i32);

impl Cursor for ByNumber {
    const START: Self = ByNumber(i32::MAX);
    fn encode(&self) -> String {
        self.0.to_string()
    }
    fn decode(raw: &str) -> Option<Self> {
        raw.parse().ok().filter(|n| *n > 0).map(ByNumber)
    }
}

fn opaque(key: &impl serde::Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default())
}

fn unopaque<T: DeserializeOwned>(raw: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(raw).ok()?).ok()
}

/// `?limit=&cursor=` of a list endpoint, checked: a `limit` outside
/// 1..=[`MAX_PAGE`] or a cursor this list did not hand out is `422` naming
/// the parameter. Other parameters are refused like any unknown field.
pub struct Page<K> {
    pub limit: i64,
    pub after: K,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

impl<K: Cursor> Page<K> {
    fn parse(q: PageQuery) -> Result<Self, ApiError> {
        let limit = match q.limit {
            None => None,
            Some(raw) => Some(raw.parse::<i64>().map_err(|_| {
                ApiError::validation(
                    "limit is out of range",
                    json!([{"field": "limit", "message": "must be between 1 and 200"}]),
                )
            })?),
        };
        let after = match q.cursor {
            None => K::START,
            Some(raw) => K::decode(&raw).ok_or_else(|| {
                ApiError::validation(
                    "a query parameter is invalid",
                    json!([{"field": "cursor", "message": "not a cursor from this listing"}]),
                )
            })?,
        };
        Ok(Page {
            limit: page_limit(limit)?,
            after,
        })
    }

    /// `{items, next_cursor}`: a full page hands out the key of its last row
    /// (the next page may then be empty), a short one `null`.
    pub fn answer<T: serde::Serialize>(&self, items: Vec<T>, key: impl Fn(&T) -> K) -> Value {
        let next_cursor = self.next_cursor(&items, key);
        json!({"items": items, "next_cursor": next_cursor})
    }

    pub fn next_cursor<T>(&self, items: &[T], key: impl Fn(&T) -> K) -> Option<String> {
        (items.len() as i64 == self.limit)
            .then(|| items.last().map(|last| key(last).encode()))
            .flatten()
    }
}

impl<S: Send + Sync, K: Cursor> FromRequestParts<S> for Page<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ApiQuery(q) = ApiQuery::<PageQuery>::from_request_parts(parts, state).await?;
        Page::parse(q)
    }
}

/// A JSON body that must also pass its `validator` rules; failures are `422`
/// with one `{field, message}` per broken rule.
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + validator::Validate> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        value.validate().map_err(invalid_body)?;
        Ok(ValidJson(value))
    }
}

/// The e-mail rule beside `#[validate(email)]`: [`Email`]'s (ASCII only; see
/// `floq_shared::email` on why).
pub fn ascii_email(value: &str) -> Result<(), validator::ValidationError> {
    match Email::parse(value) {
        Ok(_) => Ok(()),
        Err(e) => Err(validator::ValidationError::new("ascii_email").with_message(e.to_string().into())),
    }
}

/// A body's `email` field, which [`ascii_email`] has already passed: the
/// same `422` if it did not.
pub fn email(value: &str) -> Result<Email, ApiError> {
    Email::parse(value).map_err(|e| {
        ApiError::validation(
            "the request body is invalid",
            json!([{"field": "email", "message": e.to_string()}]),
        )
    })
}

/// `422` with one `{field, message}` per broken rule; also for rules that
/// depend on configuration and are checked in a handler.
pub fn invalid_body(errors: validator::ValidationErrors) -> ApiError {
    let details: Vec<serde_json::Value> = errors
        .field_errors()
        .into_iter()
        .flat_map(|(field, errs)| {
            errs.iter().map(move |e| {
                let message = e
                    .message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| e.code.to_string());
                json!({"field": field, "message": message})
            })
        })
        .collect();
    ApiError::validation("the request body is invalid", json!(details))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: ApiError) -> (StatusCode, &'static str, Value) {
        match e {
            ApiError::Client {
                status, code, details, ..
            } => (status, code, details[0]["field"].clone()),
            ApiError::Internal(e) => panic!("internal: {e}"),
        }
    }

    #[test]
    fn json_holding_a_nul_is_refused_naming_its_path() {
        let e = storable_json(br#"{"input":{"list":[1,"a\u0000"]}}"#, "").unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_text", json!("input.list[1]"))
        );
        let e = storable_json(br#"{"\u0000":1}"#, "body").unwrap_err();
        assert_eq!(field(e).2, json!("body.\\u0000"));
        assert!(storable_json(br#"{"a":"\\u0000 is how JSON spells it"}"#, "").is_ok());
        assert!(storable_json(br#"{"a":"plain"}"#, "").is_ok());
    }

    #[test]
    fn a_query_parameter_holding_a_nul_is_refused_by_name() {
        let uri: axum::http::Uri = "/x?ok=1&action=a%00b".parse().unwrap();
        assert_eq!(field(storable_query(&uri).unwrap_err()).2, json!("action"));
        let uri: axum::http::Uri = "/x?a%00=1".parse().unwrap();
        assert_eq!(field(storable_query(&uri).unwrap_err()).2, json!("query"));
        let uri: axum::http::Uri = "/x?a=%2500".parse().unwrap();
        assert!(storable_query(&uri).is_ok(), "%25 is a percent sign, not a NUL");
    }

    fn page<K: Cursor>(limit: Option<&str>, cursor: Option<&str>) -> Result<Page<K>, ApiError> {
        Page::parse(PageQuery {
            limit: limit.map(str::to_string),
            cursor: cursor.map(str::to_string),
        })
    }

    #[test]
    fn cursors_round_trip_and_start_before_every_row() {
        let id = Uuid::now_v7();
        let by_name = ByName("billing ✓".into(), id);
        assert_eq!(ByName::decode(&by_name.encode()), Some(by_name));
        let by_time = ByTime(Utc::now(), id);
        assert_eq!(ByTime::decode(&by_time.encode()), Some(by_time));
        assert_eq!(<Uuid as Cursor>::decode(&id.encode()), Some(id));
        assert_eq!(ByTime::START.0.to_rfc3339(), "9999-12-31T23:59:59+00:00");
        let first = page::<ByName>(None, None).unwrap();
        assert_eq!((first.limit, first.after), (DEFAULT_PAGE, ByName::START));
        assert_eq!(page::<Uuid>(Some("200"), None).unwrap().after, Uuid::max());
    }

    #[test]
    fn a_bad_limit_or_cursor_is_refused_naming_it() {
        for limit in ["0", "201", "-1", "ten"] {
            let e = page::<Uuid>(Some(limit), None).err().expect(limit);
            assert_eq!(
                field(e),
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", json!("limit"))
            );
        }
        let id = Uuid::now_v7().to_string();
        for cursor in ["nope", "", &id] {
            let e = page::<ByName>(None, Some(cursor)).err().expect(cursor);
            assert_eq!(field(e).2, json!("cursor"), "{cursor}");
        }
        assert_eq!(field(page::<Uuid>(None, Some("x")).err().unwrap()).2, json!("cursor"));
    }

    #[test]
    fn json_content_types_match_axums() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            json_content_type(&h)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("application/cloudevents+json"));
        assert!(!with("text/json"));
        assert!(!json_content_type(&HeaderMap::new()));
    }
}
