//! Masks secrets and personal data in audit entry details before they are
//! written. Entries are permanent and widely readable, so this errs towards
//! masking: a needlessly masked value costs a little context, a leaked one
//! cannot be taken back.
//!
//! Values under a sensitive key are replaced whole. Every other string is
//! scanned for secrets that travel inside free text (URLs, headers, embedded
//! JSON, tokens, card numbers, e-mail addresses).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::Value;

/// Replacement written in place of a masked value.
pub const MASK: &str = "[masked]";

/// `MASK` as a JSON string literal, for secrets inside JSON embedded in text.
const QUOTED_MASK: &str = "\"[masked]\"";

/// Masks, in place, everything secret or personal in a JSON value.
pub fn sanitize(value: &mut Value) {
    // An explicit stack rather than recursion: a value built in code is not
    // bound by serde_json's parse depth limit.
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::String(s) => {
                if let Cow::Owned(masked) = mask_text(s) {
                    *s = masked;
                }
            }
            Value::Number(n) if is_card_value(n) => {
                *value = MASK.into();
            }
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                for (key, v) in map {
                    if !is_sensitive_key(key) {
                        pending.push(v);
                    } else if hides_something(v) {
                        *v = MASK.into();
                    }
                }
            }
            _ => {}
        }
    }
}

/// A number long enough and Luhn-valid enough to be a card number.
fn is_card_value(n: &serde_json::Number) -> bool {
    n.as_u64()
        .is_some_and(|n| n >= 10u64.pow(12) && is_card_number(&n.to_string()))
}

/// Whether a sensitive key's value still shows something (not null, not yet masked).
fn hides_something(v: &Value) -> bool {
    !v.is_null() && v != MASK
}

/// `value` masked: borrowed as it is when nothing in it needs masking (the
/// common case), so writing an entry copies nothing.
pub fn sanitized(value: &Value) -> Cow<'_, Value> {
    if needs_masking(value) {
        let mut owned = value.clone();
        sanitize(&mut owned);
        Cow::Owned(owned)
    } else {
        Cow::Borrowed(value)
    }
}

