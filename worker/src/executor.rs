//! The graph walker: runs nodes as soon as their parents are resolved
//! (independent branches concurrently), routes branch ports, skips what a
//! branch did not take, and stops at the first failure.

use floq_shared::db::{self, StoreError};
use floq_shared::ids::CompanyId;
use floq_shared::kv;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{Map, Value, json};

use crate::flow_cache::{CompiledFlow, CompiledNode};
use crate::nodes::{self, NodeCtx, NodeEnv, NodeError, NodeOutput, NodeResult, RunCtx, output_size, too_large};
use crate::sandbox::Job;
use crate::vault;
use floq_shared::audit::{self, Actor, Entry};
use floq_shared::flow::{EvalScope, RetryPolicy};
use floq_shared::script::ScriptKind;
use floq_shared::telemetry::METRICS;

pub use floq_shared::run::{RunStatus, StepStatus};
pub use floq_shared::runs::outcomes::Outcome;
pub use floq_shared::runs::steps::Step;

#[derive(Clone, Copy, PartialEq)]
enum State {
    Pending,
    Running,
    Done,
    Skipped,
}

pub struct RunInput<'a> {
    pub run: RunCtx,
    pub input: &'a Value,
}

/// The error message of a failed outcome, for the node that ran it (loops, sub-flows).
fn error_message(outcome: &Outcome) -> String {
    outcome
        .error
        .as_ref()
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("unknown error")
        .to_string()
}

/// The executor as nodes see it ([`nodes::Runner`]): loops and sub-flows run their bodies here.
pub struct Executor;

impl nodes::Runner for Executor {
    fn run<'a>(
        &'a self,
        flow: &'a CompiledFlow,
        run: RunCtx,
        input: &'a Value,
        env: Arc<NodeEnv>,
    ) -> BoxFuture<'a, nodes::Nested> {
        Box::pin(async move {
            let outcome = execute(flow, RunInput { run, input }, env).await;
            match outcome.status {
                RunStatus::Succeeded => Ok(outcome.output.unwrap_or(Value::Null)),
                _ => Err(error_message(&outcome)),
            }
        })
    }
}

