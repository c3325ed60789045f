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
    // The fault tests' node that always panics: any node whose id starts with `panic`.
    #[cfg(feature = "failpoints")]
    if node.id.starts_with("panic") && floq_shared::failpoint::fires("node.panic") {
        panic!("fail point node.panic: node {}", node.id);
    }
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

#[cfg(test)]
mod tests {
    //! The graph walker on flows of pure nodes, with an environment whose
    //! database is never reached: these flows need none.
    use super::*;
    use floq_shared::flow::FlowDefinition;
    use std::sync::OnceLock;
    use uuid::Uuid;

    fn config() -> floq_shared::Config {
        floq_shared::Config::from_vars(HashMap::from([
            ("FLOQ_JWT_SECRET".into(), "x".repeat(40)),
            ("FLOQ_ENC_KEY_SECRET".into(), "a".repeat(256)),
            ("FLOQ_ENC_KEY_SALT".into(), "b".repeat(64)),
        ]))
        .unwrap()
    }

    /// A node environment for flows that reach nothing: its pool is closed,
    /// so any node or `$vars` read that needed the database would fail the run.
    async fn env(step_output_max_bytes: usize) -> Arc<NodeEnv> {
        static KEYRING: OnceLock<Arc<floq_shared::crypto::Keyring>> = OnceLock::new();
        let config = config();
        let keyring = KEYRING
            .get_or_init(|| Arc::new(floq_shared::crypto::Keyring::from_config(&config).unwrap()))
            .clone();
        let pool = db::Pool::connect_lazy("postgres://nobody@127.0.0.1:1/nowhere").unwrap();
        pool.close().await;
        Arc::new(NodeEnv {
            http: floq_shared::egress::http_client("floq-test").unwrap(),
            egress: floq_shared::egress::Policy::from_config(&config),
            pool,
            flows: Arc::default(),
            sandbox: crate::sandbox::Sandbox::new(1, Default::default()),
            keyring,
            delay_max: Duration::from_secs(1),
            http_max_timeout: Duration::from_secs(1),
            http_max_response_bytes: 1024,
            template_timeout: Duration::from_secs(1),
            code_timeout: Duration::from_secs(1),
            code_max_timeout: Duration::from_secs(1),
            step_output_max_bytes,
            run_output_max_bytes: 1 << 20,
            runner: Arc::new(Executor),
        })
    }

    fn flow(def: Value) -> CompiledFlow {
        let def: FlowDefinition = serde_json::from_value(def).unwrap();
        CompiledFlow::compile(&def).unwrap()
    }

    fn run_ctx(vars: Option<Value>) -> RunCtx {
        RunCtx {
            run_id: Uuid::now_v7(),
            company_id: Uuid::now_v7(),
            flow_id: Uuid::now_v7(),
            trigger: floq_shared::run::Trigger::Api,
            attempt: 1,
            depth: 0,
            vars: vars.map(Arc::new),
            deployed_by: None,
        }
    }

    async fn execute_with(flow: &CompiledFlow, input: Value, vars: Option<Value>, env: Arc<NodeEnv>) -> Outcome {
        execute(
            flow,
            RunInput {
                run: run_ctx(vars),
                input: &input,
            },
            env,
        )
        .await
    }

    fn statuses(outcome: &Outcome) -> Vec<(&str, StepStatus)> {
        outcome.steps.iter().map(|s| (s.node_id.as_str(), s.status)).collect()
    }

    fn branching() -> CompiledFlow {
        flow(json!({
            "nodes": [
                {"id": "in", "type": "set", "params": {"values": {"ok": "{{ $input.ok }}", "name": "{{ $input.name }}"}}},
                {"id": "check", "type": "if", "params": {"condition": "{{ $node.in.output.ok }}"}},
                {"id": "yes", "type": "set", "params": {"values": {"hello": "hi {{ $node.in.output.name }}"}}},
                {"id": "no", "type": "set", "params": {"values": {"sorry": true}}},
                {"id": "after_no", "type": "set", "params": {"values": 1}}
            ],
            "edges": [
                {"from": "in", "to": "check"},
                {"from": "check", "to": "yes", "port": "true"},
                {"from": "check", "to": "no", "port": "false"},
                {"from": "no", "to": "after_no"}
            ]
        }))
    }