/// Whether `sanitize` would change anything; mirrors it without copying.
fn needs_masking(value: &Value) -> bool {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::String(s) => {
                if matches!(mask_text(s), Cow::Owned(_)) {
                    return true;
                }
            }
            Value::Number(n) if is_card_value(n) => {
                return true;
            }
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                for (key, v) in map {
                    if !is_sensitive_key(key) {
                        pending.push(v);
                    } else if hides_something(v) {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// Normalized names (lowercase ASCII letters and digits only) that make a key
/// sensitive wherever they appear in it.
const SENSITIVE_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "authorization",
    "cookie",
    "connectionstring",
    "connstring",
    "credential",
    "signature",
    "sessionid",
];

/// Normalized names too generic to match as parts ("pinned", "author").
const SENSITIVE_NAMES: &[&str] = &["pin", "auth", "session"];

/// Abbreviations matched only at the start or end of a word of the original
/// name: as bare substrings of a normalized name they hit words they merely
/// straddle ("class_name" holds "ssn", "ads_network" holds "dsn").
const SENSITIVE_ABBREVIATIONS: &[&str] = &["otp", "ssn", "dsn", "cvv", "cvc"];

/// Whether an object key names something secret (its whole value is masked).
pub fn is_sensitive_key(name: &str) -> bool {
    let normalized: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    // "…keys" is left out on purpose: such a key holds key *names* (e.g. the
    // top-level keys of a payload), which audit readers need to see.
    normalized.ends_with("key")
        || SENSITIVE_NAMES.contains(&normalized.as_str())
        || SENSITIVE_PARTS.iter().any(|part| normalized.contains(part))
        || words(name).any(|word| {
            SENSITIVE_ABBREVIATIONS.iter().any(|abbr| {
                let (head, tail) = (
                    word.get(..abbr.len()),
                    word.get(word.len().saturating_sub(abbr.len())..),
                );
                [head, tail]
                    .into_iter()
                    .flatten()
                    .any(|end| end.eq_ignore_ascii_case(abbr))
            })
        })
}

/// The words of a key: split at anything but ASCII letters and digits and at
/// camelCase humps ("customerSSN" → "customer", "SSN").
fn words(name: &str) -> impl Iterator<Item = &str> {
    name.split(|c: char| !c.is_ascii_alphanumeric()).flat_map(|segment| {
        let bytes = segment.as_bytes();
        let mut start = 0;
        (1..=bytes.len()).filter_map(move |i| {
            let hump = bytes.get(i).is_some_and(u8::is_ascii_uppercase) && !bytes[i - 1].is_ascii_uppercase();
            (i == bytes.len() || hump).then(|| {
                let word = &segment[start..i];
                start = i;
                word
            })
        })
    })
}

macro_rules! regex {
    ($name:ident, $pattern:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($pattern).expect("pattern is valid"));
    };
}

// `scheme://user:password@host`; the user may be empty (`redis://:pw@host`)
// and a sloppy password may hold an unescaped '@'.
regex!(URL_PASSWORD, r"(?i)\b[a-z][a-z0-9+.-]*://[^\s:/?#@]*:([^\s/?#]+)@");
// `Name: value` lines: raw HTTP headers, YAML, config dumps.
regex!(
    HEADER_LINE,
    r"(?m)^[ \t]*([A-Za-z][A-Za-z0-9_.-]*)[ \t]*:[ \t]*(\S[^\r\n]*)"
);
// `"name": value` in JSON that reached us as text (a logged request body).
regex!(
    JSON_MEMBER,
    r#""([^"\\]{1,100})"\s*:\s*("(?:[^"\\]|\\.)*"|[^\s,}\]"]+)"#
);
// `name=value` in query strings, cookies and libpq connection strings.
regex!(
    ASSIGNMENT,
    r#"(?:^|[\s?&;,])([A-Za-z_][A-Za-z0-9_.-]*)=([^\s&;,#?"']+)"#
);
// A token never ends in '.', so a sentence-final period stays outside it.
regex!(
    AUTH_SCHEME,
    r"(?i)\b(bearer|basic)\s+([A-Za-z0-9._~+/-]*[A-Za-z0-9_~+/-]=*)"
);
regex!(JWT, r"\beyJ[A-Za-z0-9_-]{7,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*");
regex!(
    PREFIXED_TOKEN,
    r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|whsec_[A-Za-z0-9+/=]{16,}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9-]{8,}|(?:AKIA|ASIA)[A-Z0-9]{16}\b)"
);
// Runs of digit groups; which groups form a card is decided by `mask_cards`.
regex!(DIGIT_GROUPS, r"\b[0-9]{3,}(?:[ -][0-9]{3,})*\b");
regex!(
    EMAIL,
    r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})"
);

/// Words that follow "bearer" in prose ("missing bearer token") rather than
/// a credential.
const BEARER_PROSE: &[&str] = &[
    "token",
    "tokens",
    "auth",
    "authentication",
    "authorization",
    "scheme",
    "realm",
    "header",
    "credentials",
    "type",
    "prefix",
    "of",
    "is",
    "and",
    "or",
    "not",
    "required",
    "missing",
    "expected",
    "format",
    "value",
];

