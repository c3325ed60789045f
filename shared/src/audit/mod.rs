//! The audit log: what an entry holds, the one function that writes entries
//! (after masking them), the batched writer for entries that ride no
//! transaction of their own, and the sealer that chains them.
//!
//! Changes to entities are audited inside the transaction that makes them,
//! so a change never commits without its entry. Request, sign-in and denial
//! entries go through [`Writer`], off the request's critical path.

pub mod canonical;
pub mod query;
pub mod sanitize;
pub mod seal;
pub mod sink;
pub mod trim;
mod writer;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::StoreError;
use crate::pgtext;
pub use writer::Writer;

/// The company of platform-level entries: those that belong to no company,
/// such as a failed sign-in for an unknown address or a cross-tenant duty.
pub const PLATFORM: Uuid = Uuid::nil();

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorType {
    User,
    System,
    Anonymous,
}

impl ActorType {
    fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::System => "system",
            ActorType::Anonymous => "anonymous",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Session,
    ApiKey,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Session => "session",
            Via::ApiKey => "api_key",
        }
    }
}

/// Who acted, through what, from where.
#[derive(Clone, Debug)]
pub struct Actor {
    pub kind: ActorType,
    pub id: Option<Uuid>,
    /// A service name for system actors, the address tried for a failed sign-in.
    pub label: Option<String>,
    pub via: Option<(Via, Uuid)>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn system(service: &str) -> Self {
        Self {
            kind: ActorType::System,
            id: None,
            label: Some(service.to_string()),
            via: None,
            client_ip: None,
            request_id: None,
        }
    }

    pub fn anonymous(client_ip: Option<String>, request_id: Option<String>) -> Self {
        Self {
            kind: ActorType::Anonymous,
            id: None,
            label: None,
            via: None,
            client_ip,
            request_id,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub company_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub action: String,
    pub resource: Option<(String, String)>,
    pub outcome: Outcome,
    pub details: Value,
}

impl Entry {
    pub fn new(company_id: Uuid, actor: Actor, action: impl Into<String>) -> Self {
        Self {
            company_id,
            at: Utc::now(),
            actor,
            action: action.into(),
            resource: None,
            outcome: Outcome::Success,
            details: Value::Object(Map::new()),
        }
    }

    pub fn resource(mut self, kind: &str, id: impl ToString) -> Self {
        self.resource = Some((kind.to_string(), id.to_string()));
        self
    }

    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// The state of an entity before and after a change (`None` for a create's
    /// before and a delete's after).
    pub fn change(self, before: Option<&impl Serialize>, after: Option<&impl Serialize>) -> Self {
        self.details(json!({"before": to_value(before), "after": to_value(after)}))
    }
}

fn to_value(state: Option<&impl Serialize>) -> Value {
    state.and_then(|v| serde_json::to_value(v).ok()).unwrap_or(Value::Null)
}

/// What an auditor may learn of a payload without its values: its size and
/// its top-level keys.
pub fn shape(value: &Value) -> Value {
    let bytes = json_len(value);
    match value {
        Value::Object(map) => {
            json!({"bytes": bytes, "type": "object", "keys": map.keys().take(50).collect::<Vec<_>>()})
        }
        Value::Array(items) => json!({"bytes": bytes, "type": "array", "items": items.len()}),
        Value::Null => json!({"bytes": bytes, "type": "null"}),
        Value::Bool(_) => json!({"bytes": bytes, "type": "boolean"}),
        Value::Number(_) => json!({"bytes": bytes, "type": "number"}),
        Value::String(_) => json!({"bytes": bytes, "type": "string"}),
    }
}

/// Bytes of a value's JSON text, counted without building it.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(0, |()| count.0)
}

/// The one way entries reach the database: masked, then appended in one
/// statement. Runs on whatever transaction the caller holds, so RLS decides
/// which companies it may write for.
pub async fn append<'a>(
    conn: &mut PgConnection,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<(), StoreError> {
    let entries = entries.into_iter();
    let mut c = Columns::with_capacity(entries.size_hint().0);
    // Entries record what callers and flows sent, NULs included; text PostgreSQL
    // cannot store would fail every entry sharing the statement, so it is stored
    // by the same rule as run outputs (`pgtext::replace_nul`).
    let text = |s: &Option<String>| s.as_deref().map(|s| pgtext::replace_nul_str(s).into_owned());
    for e in entries {
        let mut details = sanitize::sanitized(&e.details);
        if pgtext::has_nul(&details) {
            pgtext::replace_nul(details.to_mut());
        }
        c.details.push(details);
        c.company.push(e.company_id);
        c.at.push(e.at);
        c.actor_type.push(e.actor.kind.as_str());
        c.actor_id.push(e.actor.id);
        c.actor_label.push(text(&e.actor.label));
        c.via.push(e.actor.via.map(|(v, _)| v.as_str()));
        c.via_id.push(e.actor.via.map(|(_, id)| id));
        c.client_ip.push(text(&e.actor.client_ip));
        c.request_id.push(text(&e.actor.request_id));
        c.action.push(pgtext::replace_nul_str(&e.action).into_owned());
        c.resource_type.push(
            e.resource
                .as_ref()
                .map(|(t, _)| pgtext::replace_nul_str(t).into_owned()),
        );
        c.resource_id.push(
            e.resource
                .as_ref()
                .map(|(_, id)| pgtext::replace_nul_str(&sanitize::mask_text(id)).into_owned()),
        );
        c.outcome.push(e.outcome.as_str());
    }
    if c.company.is_empty() {
        return Ok(());
    }
    let details: Vec<&Value> = c.details.iter().map(|d| d.as_ref()).collect();
    sqlx::query(
        "INSERT INTO audit_log (company_id, at, actor_type, actor_id, actor_label, via, via_id, client_ip,
                                request_id, action, resource_type, resource_id, outcome, details)
         SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                              $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                              $13::text[], $14::jsonb[])",
    )
    .bind(&c.company)
    .bind(&c.at)
    .bind(&c.actor_type)
    .bind(&c.actor_id)
    .bind(&c.actor_label)
    .bind(&c.via)
    .bind(&c.via_id)
    .bind(&c.client_ip)
    .bind(&c.request_id)
    .bind(&c.action)
    .bind(&c.resource_type)
    .bind(&c.resource_id)
    .bind(&c.outcome)
    .bind(&details)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Default)]
struct Columns<'a> {
    company: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    actor_type: Vec<&'static str>,
    actor_id: Vec<Option<Uuid>>,
    actor_label: Vec<Option<String>>,
    via: Vec<Option<&'static str>>,
    via_id: Vec<Option<Uuid>>,
    client_ip: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    action: Vec<String>,
    resource_type: Vec<Option<String>>,
    resource_id: Vec<Option<String>>,
    outcome: Vec<&'static str>,
    /// Borrowed unless masking changed something.
    details: Vec<std::borrow::Cow<'a, Value>>,
}

impl Columns<'_> {
    fn with_capacity(n: usize) -> Self {
        Self {
            company: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            details: Vec::with_capacity(n),
            ..Default::default()
        }
    }
}
