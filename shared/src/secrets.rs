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

/// The JSON Schema of a credential type's `data`, or `None` for a type floq
/// does not know: the one rule [`check`] validates with and
/// `GET /api/v1/credential-types` serves. Secret fields (those [`hint`]
/// masks and the API never returns) carry `"writeOnly": true`, an annotation
/// validation ignores.
pub fn credential_schema(t: &str) -> Option<Value> {
    CREDENTIAL_TYPES.contains(&t).then(|| schema(t))
}

fn schema(t: &str) -> Value {
    let mut schema = shape(t);
    if let Some(properties) = schema["properties"].as_object_mut() {
        for (name, field) in properties.iter_mut() {
            if is_secret_field(t, name) {
                field["writeOnly"] = json!(true);
            }
        }
    }
    schema
}

/// Whether a field of a credential type's `data` is secret: a connection URI
/// (it holds the password) and every text field that is not a name.
fn is_secret_field(t: &str, name: &str) -> bool {
    match t {
        "postgres" | "smtp" => name == "uri",
        _ => !is_public_field(name) && name != "scopes",
    }
}

fn shape(t: &str) -> Value {
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
        // Tokens are not written by anyone: the connect flow stores them apart (crate::oauth::links).
        _ => (
            json!({
                "provider": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
                "client_id": text,
                "client_secret": text,
                "scopes": {"type": "array", "maxItems": 100,
                           "items": {"type": "string", "pattern": "^[^\\s]{1,500}$"}},
            }),
            &["provider", "client_id", "client_secret"],
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

/// Shortest secret floq stores. Masking replaces every occurrence of a secret in run output, so a short one would
/// either leak (left unmasked) or mask innocent text everywhere (`abc` in every word that holds it).
pub const MIN_SECRET_CHARS: usize = 8;

/// The message for a secret below [`MIN_SECRET_CHARS`]; it names the rule, never the value.
pub fn too_short() -> String {
    format!("must be at least {MIN_SECRET_CHARS} characters: shorter secrets cannot be masked safely in run output")
}

/// Why a secret KV value (the text after `secret:`) cannot be stored, if it cannot.
pub fn check_secret_value(secret: &str) -> Option<String> {
    (secret.chars().count() < MIN_SECRET_CHARS).then(too_short)
}

/// Every way `data` breaks its type's shape: (field, message). Messages name
/// fields, never values.
pub fn check(credential_type: &str, data: &Value) -> Vec<(String, String)> {
    let Some(validator) = VALIDATORS.get(credential_type) else {
        return vec![(
            "type".into(),
            format!("must be one of: {}", CREDENTIAL_TYPES.join(", ")),
        )];
    };
    let mut errors = shape_errors(validator, data);
    if errors.is_empty() {
        errors.extend(short_secrets(credential_type, data));
    }
    errors
}

/// Secret fields (and a URI's password) shorter than [`MIN_SECRET_CHARS`].
fn short_secrets(credential_type: &str, data: &Value) -> Vec<(String, String)> {
    let Some(fields) = data.as_object() else {
        return vec![];
    };
    let mut out = Vec::new();
    for (name, value) in fields {
        let Some(text) = value.as_str() else { continue };
        let secret = match credential_type {
            "postgres" | "smtp" => uri_password(text),
            _ if is_public_field(name) => None,
            _ => Some(text.to_owned()),
        };
        if let Some(secret) = secret
            && check_secret_value(&secret).is_some()
        {
            out.push((format!("data.{name}"), too_short()));
        }
    }
    out
}

/// Names (a header's, a query parameter's, a username) are not secret.
fn is_public_field(name: &str) -> bool {
    matches!(name, "name" | "username" | "client_id" | "provider")
}

/// The password of `scheme://user:password@host/...`, percent-decoded, if it has one.
fn uri_password(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| percent_decode(password))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn shape_errors(validator: &jsonschema::Validator, data: &Value) -> Vec<(String, String)> {
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
        _ => format!("{} client {}", field("provider"), field("client_id")),
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

/// A single sign-on connection's client secret (`sso_connections.client_secret`).
pub fn sso_binding(company_id: Uuid, id: &str) -> Binding<'_> {
    Binding {
        company_id,
        table: "sso_connections",
        column: "client_secret",
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
        .filter(|(k, _)| !is_public_field(k))
        .map(|(_, v)| v.to_string())
        .collect();
    // A connection URI's password also travels alone (in a server's error message, say).
    if matches!(credential_type, "postgres" | "smtp") {
        out.extend(fields.iter().filter_map(|(_, v)| uri_password(v)));
    }
    if credential_type == "http_basic"
        && let (Some(u), Some(p)) = (field("username"), field("password"))
    {
        out.push(base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    }
    out.retain(|s| s.len() >= 4);
    out
}

/// `secret` with the forms it commonly travels in once a node has handled it: percent-encoded (as a query string or
/// form body carries it, under the encoders' different reserved sets and hex cases), base64 (standard and URL-safe,
/// padded or not, and at each of the three offsets it can start at inside a longer encoded text), JSON-escaped and
/// hex. Longest first, so a longer form is masked whole before a shorter one inside it.
pub fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![secret.to_owned()];
    // RFC 3986 unreserved; JavaScript's encodeURIComponent also keeps !'()*; form encoding keeps *-._ only.
    let rfc3986 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let component = |b: u8| rfc3986(b) || matches!(b, b'!' | b'\'' | b'(' | b')' | b'*');
    let form = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
    for keep in [&rfc3986 as &dyn Fn(u8) -> bool, &component, &form] {
        for upper in [true, false] {
            for plus in [false, true] {
                forms.push(percent_encode(secret, keep, upper, plus));
            }
        }
    }
    let bytes = secret.as_bytes();
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(bytes));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            // Only whole 4-character groups made of the secret's bytes alone are the same wherever it sits.
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(bytes);
            let encoded = engine.encode(&shifted);
            let start = if offset == 0 { 0 } else { 4 };
            let end = (shifted.len() / 3) * 4;
            if end > start + 8 {
                forms.push(encoded[start..end].to_owned());
            }
        }
    }
    if let Ok(json) = serde_json::to_string(secret) {
        let inner = &json[1..json.len() - 1];
        forms.push(inner.to_owned());
        forms.push(inner.replace('/', "\\/"));
        // JavaScript and some JSON writers escape every non-ASCII character.
        let ascii: String = inner
            .chars()
            .flat_map(|c| {
                if c.is_ascii() {
                    vec![c.to_string()]
                } else {
                    let mut units = [0u16; 2];
                    c.encode_utf16(&mut units)
                        .iter()
                        .map(|u| format!("\\u{u:04x}"))
                        .collect()
                }
            })
            .collect();
        forms.push(ascii);
    }
    forms.push(hex::encode(bytes));
    forms.push(hex::encode_upper(bytes));
    forms.retain(|f| f.len() >= MIN_MASKED_FORM);
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// Shorter forms are not masked: they would match innocent text.
const MIN_MASKED_FORM: usize = 4;

fn percent_encode(text: &str, keep: &dyn Fn(u8) -> bool, upper: bool, plus: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else if plus && b == b' ' {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_types_schema_marks_exactly_its_secret_fields_write_only() {
        let secret = |t: &str| -> Vec<String> {
            let schema = credential_schema(t).unwrap();
            let mut out: Vec<String> = schema["properties"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, f)| f["writeOnly"] == json!(true))
                .map(|(n, _)| n.clone())
                .collect();
            out.sort();
            out
        };
        assert_eq!(secret("http_bearer"), ["token"]);
        assert_eq!(secret("http_basic"), ["password"]);
        assert_eq!(secret("http_header"), ["value"]);
        assert_eq!(secret("api_key_query"), ["value"]);
        assert_eq!(secret("postgres"), ["uri"]);
        assert_eq!(secret("smtp"), ["uri"]);
        assert_eq!(secret("oauth2"), ["client_secret"]);
        assert!(credential_schema("ftp").is_none());
        // The served schema is the one that validates.
        assert!(check("http_bearer", &json!({"token": "t0ken-long-enough"})).is_empty());
        assert!(!check("http_bearer", &json!({"token": 1})).is_empty());
    }

    #[test]
    fn each_type_checks_its_fields_and_names_them() {
        assert!(check("http_bearer", &json!({"token": "t0k3n-t0k3n"})).is_empty());
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
    fn oauth2_credentials_name_a_provider_and_a_client_but_carry_no_token_or_endpoint() {
        let ok = json!({"provider": "github", "client_id": "Iv1.abc", "client_secret": "s3cr3t-s3cr3t",
                        "scopes": ["repo", "read:user"]});
        assert!(check("oauth2", &ok).is_empty());
        assert_eq!(hint("oauth2", &ok), "github client Iv1.abc");
        assert_eq!(
            check("oauth2", &json!({"provider": "github", "client_id": "x"}))[0].0,
            "data"
        );
        let mut short = ok.clone();
        short["client_secret"] = json!("short");
        assert_eq!(
            check("oauth2", &short),
            vec![("data.client_secret".to_string(), too_short())]
        );
        for extra in ["access_token", "refresh_token", "token_url"] {
            let mut bad = ok.clone();
            bad[extra] = json!("https://evil.example/token");
            assert_eq!(check("oauth2", &bad)[0].0, "data", "{extra}");
        }
        let mut spaced = ok.clone();
        spaced["scopes"] = json!(["a b"]);
        assert!(!check("oauth2", &spaced).is_empty());
        let values = scrub_values(
            "oauth2",
            &[
                ("provider", "github"),
                ("client_id", "Iv1.abc"),
                ("client_secret", "s3cr3t-s3cr3t"),
            ],
        );
        assert_eq!(values, vec!["s3cr3t-s3cr3t".to_string()]);
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
    fn secrets_too_short_to_mask_are_refused_naming_the_field() {
        assert_eq!(
            check("http_bearer", &json!({"token": "abc"})),
            vec![("data.token".to_string(), too_short())]
        );
        assert!(check("http_bearer", &json!({"token": "abcdefgh"})).is_empty());
        let basic = check("http_basic", &json!({"username": "ada", "password": "pw"}));
        assert_eq!(basic, vec![("data.password".to_string(), too_short())]);
        assert_eq!(
            check("postgres", &json!({"uri": "postgres://app:pw@db:5432/app"}))[0].0,
            "data.uri"
        );
        assert!(check("postgres", &json!({"uri": "postgres://app@db:5432/app"})).is_empty());
        assert!(check("postgres", &json!({"uri": "postgres://app:long%2Fpassword@db/app"})).is_empty());
        assert!(check_secret_value("1234567").is_some());
        assert!(check_secret_value("12345678").is_none());
    }

    #[test]
    fn encoded_forms_cover_query_strings_base64_and_json() {
        let forms = encoded_forms("p@ss w/rd+\"é");
        for expected in [
            "p@ss w/rd+\"é",
            "p%40ss%20w%2Frd%2B%22%C3%A9",
            "p%40ss+w%2Frd%2B%22%C3%A9",
            "p%40ss%20w%2frd%2b%22%c3%a9",
            "p@ss w/rd+\\\"é",
            "p@ss w\\/rd+\\\"é",
            "p@ss w/rd+\\\"\\u00e9",
        ] {
            assert!(
                forms.contains(&expected.to_string()),
                "{expected} missing from {forms:?}"
            );
        }
        // Inside a longer base64 text, at any offset.
        use base64::Engine;
        for prefix in ["", "x", "xy"] {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}sk_live_0123456789:tail"));
            assert!(
                encoded_forms("sk_live_0123456789")
                    .iter()
                    .any(|f| encoded.contains(f.as_str())),
                "offset {}",
                prefix.len()
            );
        }
    }

    #[test]
    fn scrub_values_cover_the_encodings_secrets_travel_in() {
        let values = scrub_values("http_basic", &[("username", "ada"), ("password", "hunter22")]);
        assert!(values.contains(&"hunter22".to_string()));
        assert!(values.contains(&"YWRhOmh1bnRlcjIy".to_string()));
        assert!(!values.contains(&"ada".to_string()));
    }
}