/// Masks secret-looking and personal substrings inside free text.
pub fn mask_text(text: &str) -> Cow<'_, str> {
    // Most audited strings are ids, names and statuses: skip the nine scans for them.
    if !may_hold_secret(text) || uuid::Uuid::try_parse(text).is_ok() {
        return Cow::Borrowed(text);
    }
    let text = replace(Cow::Borrowed(text), &URL_PASSWORD, |_, c| splice(c, 1, MASK));
    // Header lines first, so `Authorization: Token x` goes whole, scheme and all.
    let text = replace(text, &HEADER_LINE, |_, c| mask_named(c, MASK));
    let text = replace(text, &JSON_MEMBER, |_, c| mask_named(c, QUOTED_MASK));
    let text = replace(text, &ASSIGNMENT, |_, c| mask_named(c, MASK));
    let text = replace(text, &AUTH_SCHEME, |_, c| {
        let (scheme, token) = (c.get(1)?.as_str(), c.get(2)?.as_str());
        let credential = if scheme.eq_ignore_ascii_case("basic") {
            // "Basic" is ordinary English; real credentials are base64 of "user:password".
            base64_has_colon(token)
        } else {
            let word = token.trim_end_matches('=');
            !BEARER_PROSE.iter().any(|prose| prose.eq_ignore_ascii_case(word))
        };
        credential.then(|| splice(c, 2, MASK)).flatten()
    });
    let text = replace(text, &JWT, |_, c| splice(c, 0, MASK));
    let text = replace(text, &PREFIXED_TOKEN, |_, c| splice(c, 0, MASK));
    let text = replace(text, &DIGIT_GROUPS, |text, c| {
        let run = c.get(0)?;
        (!decimal_neighbour(text, run.start(), run.end()))
            .then(|| mask_cards(run.as_str()))
            .flatten()
    });
    replace(text, &EMAIL, |_, c| {
        Some(format!("{}***@{}", c.get(1)?.as_str(), c.get(2)?.as_str()))
    })
}

/// Whether any pattern of `mask_text` could match: each needs at least one of
/// these features (a separator `:` `=` `@` `"`, whitespace after a scheme
/// word, a JWT's `eyJ`, a token prefix's `_`, `xox`, `AKIA`/`ASIA`, or a run of
/// three digits). Text with none of them comes back untouched, scan-free.
fn may_hold_secret(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut digits = 0;
    for &b in bytes {
        match b {
            b':' | b'=' | b'@' | b'"' | b'_' => return true,
            b'0'..=b'9' => {
                digits += 1;
                if digits == 3 {
                    return true;
                }
                continue;
            }
            _ => {}
        }
        digits = 0;
    }
    // `\s` is Unicode whitespace, which includes non-ASCII spaces.
    text.chars().any(char::is_whitespace) || ["eyJ", "xox", "AKIA", "ASIA"].iter().any(|p| text.contains(p))
}

/// Replaces the matches for which `f` returns a replacement. Allocates only
/// when something changes, so plain text comes back borrowed.
fn replace<'a>(text: Cow<'a, str>, re: &Regex, mut f: impl FnMut(&str, &Captures) -> Option<String>) -> Cow<'a, str> {
    let mut out: Option<String> = None;
    let mut last = 0;
    for c in re.captures_iter(&text) {
        let Some(m) = c.get(0) else { continue };
        if let Some(replacement) = f(&text, &c) {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[last..m.start()]);
            out.push_str(&replacement);
            last = m.end();
        }
    }
    match out {
        Some(mut out) => {
            out.push_str(&text[last..]);
            Cow::Owned(out)
        }
        None => text,
    }
}

/// The whole match with capture `group` swapped for `with`; `None` when it
/// already is `with`, which keeps masking idempotent and the fast path borrowed.
fn splice(c: &Captures, group: usize, with: &str) -> Option<String> {
    let (whole, part) = (c.get(0)?, c.get(group)?);
    if part.as_str() == with {
        return None;
    }
    let text = whole.as_str();
    let (start, end) = (part.start() - whole.start(), part.end() - whole.start());
    Some([&text[..start], with, &text[end..]].concat())
}

/// Masks capture 2 when capture 1 names a sensitive key and there is
/// something to hide.
fn mask_named(c: &Captures, with: &str) -> Option<String> {
    let (name, value) = (c.get(1)?.as_str(), c.get(2)?.as_str());
    let empty = matches!(value, "" | "\"\"" | "null");
    (is_sensitive_key(name) && !empty).then(|| splice(c, 2, with)).flatten()
}

