//! Text PostgreSQL can store. `text` and `jsonb` refuse U+0000 (NUL), so a
//! single NUL in one tenant's value would otherwise fail every statement it
//! shares. Two rules, one home:
//!
//! * what a client sends is refused at ingress with a `422` naming the field
//!   ([`nul_path`], [`json_text_may_hold_nul`]);
//! * what a flow produces (a response body, a script's result) is stored
//!   with each U+0000 replaced by U+FFFD, in strings and object keys alike
//!   ([`replace_nul`]): a run's output is data floq did not choose, so it is
//!   kept, marked, rather than refused.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// What a NUL becomes in stored outputs: U+FFFD REPLACEMENT CHARACTER, the
/// character Unicode reserves for "a character that could not be represented".
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// Whether any string or object key in `value` holds U+0000. Allocates
/// nothing but its stack; [`nul_path`] names the place once one is known.
pub fn has_nul(value: &Value) -> bool {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                for (key, v) in map {
                    if key.contains('\0') {
                        return true;
                    }
                    pending.push(v);
                }
            }
            _ => {}
        }
    }
    false
}

/// The path (`input.items[2].name`) of the first string or object key in
/// `value` holding U+0000, below `prefix` (empty for the root).
pub fn nul_path(value: &Value, prefix: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(display_path(prefix)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, &format!("{prefix}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(key, v)| {
            let path = join(prefix, key);
            if key.contains('\0') {
                Some(display_path(&path))
            } else {
                nul_path(v, &path)
            }
        }),
        _ => None,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A path is shown to the client: the NUL itself is spelled out.
fn display_path(path: &str) -> String {
    if path.is_empty() {
        "body".to_string()
    } else {
        path.replace('\0', "\\u0000")
    }
}

/// Whether JSON text may decode to a string holding U+0000. JSON can only
/// spell a NUL as the escape `\u0000` (a raw control character in a string is
/// a syntax error), and in valid JSON every backslash starts an escape, so a
/// scan that skips each escape is exact and never decodes anything: the common
/// case costs one pass over the bytes.
pub fn json_text_may_hold_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = json[i..].iter().position(|&b| b == b'\\') {
        let escape = i + at;
        if json.get(escape + 1..escape + 6) == Some(b"u0000".as_slice()) {
            return true;
        }
        // `\\`, `\"`, `\u12ab`: skip the escape's first character at least.
        i = escape + 2;
        if i >= json.len() {
            return false;
        }
    }
    false
}

/// The storage rule for what flows produce: every U+0000 in a string or an
/// object key becomes U+FFFD. Returns whether anything changed.
pub fn replace_nul(value: &mut Value) -> bool {
    let mut changed = false;
    // An explicit stack: a value built by a script is not bound by a parser's depth limit.
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::String(s) => {
                if let Cow::Owned(fixed) = replace_nul_str(s) {
                    *s = fixed;
                    changed = true;
                }
            }
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    // Keys cannot be renamed in place; rebuild this one map (rare).
                    let old = std::mem::take(map);
                    *map = old
                        .into_iter()
                        .map(|(k, v)| (replace_nul_str(&k).into_owned(), v))
                        .collect::<Map<String, Value>>();
                    changed = true;
                }
                pending.extend(map.values_mut());
            }
            _ => {}
        }
    }
    changed
}

/// [`replace_nul`] for one string; borrowed when there is nothing to replace.
pub fn replace_nul_str(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_path_names_the_string_or_key_holding_a_nul() {
        assert_eq!(
            nul_path(&json!({"a": {"b": [1, "x\u{0}"]}}), "input"),
            Some("input.a.b[1]".into())
        );
        assert_eq!(nul_path(&json!({"a\u{0}b": 1}), ""), Some("a\\u0000b".into()));
        assert_eq!(nul_path(&json!("\u{0}"), ""), Some("body".into()));
        assert_eq!(nul_path(&json!({"a": ["fine", {"b": "ok"}]}), ""), None);
    }

    #[test]
    fn the_scan_finds_escaped_nuls_and_only_those() {
        for (text, expected) in [
            (r#"{"a":"\u0000"}"#, true),
            (r#"{"\u0000":1}"#, true),
            (r#"{"a":"x\\\u0000"}"#, true),
            (r#"{"a":"\\u0000"}"#, false),
            (r#"{"a":"\\\\u0000"}"#, false),
            (r#"{"a":"\u00001"}"#, true),
            (r#"{"a":"\u0001"}"#, false),
            (r#"{"a":"\""}"#, false),
            (r#"\"#, false),
            ("", false),
        ] {
            assert_eq!(json_text_may_hold_nul(text.as_bytes()), expected, "{text}");
            if let Ok(value) = serde_json::from_str::<Value>(text) {
                assert_eq!(nul_path(&value, "").is_some(), expected, "{text}");
                assert_eq!(has_nul(&value), expected, "{text}");
            }
        }
    }

    #[test]
    fn nuls_in_strings_and_keys_become_the_replacement_character() {
        let mut v = json!({"body": "a\u{0}b", "k\u{0}": {"deep\u{0}": ["\u{0}"]}, "n": 1});
        assert!(replace_nul(&mut v));
        assert_eq!(
            v,
            json!({"body": "a\u{FFFD}b", "k\u{FFFD}": {"deep\u{FFFD}": ["\u{FFFD}"]}, "n": 1})
        );
        assert!(!replace_nul(&mut v), "nothing left to replace");
        assert_eq!(nul_path(&v, ""), None);
    }
}
