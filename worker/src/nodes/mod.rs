//! Node implementations, one per file, each registered by its type name in
//! [`registry`]. The catalog in `floq_shared::flow::catalog` holds each
//! type's params schema; a test checks the two name the same types.
//!
//! A node receives its params with templates already evaluated and the
//! outputs of its active parents. It never sees secrets it was not handed.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use floq_shared::db::Pool as PgPool;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::flow_cache::{CompiledFlow, FlowCache};
use crate::sandbox::{Sandbox, SandboxError};
use crate::vault::Credential;
use floq_shared::crypto::Keyring;
use floq_shared::flow::NodeKind;
use floq_shared::flow::NodeSpec;
use floq_shared::flow::catalog::Table;
use floq_shared::plugin::Plugins;

mod branch;
mod code;
mod delay;
mod http_request;
mod kv;
mod loop_items;
mod merge;
mod plugin;
mod postgres;
mod respond;
mod set;
mod smtp_send;
mod sub_flow;

/// What a node produced: its output, and for branch nodes the port taken.
#[derive(Debug)]
pub struct NodeOutput {
    pub value: Value,
    pub port: Option<String>,
}

impl NodeOutput {
    pub fn value(value: Value) -> Self {
        Self { value, port: None }
    }
}

/// A node failure as stored in the step: `{code, message}`.
#[derive(Debug, Clone)]
pub struct NodeError {
    pub code: &'static str,
    pub message: String,
}

impl NodeError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_params", message)
    }

    pub fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

pub type NodeResult = Result<NodeOutput, NodeError>;

/// How a nested flow (a loop's body, a sub-flow) ended: its output, or the
/// message of its failure.
pub type Nested = Result<Value, String>;

/// Runs a nested flow to its end. `loop` and `sub_flow` reach the executor
/// only through this, so nodes do not depend on the graph walker that runs
/// them; the worker hands its executor in as [`NodeEnv::runner`].
pub trait Runner: Send + Sync {
    fn run<'a>(
        &'a self,
        flow: &'a CompiledFlow,
        run: RunCtx,
        input: &'a Value,
        env: Arc<NodeEnv>,
    ) -> BoxFuture<'a, Nested>;
}

/// The JSON size of a node's output, or `output_too_large` once it passes `limit` (counted without building the
/// text, and abandoned at the limit).
pub fn output_size(value: &Value, limit: usize) -> Result<usize, NodeError> {
    struct Counter {
        bytes: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes += buf.len();
            if self.bytes > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { bytes: 0, limit };
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => Ok(counter.bytes),
        Err(_) => Err(too_large("its output", limit, "FLOQ_STEP_OUTPUT_MAX_BYTES")),
    }
}

/// `output_too_large`, naming what grew and the setting that bounds it (the run error names the node).
pub fn too_large(what: &str, limit: usize, setting: &str) -> NodeError {
    NodeError::new(
        "output_too_large",
        format!("{what} exceeded the {limit}-byte limit ({setting})"),
    )
}

/// Limits, clients and services nodes share within one worker.
pub struct NodeEnv {
    /// Built by `egress::http_client`: it can only reach what `egress` vetted.
    pub http: reqwest::Client,
    /// Every connection a node opens passes this.
    pub egress: floq_shared::egress::Policy,
    pub pool: PgPool,
    pub flows: Arc<FlowCache>,
    pub sandbox: Sandbox,
    pub keyring: Arc<Keyring>,
    pub delay_max: Duration,
    /// A top-level `delay` or retry backoff longer than this parks its run (`FLOQ_PARK_AFTER_MS`).
    pub park_after: Duration,
    pub http_max_timeout: Duration,
    pub http_max_response_bytes: usize,
    pub template_timeout: Duration,
    pub code_timeout: Duration,
    pub code_max_timeout: Duration,
    /// Largest JSON output of one node, and of all of a run's steps together (`output_too_large` past them).
    pub step_output_max_bytes: usize,
    pub run_output_max_bytes: usize,
    /// Runs loop bodies and sub-flows.
    pub runner: Arc<dyn Runner>,
    /// Access tokens of `oauth2` credentials, refreshed just in time.
    pub oauth: Arc<crate::oauth::Tokens>,
    /// The enabled plugins, whose hooks run around every node.
    pub plugins: Plugins,
}

/// The run a node executes in.
#[derive(Debug, Clone)]
pub struct RunCtx {
    pub run_id: Uuid,
    pub company_id: Uuid,
    pub flow_id: Uuid,
    pub trigger: floq_shared::run::Trigger,
    pub attempt: i32,
    /// 0 for a run; +1 inside each loop body or sub-flow.
    pub depth: u32,
    /// The company's plain KV values (`$vars`), loaded once per run when the flow reads them.
    pub vars: Option<Arc<Value>>,
    /// The deployer of the version being executed (a sub-flow's own deployer inside it).
    pub deployed_by: Option<Uuid>,
    /// Cancelled when the run is (`worker::control`); loop bodies and sub-flows share it.
    pub cancel: CancellationToken,
    /// When the run passes its flow's `deadline_ms` ([`crate::executor::deadline`]); shared like `cancel`.
    pub deadline: Option<tokio::time::Instant>,
    /// Where this (nested) flow sits in its run: `""` for the run's own
    /// nodes, `"{loop}[{i}]/"` inside a loop's item `i`, `"{sub}/"` inside a
    /// sub-flow (nested as deep as they nest). Part of every node's
    /// [`NodeCtx::idempotency_key`].
    pub path: Arc<str>,
}