pub async fn execute(flow: &CompiledFlow, run: RunInput<'_>, env: Arc<NodeEnv>) -> Outcome {
    let started_at = Utc::now();
    let n = flow.nodes.len();
    let mut state = vec![State::Pending; n];
    let mut ports: Vec<Option<String>> = vec![None; n];
    let mut outputs: HashMap<String, Value> = HashMap::new();
    let mut steps = Vec::with_capacity(n);
    let mut audit = Vec::with_capacity(n);
    let mut shapes: Vec<Value> = vec![Value::Null; n];
    let mut run_ctx = run.run;
    if run_ctx.vars.is_none() && flow.reads_vars {
        match load_vars(&env, run_ctx.company_id.into()).await {
            Ok(vars) => run_ctx.vars = Some(Arc::new(vars)),
            Err(e) => {
                tracing::warn!(error = %e, "reading $vars failed");
                return Outcome::failed_early("vars_unavailable", "the KV values could not be read");
            }
        }
    }
    let ctx = Arc::new(run_ctx);
    let run_meta = json!({
        "id": ctx.run_id, "flow_id": ctx.flow_id, "trigger": ctx.trigger, "attempt": ctx.attempt,
    });
    let vars = ctx
        .vars
        .as_deref()
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut in_flight = FuturesUnordered::new();
    // JSON bytes of every step output so far, against `run_output_max_bytes`.
    let mut run_bytes = 0usize;

    loop {
        // Start (or skip) every node whose parents are all resolved; skips can cascade.
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..n {
                if state[i] != State::Pending {
                    continue;
                }
                let parents = &flow.incoming[i];
                if parents
                    .iter()
                    .any(|(p, _)| matches!(state[*p], State::Pending | State::Running))
                {
                    continue;
                }
                let active: Vec<usize> = parents
                    .iter()
                    .filter(|(p, port)| state[*p] == State::Done && (port.is_none() || *port == ports[*p]))
                    .map(|(p, _)| *p)
                    .collect();
                changed = true;
                if !parents.is_empty() && active.is_empty() {
                    state[i] = State::Skipped;
                    steps.push(step(
                        &flow.nodes[i].id,
                        steps.len(),
                        StepStatus::Skipped,
                        None,
                        None,
                        None,
                        None,
                    ));
                    continue;
                }
                let node = &flow.nodes[i];
                let inputs: Map<String, Value> = active
                    .iter()
                    .map(|p| {
                        let id = &flow.nodes[*p].id;
                        (id.clone(), outputs.get(id).cloned().unwrap_or(Value::Null))
                    })
                    .collect();
                state[i] = State::Running;
                let params = Params::prepare(node, run.input, &outputs, &vars, &run_meta);
                let inputs = Value::Object(inputs);
                shapes[i] = json!({"input": audit::shape(&inputs)});
                let node_ctx = NodeCtx {
                    params: Value::Null,
                    inputs,
                    scope: params.scope.clone(),
                    body: node.body.clone(),
                    credential: None,
                    secret_origins: Arc::default(),
                    run: ctx.clone(),
                    env: env.clone(),
                };
                in_flight.push(async move {
                    let started = Utc::now();
                    let clock = Instant::now();
                    let ran = run_node(node, params, node_ctx).await;
                    (i, ran, started, Utc::now(), clock.elapsed())
                });
            }
        }

        let Some((i, ran, started, finished, elapsed)) = in_flight.next().await else {
            break;
        };
        let NodeRun {
            result,
            attempts,
            params_shape,
            audit: secret_entries,
        } = ran;
        audit.extend(secret_entries);
        let node = &flow.nodes[i];
        let result = result.and_then(|out| {
            let size = output_size(&out.value, env.step_output_max_bytes)?;
            run_bytes += size;
            if run_bytes > env.run_output_max_bytes {
                return Err(too_large(
                    "with it the run's outputs",
                    env.run_output_max_bytes,
                    "FLOQ_RUN_OUTPUT_MAX_BYTES",
                ));
            }
            Ok(out)
        });
        let status = if result.is_ok() {
            StepStatus::Succeeded
        } else {
            StepStatus::Failed
        };
        METRICS
            .node_duration
            .with_label_values(&[node.spec.name, status.as_str()])
            .observe(elapsed.as_secs_f64());
        let mut shape = std::mem::take(&mut shapes[i]);
        shape["params"] = params_shape;
        audit.push(
            Entry::new(ctx.company_id, Actor::system("worker"), "node.execute")
                .resource("run", ctx.run_id)
                .outcome(if result.is_ok() {
                    audit::Outcome::Success
                } else {
                    audit::Outcome::Failure
                })
                .at(finished)
                .details(json!({
                    "flow_id": ctx.flow_id,
                    "run_id": ctx.run_id,
                    "node_id": node.id,
                    "node_type": node.spec.name,
                    "status": status,
                    "attempts": attempts,
                    "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                    "input": shape,
                    "output": result.as_ref().ok().map(|o| audit::shape(&o.value)),
                    "error_code": result.as_ref().err().map(|e| e.code),
                })),
        );
        match result {
            Ok(NodeOutput { value, port }) => {
                state[i] = State::Done;
                ports[i] = port;
                steps.push(step(
                    &node.id,
                    steps.len(),
                    StepStatus::Succeeded,
                    Some(value.clone()),
                    None,
                    Some(started),
                    Some(finished),
                ));
                outputs.insert(node.id.clone(), value);
            }
            Err(e) => {
                steps.push(step(
                    &node.id,
                    steps.len(),
                    StepStatus::Failed,
                    None,
                    Some(e.to_json()),
                    Some(started),
                    Some(finished),
                ));
                // Nodes still in flight are dropped: the run has failed.
                return Outcome {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(run_error(&node.id, &e)),
                    steps,
                    started_at,
                    finished_at: Utc::now(),
                    audit,
                };
            }
        }
    }

    let sinks: Vec<&str> = (0..n)
        .filter(|i| flow.is_sink[*i] && state[*i] == State::Done)
        .map(|i| flow.nodes[i].id.as_str())
        .collect();
    let output = match sinks.as_slice() {
        [one] => outputs.remove(*one),
        many => Some(Value::Object(
            many.iter()
                .map(|id| (id.to_string(), outputs.remove(*id).unwrap_or(Value::Null)))
                .collect(),
        )),
    };
    Outcome {
        status: RunStatus::Succeeded,
        output,
        error: None,
        steps,
        started_at,
        finished_at: Utc::now(),
        audit,
    }
}

/// At most this many plain KV values are read into `$vars`.
const VARS_MAX: i64 = 10_000;

/// The company's plain KV values as `$vars` (secrets never: they stay encrypted).
async fn load_vars(env: &NodeEnv, company_id: CompanyId) -> Result<Value, StoreError> {
    let mut tx = db::tenant_tx(&env.pool, company_id.into()).await?;
    let vars = kv::plain_values(&mut tx, company_id, VARS_MAX).await?;
    db::commit(tx).await?;
    Ok(Value::Object(vars))
}

/// A node's params on their way to evaluation. Without expressions they are
/// evaluated at once; with expressions the node's future evaluates them in
/// the sandbox against a snapshot of what the templates may read.
struct Params {
    ready: Option<Value>,
    snapshot: Option<Snapshot>,
    /// The JSON scope for the sandbox (expressions, code nodes); null otherwise.
    scope: Arc<Value>,
}

struct Snapshot {
    input: Value,
    outputs: HashMap<String, Value>,
    vars: Value,
    run: Value,
}

