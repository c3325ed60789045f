//! Credentials and secret KV values: what each credential type holds, how it
//! is checked, what a read may show of it, and where its ciphertext is bound.
//! The API encrypts; only the worker (and key rotation) decrypts.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::crypto::Binding;

pub const CREDENTIAL_TYPES: [&str; 7] = [
    "http_bearer",
    "http_basic",
    "http_header",
    "api_key_query",
    "postgres",
    "smtp",
    "oauth2",
];

/// The prefix that makes a KV string value secret.
pub const SECRET_PREFIX: &str = "secret:";

fn schema(t: &str) -> Value {
    let text = json!({"type": "string", "minLength": 1, "maxLength": 10_000});
    let (properties, required): (Value, &[&str]) = match t {
        "http_bearer" => (json!({"token": text}), &["token"]),
        "http_basic" => (json!({"username": text, "password": text}), &["username", "password"]),
        "http_header" | "api_key_query" => (json!({"name": text, "value": text}), &["name", "value"]),
        "postgres" => (
            json!({"uri": {"type": "string", "pattern": "^postgres(ql)?://"}}),
            &["uri"],
        ),
        "smtp" => (
            json!({"uri": {"type": "string", "pattern": "^smtps?(\\+starttls)?://"}}),
            &["uri"],
        ),
        _ => (
            json!({"client_id": text, "client_secret": text, "access_token": text, "refresh_token": text}),
            &[],
        ),
    };
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

static VALIDATORS: LazyLock<HashMap<&'static str, jsonschema::Validator>> = LazyLock::new(|| {
    CREDENTIAL_TYPES
        .iter()
        .map(|t| {
            (
                *t,
                jsonschema::validator_for(&schema(t)).expect("credential schemas are valid"),
            )
        })
        .collect()
});

/// Every way `data` breaks its type's shape: (field, message). Messages name
/// fields, never values.
pub fn check(credential_type: &str, data: &Value) -> Vec<(String, String)> {
    let Some(validator) = VALIDATORS.get(credential_type) else {
        return vec![(
            "type".into(),
            format!("must be one of: {}", CREDENTIAL_TYPES.join(", ")),
        )];
    };
    validator
        .iter_errors(data)
        .map(|e| {
            let field = e.instance_path().as_str().trim_start_matches('/').replace('/', ".");
            let field = if field.is_empty() {
                "data".to_string()
            } else {
                format!("data.{field}")
            };
            let message = match e.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    format!("`{}` is required", property.as_str().unwrap_or_default())
                }
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    format!("unexpected field(s): {}", unexpected.join(", "))
                }
                _ => "has the wrong shape for this credential type".to_string(),
            };
            (field, message)
        })
        .collect()
}

/// A hint that tells credentials apart without revealing them.
pub fn hint(credential_type: &str, data: &Value) -> String {
    let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or_default();
    let tail = |s: &str| {
        let n = s.chars().count();
        if n >= 12 {
            format!("…{}", s.chars().skip(n - 4).collect::<String>())
        } else {
            "…".to_string()
        }
    };
    match credential_type {
        "http_bearer" => format!("token {}", tail(field("token"))),
        "http_basic" => format!("user {}", field("username")),
        "http_header" => format!("header {}", field("name")),
        "api_key_query" => format!("query parameter {}", field("name")),
        "postgres" | "smtp" => without_password(field("uri")),
        _ => "oauth2".to_string(),
    }
}

/// `scheme://user:pass@host/db?x` → `scheme://user@host/db` (no query: it may hold secrets too).
fn without_password(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "…".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (userinfo, host) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u.split(':').next().unwrap_or_default()), h),
        None => (None, rest),
    };
    match userinfo {
        Some(user) if !user.is_empty() => format!("{scheme}://{user}@{host}"),
        _ => format!("{scheme}://{host}"),
    }
}

pub fn credential_binding(company_id: Uuid, id: &str) -> Binding<'_> {
    Binding {
        company_id,
        table: "credentials",
        column: "data",
        row_id: id,
    }
}

pub fn kv_binding(company_id: Uuid, key: &str) -> Binding<'_> {
    Binding {
        company_id,
        table: "kv",
        column: "secret",
        row_id: key,
    }
}

/// Every string of a decrypted secret worth scrubbing from what a node
/// produced, with the forms it commonly travels in (Basic auth's base64).
pub fn scrub_values(credential_type: &str, fields: &[(&str, &str)]) -> Vec<String> {
    use base64::Engine;
    let field = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let mut out: Vec<String> = fields
        .iter()
        // Names (a header's, a query parameter's, a username) are not secret.
        .filter(|(k, _)| !matches!(*k, "name" | "username" | "client_id"))
        .map(|(_, v)| v.to_string())
        .collect();
    if credential_type == "http_basic"
        && let (Some(u), Some(p)) = (field("username"), field("password"))
    {
        out.push(base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    }
    out.retain(|s| s.len() >= 4);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_checks_its_fields_and_names_them() {
        assert!(check("http_bearer", &json!({"token": "t0k3n"})).is_empty());
        assert_eq!(check("http_bearer", &json!({}))[0].0, "data");
        assert_eq!(
            check("http_basic", &json!({"username": "u", "password": 1}))[0].0,
            "data.password"
        );
        assert_eq!(check("postgres", &json!({"uri": "mysql://x"}))[0].0, "data.uri");
        assert_eq!(check("telepathy", &json!({}))[0].0, "type");
        let errors = check(
            "http_bearer",
            &json!({"token": "s3cr3t-value", "extra": "s3cr3t-other"}),
        );
        assert!(
            !format!("{errors:?}").contains("s3cr3t"),
            "messages never echo values: {errors:?}"
        );
    }

    #[test]
    fn hints_never_reveal_the_secret() {
        assert_eq!(
            hint("http_bearer", &json!({"token": "sk_live_abcdefghijkl1234"})),
            "token …1234"
        );
        assert_eq!(hint("http_bearer", &json!({"token": "short"})), "token …");
        assert_eq!(
            hint(
                "postgres",
                &json!({"uri": "postgres://app:pa55@db.internal:5432/app?sslmode=require"})
            ),
            "postgres://app@db.internal:5432/app"
        );
        assert_eq!(
            hint("smtp", &json!({"uri": "smtps://:pw@mail.test"})),
            "smtps://mail.test"
        );
    }

    #[test]
    fn scrub_values_cover_the_encodings_secrets_travel_in() {
        let values = scrub_values("http_basic", &[("username", "ada"), ("password", "hunter22")]);
        assert!(values.contains(&"hunter22".to_string()));
        assert!(values.contains(&"YWRhOmh1bnRlcjIy".to_string()));
        assert!(!values.contains(&"ada".to_string()));
    }
}