/// Why a run stops before its end: at the next node boundary, interrupting
/// the `code`, `delay` and `http_request` nodes it is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Cancelled,
    DeadlineExceeded,
}

impl Stop {
    /// The run's (and the interrupted steps') error code.
    pub fn code(self) -> &'static str {
        match self {
            Stop::Cancelled => floq_shared::runs::cancel::CODE,
            Stop::DeadlineExceeded => "deadline_exceeded",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Stop::Cancelled => floq_shared::runs::cancel::MESSAGE,
            Stop::DeadlineExceeded => "the run passed its flow's deadline_ms",
        }
    }

    pub fn error(self) -> NodeError {
        NodeError::new(self.code(), self.message())
    }
}

impl RunCtx {
    /// Whether the run must stop now; cheap enough for every node boundary.
    pub fn stopped(&self) -> Option<Stop> {
        if self.cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if self.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            Some(Stop::DeadlineExceeded)
        } else {
            None
        }
    }

    /// Resolves when the run must stop.
    pub async fn stopping(&self) -> Stop {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Stop::Cancelled,
            () = deadline => Stop::DeadlineExceeded,
        }
    }

    /// Runs `work` unless the run stops first; then `work` is dropped (interrupted) and the stop is its error.
    pub async fn unless_stopped<T>(&self, work: impl Future<Output = Result<T, NodeError>>) -> Result<T, NodeError> {
        tokio::select! {
            biased;
            result = work => result,
            stop = self.stopping() => Err(stop.error()),
        }
    }
}

pub use floq_shared::flow::MAX_DEPTH;

#[derive(Clone)]
pub struct NodeCtx {
    /// Evaluated params.
    pub params: Value,
    /// `{parent_id: output}` of the parents whose edge was taken.
    pub inputs: Value,
    /// What templates see (`$input`, `$node`, `$vars`, `$run`), for nodes that run scripts.
    pub scope: Arc<Value>,
    /// A loop's compiled body.
    pub body: Option<Arc<CompiledFlow>>,
    /// The credential named by `credential_id`, decrypted for this node only.
    pub credential: Option<Arc<Credential>>,
    /// Secret KV values in `params` that are bound to origins: `(key, origins)`.
    pub secret_origins: Arc<Vec<(String, Vec<String>)>>,
    pub run: Arc<RunCtx>,
    pub env: Arc<NodeEnv>,
    /// The node's path in its run: [`RunCtx::path`] then its id.
    pub node_path: Arc<str>,
    /// For a `delay` its run was parked on: when the wait ends (it was
    /// checkpointed when the run parked, so a resumed run waits only the rest).
    pub wake_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub trait Node: Send + Sync {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult>;
}

static REGISTRY: LazyLock<HashMap<NodeKind, Arc<dyn Node>>> = LazyLock::new(|| {
    let nodes: [(NodeKind, Arc<dyn Node>); 14] = [
        (NodeKind::SET, Arc::new(set::Set)),
        (NodeKind::IF, Arc::new(branch::If)),
        (NodeKind::SWITCH, Arc::new(branch::Switch)),
        (NodeKind::MERGE, Arc::new(merge::Merge)),
        (NodeKind::DELAY, Arc::new(delay::Delay)),
        (NodeKind::CODE, Arc::new(code::Code)),
        (NodeKind::LOOP, Arc::new(loop_items::Loop)),
        (NodeKind::HTTP_REQUEST, Arc::new(http_request::HttpRequest)),
        (NodeKind::SUB_FLOW, Arc::new(sub_flow::SubFlow)),
        (NodeKind::POSTGRES, Arc::new(postgres::Postgres)),
        (NodeKind::SMTP_SEND, Arc::new(smtp_send::SmtpSend)),
        (NodeKind::RESPOND, Arc::new(respond::Respond)),
        (NodeKind::KV_GET, Arc::new(kv::KvGet)),
        (NodeKind::KV_SET, Arc::new(kv::KvSet)),
    ];
    nodes.into_iter().collect()
});

/// The node types one worker executes: the built-ins and those its enabled
/// plugins add, each with its spec from the service's node table.
#[derive(Clone)]
pub struct Implementations {
    table: Table,
    plugin_nodes: Arc<HashMap<NodeKind, Arc<dyn Node>>>,
}

impl Implementations {
    pub fn built_in() -> Self {
        Self {
            table: Table::built_in(),
            plugin_nodes: Arc::default(),
        }
    }

