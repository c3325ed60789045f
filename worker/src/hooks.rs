//! The plugins' node hooks, in `FLOQ_PLUGINS` order (docs/plugins.md):
//! `before_node_execute` until one skips or fails the node, then every
//! `after_node_execute` on what it produced.

use floq_shared::plugin::{Before, NodeFailure, NodeInfo, Plugins};
use serde_json::Value;

use crate::nodes::{NodeError, NodeOutput, NodeResult};

pub async fn before(plugins: &Plugins, node: &NodeInfo, params: &mut Value) -> Before {
    for plugin in plugins.iter() {
        match plugin.before_node_execute(node, params).await {
            Before::Continue => {}
            decided => {
                tracing::info!(
                    plugin = plugin.name(),
                    run.id = %node.run_id,
                    node.id = node.node_id,
                    node.kind = node.kind.as_str(),
                    "a plugin stopped a node before it ran"
                );
                return decided;
            }
        }
    }
    Before::Continue
}

/// The port a branch node took stays as it was: a hook changes the output, not the route.
pub async fn after(plugins: &Plugins, node: &NodeInfo, result: NodeResult) -> NodeResult {
    let (mut outcome, port) = match result {
        Ok(NodeOutput { value, port }) => (Ok(value), port),
        Err(e) => (Err(NodeFailure::new(e.code, e.message)), None),
    };
    for plugin in plugins.iter() {
        plugin.after_node_execute(node, &mut outcome).await;
    }
    match outcome {
        Ok(value) => Ok(NodeOutput { value, port }),
        Err(f) => Err(NodeError::new(f.code, f.message)),
    }
}