    #[tokio::test]
    async fn a_branch_runs_the_port_it_took_and_skips_the_rest_downstream() {
        let outcome = execute_with(
            &branching(),
            json!({"ok": true, "name": "Ada"}),
            None,
            env(1 << 20).await,
        )
        .await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
        assert_eq!(
            outcome.output,
            Some(json!({"hello": "hi Ada"})),
            "the one sink that ran"
        );
        let mut seen = statuses(&outcome);
        seen.sort_by_key(|(id, _)| *id);
        assert_eq!(
            seen,
            [
                ("after_no", StepStatus::Skipped),
                ("check", StepStatus::Succeeded),
                ("in", StepStatus::Succeeded),
                ("no", StepStatus::Skipped),
                ("yes", StepStatus::Succeeded),
            ]
        );
        let seqs: Vec<i32> = outcome.steps.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (0..5).collect::<Vec<_>>(), "steps are numbered as they end");
        assert_eq!(
            outcome.audit.len(),
            3,
            "one node.execute entry per node that ran, none for skipped ones"
        );
        assert!(outcome.audit.iter().all(|e| e.action == "node.execute"));

        let other = execute_with(
            &branching(),
            json!({"ok": false, "name": "Ada"}),
            None,
            env(1 << 20).await,
        )
        .await;
        assert_eq!(other.status, RunStatus::Succeeded);
        assert_eq!(other.output, Some(json!(1)));
        assert!(statuses(&other).contains(&("yes", StepStatus::Skipped)));
    }

    #[tokio::test]
    async fn several_sinks_answer_together_by_node_id() {
        let flow = flow(json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"x": 1}}},
                {"id": "b", "type": "set", "params": {"values": "{{ $node.a.output.x }}"}},
                {"id": "c", "type": "set", "params": {"values": "{{ $run.trigger }}"}}
            ],
            "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}]
        }));
        let outcome = execute_with(&flow, json!({}), None, env(1 << 20).await).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
        assert_eq!(outcome.output, Some(json!({"b": 1, "c": "api"})));
    }

    #[tokio::test]
    async fn the_first_failure_fails_the_run_naming_its_node() {
        let flow = flow(json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"x": 1}}},
                {"id": "pick", "type": "switch", "params": {"value": 1, "cases": "not a list"}},
                {"id": "later", "type": "set", "params": {"values": 2}}
            ],
            "edges": [{"from": "a", "to": "pick"}, {"from": "pick", "to": "later"}]
        }));
        let outcome = execute_with(&flow, json!({}), None, env(1 << 20).await).await;
        assert_eq!(outcome.status, RunStatus::Failed);
        assert_eq!(outcome.output, None);
        let error = outcome.error.as_ref().unwrap();
        assert_eq!(
            (&error["node"], &error["code"]),
            (&json!("pick"), &json!("invalid_params"))
        );
        assert_eq!(
            statuses(&outcome),
            [("a", StepStatus::Succeeded), ("pick", StepStatus::Failed)],
            "nothing runs after the failure"
        );
        let failed = outcome.steps.last().unwrap();
        assert_eq!(failed.error.as_ref().unwrap()["code"], "invalid_params");
        assert_eq!(failed.output, None);
        assert_eq!(outcome.audit.last().unwrap().outcome, audit::Outcome::Failure);
    }

    #[tokio::test]
    async fn an_output_over_the_step_limit_fails_its_node() {
        let flow = flow(json!({
            "nodes": [{"id": "big", "type": "set", "params": {"values": {"blob": "x".repeat(100)}}}]
        }));
        let outcome = execute_with(&flow, json!({}), None, env(64).await).await;
        assert_eq!(outcome.status, RunStatus::Failed);
        assert_eq!(outcome.error.as_ref().unwrap()["code"], "output_too_large");
        assert!(
            outcome.error.as_ref().unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("FLOQ_STEP_OUTPUT_MAX_BYTES")
        );
    }

    fn reading_vars() -> CompiledFlow {
        let flow = flow(json!({
            "nodes": [{"id": "v", "type": "set", "params": {"values": "{{ $vars.greeting }}"}}]
        }));
        assert!(flow.reads_vars);
        flow
    }

    #[tokio::test]
    async fn vars_a_run_already_holds_are_not_read_again() {
        // A loop body or sub-flow gets its run's `$vars`; the pool here is closed.
        let outcome = execute_with(
            &reading_vars(),
            json!({}),
            Some(json!({"greeting": "hello"})),
            env(1 << 20).await,
        )
        .await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
        assert_eq!(outcome.output, Some(json!("hello")));
    }

    #[tokio::test]
    async fn vars_that_cannot_be_read_fail_the_run_before_any_node() {
        let outcome = execute_with(&reading_vars(), json!({}), None, env(1 << 20).await).await;
        assert_eq!(outcome.status, RunStatus::Failed);
        assert_eq!(outcome.error.as_ref().unwrap()["code"], "vars_unavailable");
        assert!(outcome.steps.is_empty() && outcome.audit.is_empty());
    }
}