    pub fn with_plugins(plugins: &Plugins) -> Self {
        let plugin_nodes = plugins
            .node_types()
            .map(|(kind, node)| (*kind, Arc::new(plugin::PluginNode(node.clone())) as Arc<dyn Node>))
            .collect();
        Self {
            table: plugins.table().clone(),
            plugin_nodes: Arc::new(plugin_nodes),
        }
    }

    /// The spec and implementation of the type a definition names, if this worker has it.
    pub fn get(&self, name: &str) -> Option<(&'static NodeSpec, Arc<dyn Node>)> {
        let spec = self.table.spec(name)?;
        let node = REGISTRY.get(&spec.kind).or_else(|| self.plugin_nodes.get(&spec.kind))?;
        Some((spec, node.clone()))
    }
}

/// The nodes a stopping run interrupts (dropping their future is safe: a
/// timer, a script the sandbox interrupts, an HTTP call that may or may not
/// have reached its server, as with any timeout). Others run to their end,
/// the run's next node boundary: a `postgres` or `smtp_send` in the middle
/// of its work, or a `loop`/`sub_flow` whose own nodes stop at theirs.
pub fn interruptible(kind: NodeKind) -> bool {
    // A plugin's node type is interrupted too: its `run` future must be safe to drop (docs/plugins.md).
    [NodeKind::CODE, NodeKind::DELAY, NodeKind::HTTP_REQUEST].contains(&kind) || !NodeKind::BUILT_IN.contains(&kind)
}

pub fn registry() -> &'static HashMap<NodeKind, Arc<dyn Node>> {
    &REGISTRY
}

/// A sandbox failure as a node failure: same code, the script's message and line.
pub fn sandbox_error(e: SandboxError) -> NodeError {
    let message = match e.line {
        Some(line) => format!("{} (line {line})", e.message),
        None => e.message,
    };
    NodeError::new(e.code, message)
}

/// A connection the egress policy refused (or a name that did not resolve), as a node failure.
pub fn egress_error(e: &floq_shared::egress::EgressError) -> NodeError {
    NodeError::new(e.code(), e.to_string())
}

/// The deployer of the running version may no longer use what it reaches.
pub fn lacks_access(what: &str) -> NodeError {
    NodeError::new(
        "author_lacks_access",
        format!("the user who deployed this flow may not use {what}; an admin or a user with access must redeploy it"),
    )
}

impl NodeCtx {
    /// The same for every attempt and every execution of this node in this
    /// run (a resumed or redelivered run included), and distinct for every
    /// node, loop item and sub-flow: `"{run_id}:{path}"`, e.g.
    /// `"…:fetch"`, `"…:each[3]/fetch"`, `"…:sub/fetch"`. A remote API can
    /// deduplicate by it the call that may repeat (docs/architecture.md).
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.run.run_id, self.node_path)
    }

    /// The [`RunCtx::path`] of a flow nested under this node (a sub-flow);
    /// a loop's item `i` is under `"{node_path}[{i}]/"`.
    pub fn nested_path(&self, item: Option<usize>) -> Arc<str> {
        match item {
            Some(i) => format!("{}[{i}]/", self.node_path).into(),
            None => format!("{}/", self.node_path).into(),
        }
    }

    /// Refuses to open a connection to `origin` when a secret this node holds may
    /// not go there. `with_credential`: the node's credential travels on this
    /// connection too (an HTTP redirect to another origin drops it).
    pub fn check_destination(&self, origin: &str, with_credential: bool) -> Result<(), NodeError> {
        let refuse = |what: String| {
            Err(NodeError::new(
                "destination_not_allowed",
                format!("{what} may not be sent to {origin} (see its allowed_origins)"),
            ))
        };
        if let Some(c) = self.credential.as_ref().filter(|_| with_credential)
            && !c.allowed_origins.is_empty()
            && !c.allowed_origins.iter().any(|o| o == origin)
        {
            return refuse(format!("credential {}", c.id));
        }
        for (key, origins) in self.secret_origins.iter() {
            if !origins.iter().any(|o| o == origin) {
                return refuse(format!("the secret `{key}`"));
            }
        }
        Ok(())
    }
}

/// A param as text: strings as they are, other JSON as its text.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A millisecond param, capped; `default` when absent.
pub fn millis(params: &Value, name: &str, default: Duration, max: Duration) -> Result<Duration, NodeError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default.min(max)),
        Some(v) => v
            .as_u64()
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms).min(max))
            .ok_or_else(|| NodeError::invalid(format!("`{name}` must be a positive integer of milliseconds"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_implements_exactly_the_catalog() {
        let mut catalog: Vec<NodeKind> = floq_shared::flow::catalog::all().iter().map(|s| s.kind).collect();
        let mut implemented: Vec<NodeKind> = registry().keys().copied().collect();
        catalog.sort();
        implemented.sort();
        assert_eq!(catalog, implemented);
    }
}