impl Params {
    fn prepare(
        node: &CompiledNode,
        input: &Value,
        outputs: &HashMap<String, Value>,
        vars: &Value,
        run: &Value,
    ) -> Self {
        let scripted = !node.params.expressions.is_empty() || node.spec.runs_scripts;
        let scope = if scripted {
            let nodes: Map<String, Value> = outputs
                .iter()
                .map(|(id, out)| (id.clone(), json!({"output": out})))
                .collect();
            Arc::new(json!({"$input": input, "$node": nodes, "$vars": vars, "$run": run}))
        } else {
            Arc::new(Value::Null)
        };
        if node.params.expressions.is_empty() {
            let scope_ref = EvalScope {
                input,
                nodes: outputs,
                vars,
                run,
            };
            return Self {
                ready: Some(node.params.eval(&scope_ref, &[])),
                snapshot: None,
                scope,
            };
        }
        Self {
            ready: None,
            snapshot: Some(Snapshot {
                input: input.clone(),
                outputs: outputs.clone(),
                vars: vars.clone(),
                run: run.clone(),
            }),
            scope,
        }
    }

    async fn evaluate(self, node: &CompiledNode, env: &NodeEnv) -> Result<Value, NodeError> {
        let mut value = match (self.ready, self.snapshot) {
            (Some(ready), _) => ready,
            (None, Some(snap)) => {
                let jobs = node
                    .params
                    .expressions
                    .iter()
                    .map(|source| Job {
                        source: source.clone(),
                        kind: ScriptKind::Expression,
                        timeout: env.template_timeout,
                    })
                    .collect();
                let mut results = Vec::with_capacity(node.params.expressions.len());
                for (source, result) in node
                    .params
                    .expressions
                    .iter()
                    .zip(env.sandbox.run(self.scope, jobs).await)
                {
                    match result {
                        Ok(v) => results.push(v),
                        Err(e) => {
                            let mut error = nodes::sandbox_error(e);
                            error.message = format!("template `{{{{ {source} }}}}`: {}", error.message);
                            return Err(error);
                        }
                    }
                }
                let scope = EvalScope {
                    input: &snap.input,
                    nodes: &snap.outputs,
                    vars: &snap.vars,
                    run: &snap.run,
                };
                node.params.eval(&scope, &results)
            }
            (None, None) => Value::Null,
        };
        if let Some(map) = value.as_object_mut() {
            for (k, v) in &node.raw {
                map.insert(k.clone(), v.clone());
            }
        }
        Ok(value)
    }
}

/// One node's execution: its result, the attempts made, the shape of its
/// evaluated params (sizes and keys, never values) and the audit entries of
/// its secrets.
struct NodeRun {
    result: NodeResult,
    attempts: u32,
    params_shape: Value,
    audit: Vec<Entry>,
}

/// Evaluates the params, opens the node's secrets, runs it under its timeout
/// and retry policy, and scrubs its secrets from what it produced.
async fn run_node(node: &CompiledNode, params: Params, mut ctx: NodeCtx) -> NodeRun {
    let failed = |e| NodeRun {
        result: Err(e),
        attempts: 0,
        params_shape: Value::Null,
        audit: vec![],
    };
    let mut params = match params.evaluate(node, &ctx.env).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let opened = match vault::open(&mut params, &node.secrets, &node.id, &ctx.run, &ctx.env).await {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    ctx.credential = opened.credential.clone();
    ctx.secret_origins = Arc::new(opened.secret_origins.clone());
    let params_shape = audit::shape(&params);
    ctx.params = params;
    let attempts = node.retry.as_ref().map_or(1, |r| r.attempts.max(1));
    let mut attempt = 1;
    let mut result = loop {
        let fut = node.implementation.run(ctx.clone());
        let result = match node.timeout {
            Some(limit) => tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
                Err(NodeError::new(
                    "node_timeout",
                    format!("the node took longer than {} ms", limit.as_millis()),
                ))
            }),
            None => fut.await,
        };
        match (&result, &node.retry) {
            (Err(e), Some(policy)) if attempt < attempts && policy.retries(e.code) => {
                let backoff = policy.backoff_ms.saturating_mul(1 << (attempt - 1).min(16));
                tokio::time::sleep(Duration::from_millis(backoff.min(RetryPolicy::MAX_BACKOFF_MS))).await;
                attempt += 1;
            }
            _ => break result,
        }
    };
    // The node's copy of the credential goes now; the vault's copy is zeroized when `opened` drops.
    drop(ctx);
    if !opened.is_empty() {
        match &mut result {
            Ok(out) => opened.scrub_value(&mut out.value),
            Err(e) => {
                if let Some(clean) = opened.scrub_text(&e.message) {
                    e.message = clean;
                }
            }
        }
    }
    NodeRun {
        result,
        attempts: attempt,
        params_shape,
        audit: opened.audit,
    }
}

fn run_error(node_id: &str, e: &NodeError) -> Value {
    json!({"node": node_id, "code": e.code, "message": format!("node `{node_id}` failed: {}", e.message)})
}

fn step(
    node_id: &str,
    seq: usize,
    status: StepStatus,
    output: Option<Value>,
    error: Option<Value>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
) -> Step {
    Step {
        node_id: node_id.to_string(),
        seq: seq as i32,
        status,
        output,
        error,
        started_at,
        finished_at,
    }
}
