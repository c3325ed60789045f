//! Plugins: Rust code compiled into a floq binary that extends it without a
//! fork (docs/plugins.md). A plugin implements [`Plugin`]; a
//! [`PluginFactory`] builds it from its `FLOQ_PLUGIN_<NAME>_*` settings.
//! Each service's `run_with_plugins` takes the factories a binary offers
//! ([`Available`]); `FLOQ_PLUGINS` picks which are enabled, in order
//! ([`Plugins::load`]). Plugins run in the process with its full access:
//! they are trusted code, chosen by the operator, never by a tenant.

pub mod settings;

use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::{BoxFuture, ready};
use serde_json::Value;
use uuid::Uuid;

use crate::access::Role;
use crate::config::{Config, ConfigError};
use crate::flow::catalog::{self, Table};
use crate::flow::{FieldError, FlowDefinition, NodeKind, NodeSpec};

pub use settings::{PluginSettings, Settings};

/// A hook that could not decide: for `on_authorize` it counts as a deny.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

/// What `on_request` decided.
pub enum OnRequest {
    /// Go on (with whatever the hook changed in the request).
    Continue,
    /// Answer now with this response; authentication, the handler and later plugins are skipped.
    /// The security headers and the request id are still added.
    Answer(axum::response::Response),
    /// Refuse with floq's error body: `{"error": {code, message, request_id}}` under `status`.
    Refuse {
        status: axum::http::StatusCode,
        code: &'static str,
        message: String,
    },
}

/// What the API knows of a request before routing.
pub struct RequestInfo<'a> {
    pub request_id: &'a str,
    /// The client's address (`X-Forwarded-For` only from `FLOQ_TRUSTED_PROXIES`).
    pub client_ip: IpAddr,
}

/// A request floq's own check let through, for `on_authorize` to narrow.
pub struct Access<'a> {
    pub user_id: Uuid,
    pub company_id: Uuid,
    pub roles: &'a [Role],
    /// The capability the route needs (`flow:edit`, `mcp`, …).
    pub capability: &'a str,
    pub method: &'a axum::http::Method,
    pub path: &'a str,
    pub client_ip: IpAddr,
}

pub enum Verdict {
    Allow,
    /// Refused with `403` and this reason (shown to the caller, audited).
    Deny(String),
}

/// The node a worker is about to execute (or has executed).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub company_id: Uuid,
    pub run_id: Uuid,
    pub flow_id: Uuid,
    /// The node's id in its flow, and its path in the run (`each[3]/fetch` inside a loop).
    pub node_id: String,
    pub node_path: Arc<str>,
    pub kind: NodeKind,
}

/// A node failure a plugin decides or a plugin node type ends with: stored in its step as `{code, message}`.
#[derive(Debug, Clone)]
pub struct NodeFailure {
    pub code: &'static str,
    pub message: String,
}

impl NodeFailure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// How a node ended: its output, or its failure.
pub type NodeOutcome = Result<Value, NodeFailure>;

/// What `before_node_execute` decided.
pub enum Before {
    Continue,
    /// The node does not run: its step is `skipped` with this reason, and so are nodes only it leads to.
    Skip(String),
    /// The node fails without running (its run fails, as with any failed node without retries left).
    Fail(NodeFailure),
}

/// A call of a plugin's node type: its params with templates evaluated and
/// secret references resolved (only in the params its spec lists as
/// `secret_params`), and the outputs of its parents.
pub struct NodeCall {
    pub node: NodeInfo,
    pub params: Value,
    pub inputs: Value,
    /// The same for every execution of this node in this run (`{run_id}:{node_path}`).
    pub idempotency_key: String,
    /// The secrets in `params` that are bound to origins (`allowed_origins`):
    /// a type that sends nothing to a known origin must refuse them.
    pub bound_secrets: Vec<String>,
    /// For a type with tables of its own: open them with `db::tenant_tx` (row-level security holds).
    pub pool: crate::db::Pool,
}

/// A node type a plugin adds. Its spec joins the node table (validation on
/// save, `GET /api/v1/node-types`); the worker runs it like a built-in,
/// under the node's timeout, retry policy and the run's cancel.
pub trait NodeType: Send + Sync {
    fn spec(&self) -> NodeSpec;
    fn run(&self, call: NodeCall) -> BoxFuture<'static, NodeOutcome>;
}

/// The hooks. Every one has a default that changes nothing, so a plugin
/// implements only what it needs.
pub trait Plugin: Send + Sync {
    /// Its name in `FLOQ_PLUGINS`.
    fn name(&self) -> &'static str;

