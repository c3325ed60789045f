//! Node kinds: the one name for each type of node, shared by the catalog
//! (schemas, ports), the validator's per-kind rules, the worker's registry
//! of implementations and the reach analysis. A kind is its name (what a
//! definition's `"type"` says); the built-in kinds are the constants below.
//! A kind added later (a plugin's) is made with [`NodeKind::registered`] at
//! start-up and is unknown to a definition until the catalog lists it.

use std::fmt;

use serde::{Serialize, Serializer};

/// A type of node. Copy and comparable, so code dispatches on it with
/// `match` against the constants instead of comparing strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKind(&'static str);

impl NodeKind {
    pub const SET: Self = Self("set");
    pub const IF: Self = Self("if");
    pub const SWITCH: Self = Self("switch");
    pub const MERGE: Self = Self("merge");
    pub const DELAY: Self = Self("delay");
    pub const CODE: Self = Self("code");
    pub const LOOP: Self = Self("loop");
    pub const HTTP_REQUEST: Self = Self("http_request");
    pub const SUB_FLOW: Self = Self("sub_flow");
    pub const POSTGRES: Self = Self("postgres");
    pub const SMTP_SEND: Self = Self("smtp_send");
    pub const KV_GET: Self = Self("kv_get");
    pub const KV_SET: Self = Self("kv_set");
    pub const RESPOND: Self = Self("respond");

    /// Every kind this build implements, in the catalog's order.
    pub const BUILT_IN: [Self; 14] = [
        Self::SET,
        Self::IF,
        Self::SWITCH,
        Self::MERGE,
        Self::DELAY,
        Self::CODE,
        Self::LOOP,
        Self::HTTP_REQUEST,
        Self::SUB_FLOW,
        Self::POSTGRES,
        Self::SMTP_SEND,
        Self::KV_GET,
        Self::KV_SET,
        Self::RESPOND,
    ];

    /// A kind registered at start-up (by a plugin); its name lives as long as the process.
    pub const fn registered(name: &'static str) -> Self {
        Self(name)
    }

    /// The name a definition's `"type"` gives.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKind({})", self.0)
    }
}

impl Serialize for NodeKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl PartialEq<str> for NodeKind {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeKind {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<NodeKind> for &str {
    fn eq(&self, other: &NodeKind) -> bool {
        *self == other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_kinds_are_distinct_and_serialize_as_their_name() {
        let mut names: Vec<&str> = NodeKind::BUILT_IN.iter().map(|k| k.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), NodeKind::BUILT_IN.len());
        assert_eq!(serde_json::to_value(NodeKind::SUB_FLOW).unwrap(), "sub_flow");
        assert_eq!(NodeKind::LOOP, "loop");
        assert_eq!("loop", NodeKind::LOOP);
        assert_eq!(NodeKind::registered("set"), NodeKind::SET, "a kind is its name");
    }
}
