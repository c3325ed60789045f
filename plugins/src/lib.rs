//! The plugins floq's own binaries offer (docs/plugins.md); `FLOQ_PLUGINS`
//! enables them. A binary of its own adds its plugins beside these:
//! `floq_plugins::bundled().with(MyPlugin)`.

pub mod ip_allow;
pub mod node_policy;
pub mod sign;

use floq_shared::plugin::Available;

/// Every plugin shipped with floq.
pub fn bundled() -> Available {
    Available::none()
        .with(node_policy::Factory)
        .with(ip_allow::Factory)
        .with(sign::Factory)
}