/// Whether base64 (standard or URL-safe) `token` decodes to bytes holding ':'.
fn base64_has_colon(token: &str) -> bool {
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in token.trim_end_matches('=').bytes() {
        let sextet = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return false,
        };
        acc = (acc << 6 | u32::from(sextet)) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if (acc >> bits) & 0xFF == u32::from(b':') {
                return true;
            }
        }
    }
    false
}

/// Whether the digits at `start..end` are part of a decimal number or a
/// dotted version ("0.30000000000000004"), which are never card numbers.
fn decimal_neighbour(text: &str, start: usize, end: usize) -> bool {
    fn dotted(mut chars: impl Iterator<Item = char>) -> bool {
        chars.next() == Some('.') && chars.next().is_some_and(|c| c.is_ascii_digit())
    }
    dotted(text[..start].chars().rev()) || dotted(text[end..].chars())
}

/// Masks each run of consecutive digit groups that forms a card number. Groups
/// are tried as windows so that a card next to other numbers ("4111 1111 1111
/// 1111 123" with its CVV, or a year before it) is still found, while a long
/// ungrouped id never is.
fn mask_cards(run: &str) -> Option<String> {
    let mut groups = Vec::new();
    let mut start = 0;
    for (i, c) in run.char_indices() {
        if c == ' ' || c == '-' {
            groups.push((start, i));
            start = i + 1;
        }
    }
    groups.push((start, run.len()));

    let mut out: Option<String> = None;
    let (mut last, mut i) = (0, 0);
    while let Some(&(first, _)) = groups.get(i) {
        let mut digits = 0;
        let card_end = groups[i..]
            .iter()
            .take_while(|&&(s, e)| {
                digits += e - s;
                digits <= 19
            })
            .position(|&(_, e)| is_card_number(&run[first..e]));
        match card_end {
            Some(offset) => {
                let out = out.get_or_insert_with(String::new);
                out.push_str(&run[last..first]);
                out.push_str(MASK);
                last = groups[i + offset].1;
                i += offset + 1;
            }
            None => i += 1,
        }
    }
    out.map(|out| out + &run[last..])
}

