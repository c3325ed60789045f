//! The KV store's vocabulary: what a key may be. The API's routes, the
//! `kv_get`/`kv_set` nodes and the node catalog's schema all take the rule
//! from here.

use std::fmt;

/// A KV key: 1-128 ASCII letters, digits, `_`, `.` or `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvKey(String);

impl KvKey {
    pub const MAX_LEN: usize = 128;
    /// The same rule as a JSON Schema pattern (the node catalog's `key` params).
    pub const PATTERN: &'static str = "^[A-Za-z0-9_.-]{1,128}$";
    /// What a refused key is told.
    pub const RULE: &'static str = "keys are 1-128 letters, digits, '_', '.' or '-'";

    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        ok.then(|| Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_and_its_pattern_agree() {
        let pattern = regex::Regex::new(KvKey::PATTERN).unwrap();
        let long = "k".repeat(129);
        for raw in [
            "a",
            "partner.header-1_x",
            "",
            "with space",
            "ümlaut",
            "a/b",
            &long,
            &long[..128],
        ] {
            assert_eq!(KvKey::parse(raw).is_some(), pattern.is_match(raw), "{raw:?}");
        }
    }
}
