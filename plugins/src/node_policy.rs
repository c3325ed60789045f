//! `node-policy`: node types an operator denies, everywhere or for some
//! companies. A flow that uses one is refused when saved or deployed
//! (`422` naming the node), and a version deployed before the policy fails
//! its run at that node with `node_denied`.
//!
//! `FLOQ_PLUGIN_NODE_POLICY_DENY=code,postgres,<company id>:http_request`:
//! a bare type is denied platform-wide, `company:type` in that company only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use floq_shared::config::ConfigError;
use floq_shared::flow::{FieldError, FlowDefinition, NodeKind};
use floq_shared::plugin::{Before, NodeFailure, NodeInfo, Plugin, PluginFactory, Settings};
use futures_util::future::{BoxFuture, ready};
use serde_json::Value;
use uuid::Uuid;

pub const NAME: &str = "node-policy";
/// The error code of a node the policy stops, in its step and its run.
pub const DENIED: &str = "node_denied";

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn settings(&self) -> &'static [&'static str] {
        &["DENY"]
    }

    fn build(&self, settings: &Settings) -> Result<Arc<dyn Plugin>, ConfigError> {
        Ok(Arc::new(NodePolicy::parse(settings)?))
    }
}

#[derive(Debug, Default)]
pub struct NodePolicy {
    everywhere: HashSet<String>,
    per_company: HashMap<Uuid, HashSet<String>>,
}

fn type_name(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl NodePolicy {
    pub fn parse(settings: &Settings) -> Result<Self, ConfigError> {
        let mut policy = Self::default();
        for entry in settings.list("DENY") {
            let (company, kind) = match entry.split_once(':') {
                None => (None, entry),
                Some((company, kind)) => {
                    let company = Uuid::parse_str(company.trim()).map_err(|_| {
                        settings.error("DENY", format!("`{entry}`: before `:` comes a company id (a UUID)"))
                    })?;
                    (Some(company), kind.trim())
                }
            };
            if !type_name(kind) {
                return Err(settings.error(
                    "DENY",
                    format!("`{entry}`: `{kind}` is not a node type name (a-z, 0-9 and `_`)"),
                ));
            }
            match company {
                None => policy.everywhere.insert(kind.to_string()),
                Some(c) => policy.per_company.entry(c).or_default().insert(kind.to_string()),
            };
        }
        Ok(policy)
    }

    pub fn denies(&self, company_id: Uuid, kind: &str) -> bool {
        self.everywhere.contains(kind) || self.per_company.get(&company_id).is_some_and(|k| k.contains(kind))
    }

    fn reason(kind: &str) -> String {
        format!("node type `{kind}` is denied on this installation (node-policy)")
    }

    /// Every node of `nodes` (and of loop bodies inside them) whose type is denied.
    fn walk(&self, company_id: Uuid, nodes: &Value, at: &str, errors: &mut Vec<FieldError>) {
        let Some(nodes) = nodes.as_array() else {
            return;
        };
        for (i, node) in nodes.iter().enumerate() {
            let kind = node["type"].as_str().unwrap_or_default();
            let here = format!("{at}.nodes[{i}]");
            if self.denies(company_id, kind) {
                errors.push(FieldError::new(
                    format!("{here}.type"),
                    node["id"].as_str(),
                    Self::reason(kind),
                ));
            }
            if kind == NodeKind::LOOP.as_str() {
                self.walk(
                    company_id,
                    &node["params"]["flow"]["nodes"],
                    &format!("{here}.params.flow"),
                    errors,
                );
            }
        }
    }
}

impl Plugin for NodePolicy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_flow(&self, company_id: Uuid, definition: &FlowDefinition) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match serde_json::to_value(definition) {
            Ok(def) => self.walk(company_id, &def["nodes"], "definition", &mut errors),
            // Fail closed: a definition the policy cannot read is not let through.
            Err(_) => errors.push(FieldError::new("definition", None, "the node policy could not read it")),
        }
        errors
    }

    fn before_node_execute<'a>(&'a self, node: &'a NodeInfo, _params: &'a mut Value) -> BoxFuture<'a, Before> {
        let decision = if self.denies(node.company_id, node.kind.as_str()) {
            Before::Fail(NodeFailure::new(DENIED, Self::reason(node.kind.as_str())))
        } else {
            Before::Continue
        };
        Box::pin(ready(decision))
    }
}

/// For tests and binaries that configure the policy in code.
pub fn from_deny(deny: &str) -> Result<NodePolicy, ConfigError> {
    NodePolicy::parse(&Settings::from_pairs(NAME, &[("DENY", deny)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(raw: Value) -> FlowDefinition {
        floq_shared::flow::validate(&raw).unwrap()
    }

    #[test]
    fn denies_everywhere_and_per_company() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let p = from_deny(&format!("code, {a}:postgres")).unwrap();
        assert!(p.denies(a, "code") && p.denies(b, "code"));
        assert!(p.denies(a, "postgres"));
        assert!(!p.denies(b, "postgres"));
        assert!(!p.denies(a, "set"));
    }

    #[test]
    fn bad_entries_name_the_variable() {
        let e = from_deny("nope:code").unwrap_err();
        assert_eq!(e.var, "FLOQ_PLUGIN_NODE_POLICY_DENY");
        assert!(from_deny("Code").is_err());
        assert!(from_deny("").unwrap().everywhere.is_empty());
    }

    #[test]
    fn check_flow_finds_denied_nodes_inside_loop_bodies() {
        let p = from_deny("code").unwrap();
        let flow = def(json!({
            "nodes": [
                {"id": "each", "type": "loop", "params": {"items": [1], "flow": {
                    "nodes": [{"id": "js", "type": "code", "params": {"code": "return 1"}}], "edges": []}}},
            ],
            "edges": []
        }));
        let errors = p.check_flow(Uuid::now_v7(), &flow);
        assert_eq!(errors.len(), 1);
        let e = serde_json::to_value(&errors[0]).unwrap();
        assert_eq!(e["field"], "definition.nodes[0].params.flow.nodes[0].type");
        assert_eq!(e["node"], "js");
    }
}