/// 13 to 19 digits (separators ignored) that pass the Luhn check. A leading
/// zero is no card (no issuer range starts with 0) but is how zero-padded
/// ids look, and all zeros would pass.
fn is_card_number(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.first() == Some(&0) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, doubled) if doubled > 9 => doubled - 9,
            (_, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const JWT_TOKEN: &str =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    // Split so that secret scanners do not flag this file.
    const STRIPE_KEY: &str = concat!("sk_live_", "51HxFAKEfakeFAKEfake0000");
    const GITHUB_TOKEN: &str = concat!("ghp_", "FAKEfakeFAKEfakeFAKEfakeFAKEfake0000");
    const SLACK_TOKEN: &str = concat!("xoxb-", "0000000000-FAKEfakeFAKE");
    const AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";

    /// Sanitizes `value` and asserts that no `secret` survives anywhere in its
    /// serialization, every `kept` fragment does, and a second pass changes
    /// nothing.
    #[track_caller]
    fn check(mut value: Value, secrets: &[&str], kept: &[&str]) {
        let input = value.to_string();
        sanitize(&mut value);
        let out = serde_json::to_string(&value).unwrap();
        for secret in secrets {
            assert!(
                !out.contains(secret),
                "{secret:?} survived\n  in:  {input}\n  out: {out}"
            );
        }
        for fragment in kept {
            assert!(
                out.contains(fragment),
                "{fragment:?} was lost\n  in:  {input}\n  out: {out}"
            );
        }
        let once = value.clone();
        sanitize(&mut value);
        assert_eq!(value, once, "a second pass changed the value");
    }

    #[test]
    fn sensitive_keys_at_any_depth() {
        check(
            json!({"password": "hunter2"}),
            &["hunter2"],
            &[r#""password":"[masked]""#],
        );
        check(
            json!({"a": {"b": [{"c": {"user_password": "s3cr3t-pw", "user": "bob"}}]}}),
            &["s3cr3t-pw"],
            &[r#""user":"bob""#],
        );
        check(
            json!({"request": {"headers": {"Authorization": "Bearer abc.def.ghi", "Content-Type": "application/json"}}}),
            &["abc.def.ghi"],
            &[r#""Authorization":"[masked]""#, r#""Content-Type":"application/json""#],
        );
        check(
            json!({"response": {"headers": {"Cookie": "session=xyz789; theme=dark", "Set-Cookie": ["sid=abc1"]}}}),
            &["xyz789", "abc1"],
            &[r#""Set-Cookie":"[masked]""#],
        );
        check(
            json!({"credential": {"data": {"username": "svc-bot", "api_key": "k-123"}}, "credential_type": "basic"}),
            &["svc-bot", "k-123", "username"],
            &[r#""credential":"[masked]""#],
        );
        check(
            json!({"step": {"config": {"credential_data": {"user": "u1", "password": "p1"}, "retries": 3}}}),
            &["u1", "p1"],
            &[r#""retries":3"#],
        );
        check(
            json!({"db": {"connection_string": "postgres://u:p@h/db", "pool": 5}}),
            &["postgres://"],
            &[r#""pool":5"#],
        );
        check(
            json!({"items": [
                {"name": "a", "token": "tok-1"},
                {"name": "b", "access_token": "tok-2", "nested": [[{"client_secret": "cs-3"}]]},
                {"name": "c", "refresh_token": null}
            ]}),
            &["tok-1", "tok-2", "cs-3"],
            &[r#""name":"a""#, r#""name":"c""#, r#""refresh_token":null"#],
        );
        check(
            json!({"pin": 1234, "otp_codes": [111111, 222222], "ssn": "123-45-6789", "mfa": {"totp": "654321"}}),
            &["1234", "111111", "222222", "123-45-6789", "654321"],
            &[r#""mfa":{"totp":"[masked]"}"#],
        );
        check(
            json!({"keyId": "k1", "key": "rawkeyvalue", "signingKey": "signingvalue", "x-api-key": "xapivalue"}),
            &["rawkeyvalue", "signingvalue", "xapivalue"],
            &[r#""keyId":"k1""#],
        );
        check(
            json!({"sentry_dsn": "https://abc@o1.ingest.sentry.io/1", "class_name": "Foo", "business_name": "Acme"}),
            &["ingest.sentry.io"],
            &[r#""class_name":"Foo""#, r#""business_name":"Acme""#],
        );
        // Only null is spared: an empty secret still tells something.
        check(
            json!({"password": null, "secret": "", "auth": {"enabled": true}}),
            &[r#""secret":"""#, "enabled"],
            &[r#""password":null"#, r#""auth":"[masked]""#],
        );
    }

    #[test]
    fn secrets_in_free_text() {
        check(
            json!({"message": format!("login ok, token {JWT_TOKEN} issued")}),
            &["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "dozjgNryP4J3jVmNHl0w5N"],
            &["login ok, token [masked] issued"],
        );
        check(
            json!({"errors": [{"detail": "upstream 401 for header Bearer 9f8e7d6c5b4a3210, retrying"}]}),
            &["9f8e7d6c5b4a3210"],
            &["upstream 401 for header Bearer [masked], retrying"],
        );
        check(
            json!({"db": {"url": "postgres://app:Sup3rS3cret@db.internal:5432/floq"}}),
            &["Sup3rS3cret"],
            &["postgres://app:[masked]@db.internal:5432/floq"],
        );
        check(
            json!({"webhook": {"callback": "https://user:pa55word@hooks.example.com/in?token=t0k3n&x=1"}}),
            &["pa55word", "t0k3n"],
            &["https://user:[masked]@hooks.example.com/in?token=[masked]&x=1"],
        );
        check(
            json!({"calls": ["GET /v1/things?api_key=abc&x=1", "redis://:s3cret@cache:6379/0"]}),
            &["abc&", "s3cret"],
            &["GET /v1/things?api_key=[masked]&x=1", "redis://:[masked]@cache:6379/0"],
        );
        check(
            json!({"log": format!("using {AWS_KEY_ID} for s3"), "notes": [STRIPE_KEY, format!("gh: {GITHUB_TOKEN}"), SLACK_TOKEN]}),
            &[AWS_KEY_ID, STRIPE_KEY, GITHUB_TOKEN, SLACK_TOKEN, "FAKE"],
            &["using [masked] for s3", "gh: [masked]"],
        );
        check(
            json!({"request_body": r#"{"username":"bob","password":"hunter2","otp": 123456, "mfa": null}"#}),
            &["hunter2", "123456"],
            &[r#"\"username\":\"bob\""#, r#"\"mfa\": null"#],
        );
        check(
            json!({"error": "request failed:\nHost: api.example.com\nAuthorization: Token abcdef123\n  X-Api-Key: zzz999"}),
            &["abcdef123", "zzz999"],
            &["Host: api.example.com", "Authorization: [masked]"],
        );
        check(
            json!({"target": "host=db user=app password=hunter2 dbname=floq sslmode=require"}),
            &["hunter2"],
            &["host=db user=app password=[masked] dbname=floq sslmode=require"],
        );
        check(
            json!({"sent": "Authorization Basic dXNlcjpwYXNzd29yZA== (retry 2)"}),
            &["dXNlcjpwYXNzd29yZA"],
            &["Authorization Basic [masked] (retry 2)"],
        );
    }

    #[test]
    fn card_numbers_and_emails() {
        check(
            json!({"payment": {"card": "4111 1111 1111 1111", "backup": "5555-5555-5555-4444", "amex": "378282246310005"}}),
            &["4111", "5555", "3782"],
            &[r#""card":"[masked]""#],
        );
        check(
            json!({"payment": {"number": 4242424242424242u64, "amount": 42}}),
            &["4242"],
            &[r#""amount":42"#],
        );
        check(
            json!({"note": "paid with 4111111111111111. card 4111 1111 1111 1111 12/27 cvv 123; 2024 5555 5555 5555 4444"}),
            &["4111", "5555"],
            &["paid with [masked]. card [masked] 12/27 cvv 123; 2024 [masked]"],
        );
        check(
            json!({"message": "invite sent to alice.smith@example.com and Bob@corp.example.org", "to": ["c@x.io"]}),
            &["alice.smith", "Bob@", "\"c@x.io\""],
            &["invite sent to a***@example.com and B***@corp.example.org", "c***@x.io"],
        );
    }

    #[test]
    fn lookalikes_survive() {
        let ts_ms = 1_718_000_000_000u64;
        assert!(!is_card_number(&ts_ms.to_string()) && !is_card_number("1234567890123"));
        check(
            json!({
                "top_level_keys": ["password", "token"],
                "input_keys": ["api_key", "secret"],
                "shape": {"bytes": 120, "type": "object", "keys": ["credential", "cookie"]},
            }),
            &["[masked]"],
            &[
                r#"["password","token"]"#,
                r#"["api_key","secret"]"#,
                r#"["credential","cookie"]"#,
                r#""bytes":120"#,
            ],
        );
        let kept = json!({
            "id": "1234567890123",
            "run_id": "0190f3a4-5b6c-7d8e-9f01-234567890abc",
            "digits_uuid": "12345678-1234-1234-1234-123456789012",
            "at": "2024-05-01T12:30:45.123456Z",
            "ts_ms": ts_ms,
            "count": 42,
            "ratio": 0.4111111111111111,
            "ratio_text": "0.4111111111111111",
            "long_id": "41111111111111114111",
            "keyboard": "qwerty",
            "author": "Ann",
            "options": ["a", "b"],
            "pinned": true,
            "message": "missing bearer token. Basic validation failed; use basic auth",
            "ip": "10.0.0.1:8080",
            "url": "https://example.com:8443/a?b=c&page=2",
            "mention": "email me @ the office",
        });
        let fragments: Vec<String> = kept
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
            .collect();
        let fragments: Vec<&str> = fragments.iter().map(String::as_str).collect();
        check(kept, &["[masked]", "***"], &fragments);
    }

    #[test]
    fn accepted_false_positives() {
        // Masking a harmless value costs less than leaking a real one.
        let mut value = json!({"monkey": "banana", "tokens_used": 812, "sort_key": "name"});
        sanitize(&mut value);
        assert_eq!(value, json!({"monkey": MASK, "tokens_used": MASK, "sort_key": MASK}));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut value = json!({"password": "deep-secret"});
        for _ in 0..100 {
            value = json!([{"level": value}]);
        }
        check(value, &["deep-secret"], &[r#""password":"[masked]""#]);
    }

    #[test]
    fn key_names() {
        for name in [
            "password",
            "Password",
            "user_password",
            "passwd",
            "passphrase",
            "client_secret",
            "secretName",
            "token",
            "access_token",
            "refreshToken",
            "api_key",
            "apiKey",
            "x-api-key",
            "API-KEY",
            "key",
            "signingKey",
            "private_key",
            "privateKeys",
            "aws_access_key_id",
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "set-cookie",
            "connection_string",
            "connString",
            "dsn",
            "sentry_dsn",
            "sentryDsnUrl",
            "credential",
            "credentials",
            "credential_data",
            "signature",
            "x-hub-signature-256",
            "otp",
            "otp_code",
            "OTPCode",
            "totp",
            "pin",
            "PIN",
            "cvv",
            "card_cvv2",
            "cvc",
            "ssn",
            "customerSSN",
            "SSNLast4",
            "auth",
            "session",
            "sessionId",
            "session_id",
            "monkey",
        ] {
            assert!(is_sensitive_key(name), "{name} should be sensitive");
        }
        for name in [
            "",
            "keys",
            "top_level_keys",
            "input_keys",
            "keyId",
            "key_id",
            "keyboard",
            "author",
            "authored_by",
            "sessions",
            "session_count",
            "pinned",
            "spin",
            "options",
            "footprint",
            "hotpath",
            "class_name",
            "businessName",
            "ads_network",
            "kids_name",
            "name",
            "id",
            "email",
            "user",
            "username",
            "description",
            "message",
            "headers",
            "url",
            "host",
        ] {
            assert!(!is_sensitive_key(name), "{name} should not be sensitive");
        }
    }

    #[test]
    fn text_masks() {
        for (input, expected) in [
            ("Bearer abc123", "Bearer [masked]"),
            ("authorization: bearer abc123", "authorization: [masked]"),
            ("header BEARER x.y.z.", "header BEARER [masked]."),
            ("Basic dXNlcjpwYXNz", "Basic [masked]"),
            (JWT_TOKEN, MASK),
            ("?api_key=abc&x=1", "?api_key=[masked]&x=1"),
            ("a=1&token=2&b=3", "a=1&token=[masked]&b=3"),
            ("next=https://x.test/?token=t1", "next=https://x.test/?token=[masked]"),
            ("mysql://root:p@ss@db/x", "mysql://root:[masked]@db/x"),
            ("alice.smith@example.com", "a***@example.com"),
            ("x@y.dev", "x***@y.dev"),
            ("4111-1111-1111-1111", MASK),
            ("card 378282246310005!", "card [masked]!"),
            ("session=abc; theme=dark", "session=[masked]; theme=dark"),
            (r#"{"secret": "a\"b", "n": 1}"#, r#"{"secret": "[masked]", "n": 1}"#),
            ("ASIAIOSFODNN7EXAMPLE", MASK),
            ("AKIAIOSFODNN7EXAMPLEX", "AKIAIOSFODNN7EXAMPLEX"),
        ] {
            assert_eq!(mask_text(input), expected, "for {input:?}");
        }
    }

    #[test]
    fn unchanged_text_is_borrowed() {
        for text in [
            "",
            "run finished in 1718000000000 ms",
            "flow 0190f3a4-5b6c-7d8e-9f01-234567890abc saved",
            "missing bearer token",
            "basic plan",
            "x=1&y=2",
            "[masked]",
            "Bearer [masked]",
            "postgres://u:[masked]@h/db",
            "a***@example.com",
            "password=",
            "über naïve ☃ text",
        ] {
            assert!(matches!(mask_text(text), Cow::Borrowed(_)), "{text:?} was copied");
        }
    }

    #[test]
    fn sanitized_copies_only_what_it_masks_and_agrees_with_sanitize() {
        let clean = json!({"node": "shape", "type": "set", "input": {"bytes": 42, "keys": ["user", "n"]}});
        assert!(matches!(sanitized(&clean), Cow::Borrowed(_)));
        let masked_already = json!({"password": MASK, "note": "Bearer [masked]"});
        assert!(matches!(sanitized(&masked_already), Cow::Borrowed(_)));
        for dirty in [
            json!({"headers": {"Authorization": "Bearer abc.def.ghi"}}),
            json!({"list": ["ok", "mail ada@example.com"]}),
            json!({"card": 4111111111111111u64}),
            json!([{"nested": {"api_key": 7}}]),
        ] {
            let mut expected = dirty.clone();
            sanitize(&mut expected);
            match sanitized(&dirty) {
                Cow::Owned(v) => assert_eq!(v, expected),
                Cow::Borrowed(_) => panic!("{dirty} was not masked"),
            }
        }
    }

    /// The prefilter must never skip text that a pattern would match: random
    /// strings over an alphabet rich in the patterns' own characters.
    #[test]
    fn the_prefilter_never_hides_a_match() {
        let patterns: [&Regex; 9] = [
            &URL_PASSWORD,
            &HEADER_LINE,
            &JSON_MEMBER,
            &ASSIGNMENT,
            &AUTH_SCHEME,
            &JWT,
            &PREFIXED_TOKEN,
            &DIGIT_GROUPS,
            &EMAIL,
        ];
        let alphabet: Vec<char> = "abeyJxoAKISkrwhsgt0123456789:=@\"_- ./\u{a0}\n".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut skipped = 0;
        for _ in 0..200_000 {
            let len = next() % 24;
            let text: String = (0..len).map(|_| alphabet[next() % alphabet.len()]).collect();
            if !may_hold_secret(&text) {
                skipped += 1;
                for re in patterns {
                    assert!(!re.is_match(&text), "{re} matches {text:?} but the prefilter skips it");
                }
            }
        }
        assert!(skipped > 1_000, "the test exercised the fast path only {skipped} times");
    }

    #[test]
    fn odd_input_does_not_panic() {
        let long_digits = "9".repeat(10_000);
        let mixed = "4111 ".repeat(2_000);
        for text in [
            "@",
            "@@.",
            "a@",
            "://",
            "x://:@",
            "x://a:@",
            "Bearer",
            "Basic ====",
            "eyJ",
            "eyJ..",
            "é4111111111111111é",
            "4111111111111111\u{0}",
            "٤١١١١١١١١١١١١١١١",
            "\"\":\"\"",
            "=",
            "&=&",
            ":\n:\r\n",
            "\u{feff}password: x",
            &long_digits,
            &mixed,
        ] {
            let _ = mask_text(text);
            let mut value = json!({ text: text, "list": [text] });
            sanitize(&mut value);
        }
        for n in [
            json!(0),
            json!(-4111111111111111i64),
            json!(4.111111111111111e15),
            json!(u64::MAX),
        ] {
            let mut value = n.clone();
            sanitize(&mut value);
        }
    }
}