    /// Tables it needs; a missing one stops the service at start.
    fn required_tables(&self) -> Vec<&'static str> {
        vec![]
    }

    /// API, every request, before authentication and the handler: may read
    /// or change the request (headers, extensions), or answer it.
    fn on_request<'a>(
        &'a self,
        _request: &'a mut axum::extract::Request,
        _info: &'a RequestInfo<'a>,
    ) -> BoxFuture<'a, OnRequest> {
        Box::pin(ready(OnRequest::Continue))
    }

    /// API, once per request that needs a capability, after floq's own check
    /// allowed it: may only narrow it. An error counts as a deny.
    fn on_authorize<'a>(&'a self, _access: &'a Access<'a>) -> BoxFuture<'a, Result<Verdict, PluginError>> {
        Box::pin(ready(Ok(Verdict::Allow)))
    }

    /// API, when a flow definition is saved or deployed, after floq's
    /// validation: more reasons to refuse it (`422`), each naming its field.
    fn check_flow(&self, _company_id: Uuid, _definition: &FlowDefinition) -> Vec<FieldError> {
        vec![]
    }

    /// Worker, before each node (also inside loops and sub-flows) with its
    /// params evaluated; secret references are still references here.
    fn before_node_execute<'a>(&'a self, _node: &'a NodeInfo, _params: &'a mut Value) -> BoxFuture<'a, Before> {
        Box::pin(ready(Before::Continue))
    }

    /// Worker, after each node that ran (secrets already scrubbed from its
    /// output): may change the output or turn the outcome into a failure.
    fn after_node_execute<'a>(&'a self, _node: &'a NodeInfo, _outcome: &'a mut NodeOutcome) -> BoxFuture<'a, ()> {
        Box::pin(ready(()))
    }

    fn node_types(&self) -> Vec<Arc<dyn NodeType>> {
        vec![]
    }
}

/// Builds a plugin from its settings.
pub trait PluginFactory: Send + Sync {
    /// Lowercase letters, digits and `-`; its settings are `FLOQ_PLUGIN_<NAME>_*`
    /// with the name upper-cased and `-` as `_`.
    fn name(&self) -> &'static str;

    /// The settings it reads (upper-case, without the prefix); any other is refused at start.
    fn settings(&self) -> &'static [&'static str] {
        &[]
    }

    /// A bad value is a [`ConfigError`] naming the variable (`settings.var(…)`).
    fn build(&self, settings: &Settings) -> Result<Arc<dyn Plugin>, ConfigError>;
}

/// The plugins a binary offers; configuration enables some of them.
#[derive(Clone, Default)]
pub struct Available(Vec<Arc<dyn PluginFactory>>);

impl Available {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn with(mut self, factory: impl PluginFactory + 'static) -> Self {
        self.0.push(Arc::new(factory));
        self
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|f| f.name()).collect()
    }

    fn find(&self, name: &str) -> Option<&Arc<dyn PluginFactory>> {
        self.0.iter().find(|f| f.name() == name)
    }
}

/// The enabled plugins of one service, in `FLOQ_PLUGINS` order, and the node
/// types they add.
#[derive(Clone, Default)]
pub struct Plugins {
    list: Arc<[Arc<dyn Plugin>]>,
    nodes: Arc<[(NodeKind, Arc<dyn NodeType>)]>,
    table: Table,
}

impl Plugins {
    /// Builds what `FLOQ_PLUGINS` enables from `available`. An unknown name,
    /// a setting the plugin does not read, a bad value or a node type that
    /// clashes is an error naming it; services stop on it before they serve.
    pub fn load(config: &Config, available: &Available) -> Result<Self, ConfigError> {
        let mut list: Vec<Arc<dyn Plugin>> = Vec::new();
        for name in &config.plugins {
            let Some(factory) = available.find(name) else {
                let offered = available.names();
                return Err(ConfigError {
                    var: "FLOQ_PLUGINS",
                    problem: format!(
                        "unknown plugin `{name}` (this build offers: {})",
                        if offered.is_empty() {
                            "none".to_string()
                        } else {
                            offered.join(", ")
                        }
                    ),
                });
            };
            let settings = config.plugin_settings.of(name);
            settings.refuse_unknown(factory.settings())?;
            list.push(factory.build(&settings)?);
        }
        let mut nodes = Vec::new();
        let mut specs = Vec::new();
        for plugin in &list {
            for node in plugin.node_types() {
                let spec = catalog::register(node.spec()).map_err(|problem| ConfigError {
                    var: "FLOQ_PLUGINS",
                    problem: format!("plugin `{}`: {problem}", plugin.name()),
                })?;
                if specs.iter().any(|s: &&NodeSpec| s.kind == spec.kind) {
                    return Err(ConfigError {
                        var: "FLOQ_PLUGINS",
                        problem: format!("two enabled plugins add node type `{}`", spec.kind),
                    });
                }
                specs.push(spec);
                nodes.push((spec.kind, node));
            }
        }
        Ok(Self {
            list: list.into(),
            nodes: nodes.into(),
            table: Table::with(specs),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.list.iter()
    }

    /// The built-in node types and the enabled plugins'.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The implementations of the node types the plugins add.
    pub fn node_types(&self) -> impl Iterator<Item = &(NodeKind, Arc<dyn NodeType>)> {
        self.nodes.iter()
    }

    /// Every table an enabled plugin needs exists; the error names the first plugin and table missing.
    pub async fn check_tables(&self, pool: &crate::db::Pool) -> anyhow::Result<()> {
        for plugin in self.iter() {
            for table in plugin.required_tables() {
                let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                    .bind(table)
                    .fetch_one(pool)
                    .await?;
                if found.is_none() {
                    anyhow::bail!(
                        "plugin `{}` needs the table `{table}`, which does not exist: apply the plugin's migration, \
                         or remove it from FLOQ_PLUGINS",
                        plugin.name()
                    );
                }
            }
        }
        Ok(())
    }

    /// Every `check_flow` complaint of every plugin about `definition`.
    pub fn check_flow(&self, company_id: Uuid, definition: &FlowDefinition) -> Vec<FieldError> {
        self.iter().flat_map(|p| p.check_flow(company_id, definition)).collect()
    }
}
