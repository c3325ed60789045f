//! The canonical text of an audit entry — what its seal hashes and the sink
//! writes — rendered in Rust from the row's columns, byte for byte as
//! `floq_audit_json(a)::text` renders it in PostgreSQL (migrations/0007).
//!
//! Why not let PostgreSQL render it: building the jsonb object and printing
//! it costs the database ≈ 7 µs an entry, eight times what reading the
//! columns (and `details::text`) costs, and the sealer reads every entry. The
//! SQL function stays the definition: `floq_audit_verify()` recomputes chains
//! with it, and a test checks that both renderings agree on awkward values.
//!
//! jsonb's text form: keys sorted by length, then bytewise; `": "` and `", "`
//! between members; strings escaped as PostgreSQL's `escape_json` does.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The columns an entry is rendered from (`details` as jsonb text).
pub const COLUMNS: &str = "id, company_id, xact, at, actor_type, actor_id, actor_label, via, via_id, client_ip, \
                           request_id, action, resource_type, resource_id, outcome, details::text AS details";

#[derive(Debug, sqlx::FromRow)]
pub struct EntryRow {
    pub id: i64,
    pub company_id: Uuid,
    pub xact: i64,
    pub at: DateTime<Utc>,
    pub actor_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_label: Option<String>,
    pub via: Option<String>,
    pub via_id: Option<Uuid>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: String,
    /// Already jsonb text, embedded as it is.
    pub details: String,
}

impl EntryRow {
    /// `floq_audit_json(a)::text`, without asking the database.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(320 + self.details.len());
        // Members in jsonb's order: by key length, then bytewise.
        out.push_str("{\"at\": ");
        string(&mut out, &self.at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        out.push_str(", \"id\": ");
        out.push_str(&self.id.to_string());
        out.push_str(", \"actor\": {\"id\": ");
        uuid(&mut out, self.actor_id);
        out.push_str(", \"via\": ");
        opt(&mut out, self.via.as_deref());
        out.push_str(", \"type\": ");
        string(&mut out, &self.actor_type);
        out.push_str(", \"label\": ");
        opt(&mut out, self.actor_label.as_deref());
        out.push_str(", \"via_id\": ");
        uuid(&mut out, self.via_id);
        out.push_str("}, \"action\": ");
        string(&mut out, &self.action);
        out.push_str(", \"details\": ");
        out.push_str(&self.details);
        out.push_str(", \"outcome\": ");
        string(&mut out, &self.outcome);
        out.push_str(", \"resource\": {\"id\": ");
        opt(&mut out, self.resource_id.as_deref());
        out.push_str(", \"type\": ");
        opt(&mut out, self.resource_type.as_deref());
        out.push_str("}, \"client_ip\": ");
        opt(&mut out, self.client_ip.as_deref());
        out.push_str(", \"company_id\": ");
        uuid(&mut out, Some(self.company_id));
        out.push_str(", \"request_id\": ");
        opt(&mut out, self.request_id.as_deref());
        out.push('}');
        out
    }
}

fn opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => string(out, v),
        None => out.push_str("null"),
    }
}

fn uuid(out: &mut String, value: Option<Uuid>) {
    match value {
        Some(id) => {
            out.push('"');
            out.push_str(&id.to_string());
            out.push('"');
        }
        None => out.push_str("null"),
    }
}

/// A JSON string as PostgreSQL's `escape_json` writes it: the short escapes,
/// `\u00xx` (lowercase hex) for other control characters, everything else raw.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_as_postgres_does() {
        let mut out = String::new();
        string(&mut out, "a\"b\\c\n\t\u{1}\u{7f} é ☃ \u{2028}");
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\t\\u0001\u{7f} é ☃ \u{2028}\"");
    }
}
