//! The graph walker: runs nodes as soon as their parents are resolved
//! (independent branches concurrently), routes branch ports, skips what a
//! branch did not take, and stops at the first failure.
//!
//! A run past the running mark hands each completed step to its
//! [`Journal`] (checkpoints); a resumed run ([`RunInput::resume`]) starts
//! with its checkpointed steps already done and runs only the rest. A
//! top-level `delay` or retry backoff longer than `FLOQ_PARK_AFTER_MS` parks
//! the run ([`Ended::Parked`]) once its other running nodes are done.

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
use tracing::Instrument;

use crate::checkpoints::Journal;
use crate::flow_cache::{CompiledFlow, CompiledNode};
use crate::nodes::{self, NodeCtx, NodeEnv, NodeError, NodeOutput, NodeResult, RunCtx, output_size, too_large};
use crate::sandbox::Job;
use crate::{hooks, vault};
use floq_shared::audit::{self, Actor, Entry};
use floq_shared::flow::{EvalScope, NodeKind, RetryPolicy};
use floq_shared::plugin::{Before, NodeInfo};
use floq_shared::runs::checkpoints::{Checkpoint, Wait};
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
    /// Interrupted, or ended in error, after the run was told to stop.
    Stopped,
}

pub struct RunInput<'a> {
    pub run: RunCtx,
    pub input: &'a Value,
    /// What an earlier execution of this run checkpointed: it goes on after that.
    pub resume: Option<Resume>,
    /// Where this run's checkpoints go once it is past the running mark, and
    /// what lets it park; `None` for loop bodies and sub-flows (their node in
    /// the run is the unit of a checkpoint).
    pub journal: Option<Arc<Journal>>,
    /// Whether a long wait may park the run (not while a synchronous caller
    /// waits for its reply: the reply goes to the worker that holds the
    /// delivery).
    pub may_park: bool,
}

impl<'a> RunInput<'a> {
    /// A fresh execution with no checkpoints (loop bodies, sub-flows, tests).
    pub fn new(run: RunCtx, input: &'a Value) -> Self {
        Self {
            run,
            input,
            resume: None,
            journal: None,
            may_park: true,
        }
    }
}

/// A run's checkpoints as loaded (`floq_shared::runs::checkpoints::load`).
#[derive(Debug, Default)]
pub struct Resume {
    /// Steps in `seq` order from 0 without a gap: succeeded ones are done
    /// (outputs and ports restored), skipped ones stay skipped.
    pub steps: Vec<Step>,
    /// Nodes the run was parked on.
    pub waits: Vec<Wait>,
    /// When the run first started: the resumed outcome keeps it.
    pub started_at: Option<DateTime<Utc>>,
}

/// How an execution ended: with the run's outcome, or parked on a long wait
/// with the checkpoint to write before its message is acked (it holds the
/// wait and every step not yet checkpointed).
#[derive(Debug)]
pub enum Ended {
    Finished(Outcome),
    Parked(Checkpoint),
}

/// When a run of `flow` that first started executing at `started_at` passes
/// its `deadline_ms` (capped by `FLOQ_FLOW_DEADLINE_MAX_MS`, which may have
/// been lowered since the flow was saved); `None` without a deadline. A run
/// resumed later passes its original start, so its deadline does not restart.
pub fn deadline(flow: &CompiledFlow, max: Duration, started_at: DateTime<Utc>) -> Option<tokio::time::Instant> {
    let limit = flow.deadline?.min(max);
    let spent = (Utc::now() - started_at).to_std().unwrap_or_default();
    Some(tokio::time::Instant::now() + limit.saturating_sub(spent))
}

/// The outcome of a run that stopped before its end, with the steps so far.
fn stopped(stop: nodes::Stop, steps: Vec<Step>, audit: Vec<Entry>, started_at: DateTime<Utc>) -> Outcome {
    Outcome {
        status: match stop {
            nodes::Stop::Cancelled => RunStatus::Cancelled,
            nodes::Stop::DeadlineExceeded => RunStatus::Failed,
        },
        output: None,
        error: Some(json!({"code": stop.code(), "message": stop.message()})),
        steps,
        started_at,
        finished_at: Utc::now(),
        audit,
    }
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
            let outcome = execute(flow, RunInput::new(run, input), env).await;
            match outcome.status {
                RunStatus::Succeeded => Ok(outcome.output.unwrap_or(Value::Null)),
                _ => Err(error_message(&outcome)),
            }
        })
    }
}

/// Runs a flow to its end (it cannot park without a journal).
pub async fn execute(flow: &CompiledFlow, run: RunInput<'_>, env: Arc<NodeEnv>) -> Outcome {
    match execute_parking(flow, run, env).await {
        Ended::Finished(outcome) => outcome,
        Ended::Parked(_) => Outcome::failed_early("parked", "a run without a journal cannot park"),
    }
}

pub async fn execute_parking(flow: &CompiledFlow, run: RunInput<'_>, env: Arc<NodeEnv>) -> Ended {
    let mut started_at = Utc::now();
    let n = flow.nodes.len();
    let mut state = vec![State::Pending; n];
    let mut ports: Vec<Option<String>> = vec![None; n];
    let mut outputs: HashMap<String, Value> = HashMap::new();
    let mut steps = Vec::with_capacity(n);
    let mut audit = Vec::with_capacity(n);
    let mut shapes: Vec<Value> = vec![Value::Null; n];
    // JSON bytes of every step output so far, against `run_output_max_bytes`.
    let mut run_bytes = 0usize;
    let mut waits: HashMap<String, Wait> = HashMap::new();
    if let Some(resume) = run.resume {
        started_at = resume.started_at.unwrap_or(started_at);
        restore(
            flow,
            resume.steps,
            &mut state,
            &mut ports,
            &mut outputs,
            &mut steps,
            &mut run_bytes,
        );
        waits = resume.waits.into_iter().map(|w| (w.node_id.clone(), w)).collect();
    }
    let journal = run.journal;
    let park_after = journal.as_ref().filter(|_| run.may_park).map(|_| env.park_after);
    // Steps and audit entries up to these are checkpointed (or were restored).
    let (mut sent, mut audit_sent) = (steps.len(), 0);
    // The node the run parks on once nothing else runs.
    let mut parked: Option<Wait> = None;
    let mut run_ctx = run.run;
    if run_ctx.vars.is_none() && flow.reads_vars {
        match load_vars(&env, run_ctx.company_id.into()).await {
            Ok(vars) => run_ctx.vars = Some(Arc::new(vars)),
            Err(e) => {
                tracing::warn!(error = %e, "reading $vars failed");
                return Ended::Finished(Outcome::failed_early(
                    "vars_unavailable",
                    "the KV values could not be read",
                ));
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

    loop {
        // Start (or skip) every node whose parents are all resolved; skips can cascade. A run told to stop, or about
        // to park, starts nothing more: this is its node boundary.
        let mut changed = parked.is_none() && ctx.stopped().is_none();
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
                let wait = waits.remove(&node.id);
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
                    node_path: format!("{}{}", ctx.path, node.id).into(),
                    wake_at: None,
                };
                let span = tracing::info_span!("node", node.id = %node.id, node.type = node.spec.name,
                    node.path = %node_ctx.node_path, run.id = %ctx.run_id);
                in_flight.push(
                    async move {
                        let started = Utc::now();
                        let clock = Instant::now();
                        let ran = run_node(node, params, node_ctx, wait, park_after).await;
                        (i, ran, started, Utc::now(), clock.elapsed())
                    }
                    .instrument(span),
                );
            }
        }

        // Steps completed short of the mark are checkpointed when the run reaches it.
        let next = match journal.as_ref().filter(|j| sent < steps.len() && !j.past_mark()) {
            Some(j) => tokio::select! {
                next = in_flight.next() => next,
                () = j.marked() => {
                    j.record(steps[sent..].to_vec(), audit[audit_sent..].to_vec()).await;
                    (sent, audit_sent) = (steps.len(), audit.len());
                    continue;
                }
            },
            None => in_flight.next().await,
        };
        let Some((i, ran, started, finished, elapsed)) = next else {
            break;
        };
        let NodeRun {
            result,
            attempts,
            params_shape,
            audit: secret_entries,
            park,
            skipped,
        } = ran;
        if let Some(reason) = skipped {
            state[i] = State::Skipped;
            let node = &flow.nodes[i];
            audit.push(
                Entry::new(ctx.company_id, Actor::system("worker"), "node.execute")
                    .resource("run", ctx.run_id)
                    .outcome(audit::Outcome::Denied)
                    .at(finished)
                    .details(json!({
                        "flow_id": ctx.flow_id,
                        "run_id": ctx.run_id,
                        "node_id": node.id,
                        "node_type": node.spec.name,
                        "status": StepStatus::Skipped,
                        "skipped_by_plugin": reason,
                    })),
            );
            let error = json!({"code": "skipped", "message": reason});
            steps.push(step(
                &flow.nodes[i].id,
                steps.len(),
                StepStatus::Skipped,
                None,
                Some(error),
                Some(started),
                Some(finished),
            ));
            continue;
        }
        if let Some(wait) = park {
            // Its secrets are opened (and audited) again when it goes on.
            parked = Some(wait);
            continue;
        }
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
        let stop = ctx.stopped();
        let status = match (&result, stop) {
            (Ok(_), _) => StepStatus::Succeeded,
            (Err(_), Some(_)) => StepStatus::Cancelled,
            (Err(_), None) => StepStatus::Failed,
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
                let mut done = step(
                    &node.id,
                    steps.len(),
                    StepStatus::Succeeded,
                    Some(value.clone()),
                    None,
                    Some(started),
                    Some(finished),
                );
                done.port = port.clone();
                ports[i] = port;
                steps.push(done);
                outputs.insert(node.id.clone(), value);
                if let Some(journal) = journal.as_ref().filter(|j| j.past_mark()) {
                    journal
                        .record(steps[sent..].to_vec(), audit[audit_sent..].to_vec())
                        .await;
                    (sent, audit_sent) = (steps.len(), audit.len());
                }
            }
            // Interrupted (or failed while the run was stopping): the others in flight still end.
            Err(e) if stop.is_some() => {
                state[i] = State::Stopped;
                steps.push(step(
                    &node.id,
                    steps.len(),
                    StepStatus::Cancelled,
                    None,
                    Some(e.to_json()),
                    Some(started),
                    Some(finished),
                ));
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
                return Ended::Finished(Outcome {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(run_error(&node.id, &e)),
                    steps,
                    started_at,
                    finished_at: Utc::now(),
                    audit,
                });
            }
        }
    }

    if let Some(stop) = ctx.stopped()
        && state.iter().any(|s| matches!(s, State::Pending | State::Stopped))
    {
        return Ended::Finished(stopped(stop, steps, audit, started_at));
    }
    if let (Some(wait), Some(journal)) = (parked, &journal) {
        return Ended::Parked(Checkpoint {
            run_id: journal.run_id(),
            steps: steps.split_off(sent),
            audit: audit.split_off(audit_sent),
            wait: Some(wait),
        });
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
    Ended::Finished(Outcome {
        status: RunStatus::Succeeded,
        output,
        error: None,
        steps,
        started_at,
        finished_at: Utc::now(),
        audit,
    })
}

/// Puts a resumed run's checkpointed steps back: succeeded nodes done with
/// their outputs and ports, skipped ones skipped. A step of a node the flow
/// does not have (never, for a pinned version) ends the restore there.
fn restore(
    flow: &CompiledFlow,
    saved: Vec<Step>,
    state: &mut [State],
    ports: &mut [Option<String>],
    outputs: &mut HashMap<String, Value>,
    steps: &mut Vec<Step>,
    run_bytes: &mut usize,
) {
    let index: HashMap<&str, usize> = flow.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    for s in saved {
        let Some(&i) = index.get(s.node_id.as_str()) else {
            break;
        };
        if s.seq != steps.len() as i32 || state[i] != State::Pending {
            break;
        }
        match s.status {
            StepStatus::Succeeded => {
                let value = s.output.clone().unwrap_or(Value::Null);
                *run_bytes += output_size(&value, usize::MAX).unwrap_or(0);
                state[i] = State::Done;
                ports[i] = s.port.clone();
                outputs.insert(s.node_id.clone(), value);
            }
            StepStatus::Skipped => state[i] = State::Skipped,
            // A failed step ends a run: it is never a checkpoint.
            _ => break,
        }
        steps.push(s);
    }
}

/// How long until `at` (zero once it passed).
fn until(at: DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or_default()
}

fn later(wait: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
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
/// its secrets; or the wait it parks its run on.
struct NodeRun {
    result: NodeResult,
    attempts: u32,
    params_shape: Value,
    audit: Vec<Entry>,
    park: Option<Wait>,
    /// A plugin's `before_node_execute` skipped it, for this reason.
    skipped: Option<String>,
}

/// Evaluates the params, opens the node's secrets, runs it under its timeout
/// and retry policy, and scrubs its secrets from what it produced. With
/// `park_after` (a top-level node of a run that can park), a `delay` or a
/// retry backoff longer than that parks the run instead of waiting here; a
/// node the run was parked on (`wait`) goes on when its wait is over.
async fn run_node(
    node: &CompiledNode,
    params: Params,
    mut ctx: NodeCtx,
    wait: Option<Wait>,
    park_after: Option<Duration>,
) -> NodeRun {
    let failed = |e| NodeRun {
        result: Err(e),
        attempts: 0,
        params_shape: Value::Null,
        audit: vec![],
        park: None,
        skipped: None,
    };
    let park = |wait: Wait| NodeRun {
        result: Err(NodeError::new("parked", "the run parked")),
        attempts: 0,
        params_shape: Value::Null,
        audit: vec![],
        park: Some(wait),
        skipped: None,
    };
    let mut attempt = 1;
    if let Some(w) = wait {
        let left = until(w.wake_at);
        if parks(park_after, &ctx.run, left) {
            return park(w);
        }
        attempt = w.attempt.max(1) as u32;
        if node.spec.kind == NodeKind::DELAY {
            ctx.wake_at = Some(w.wake_at);
        } else {
            // What is left of a retry backoff.
            let waited = async {
                tokio::time::sleep(left).await;
                Ok(())
            };
            if let Err(e) = ctx.run.unless_stopped(waited).await {
                return failed(e);
            }
        }
    }
    let mut params = match params.evaluate(node, &ctx.env).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let plugins = ctx.env.plugins.clone();
    let info = (!plugins.is_empty()).then(|| node_info(node, &ctx));
    if let Some(info) = &info {
        match hooks::before(&plugins, info, &mut params).await {
            Before::Continue => {}
            Before::Skip(reason) => {
                return NodeRun {
                    skipped: Some(reason),
                    ..failed(NodeError::new("skipped", "skipped by a plugin"))
                };
            }
            Before::Fail(f) => return failed(NodeError::new(f.code, f.message)),
        }
    }
    let opened = match vault::open(&mut params, &node.secrets, &node.id, &ctx.run, &ctx.env).await {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    ctx.credential = opened.credential.clone();
    ctx.secret_origins = Arc::new(opened.secret_origins.clone());
    let params_shape = audit::shape(&params);
    if node.spec.kind == NodeKind::DELAY
        && ctx.wake_at.is_none()
        && let Some(ms) = params.get("ms").and_then(Value::as_u64)
        && parks(park_after, &ctx.run, Duration::from_millis(ms))
        && Duration::from_millis(ms) <= ctx.env.delay_max
    {
        return park(Wait {
            node_id: node.id.clone(),
            wake_at: later(Duration::from_millis(ms)),
            attempt: 1,
        });
    }
    ctx.params = params;
    let attempts = node.retry.as_ref().map_or(1, |r| r.attempts.max(1));
    let interruptible = nodes::interruptible(node.spec.kind);
    let run = ctx.run.clone();
    let mut parking = None;
    // The fault tests' node that always panics: any node whose id starts with `panic`.
    #[cfg(feature = "failpoints")]
    if node.id.starts_with("panic") && floq_shared::failpoint::fires("node.panic") {
        panic!("fail point node.panic: node {}", node.id);
    }
    let mut result = loop {
        let fut = node.implementation.run(ctx.clone());
        let fut = async {
            match node.timeout {
                Some(limit) => tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
                    Err(NodeError::new(
                        "node_timeout",
                        format!("the node took longer than {} ms", limit.as_millis()),
                    ))
                }),
                None => fut.await,
            }
        };
        let result = if interruptible {
            run.unless_stopped(fut).await
        } else {
            fut.await
        };
        match (&result, &node.retry) {
            (Err(e), Some(policy)) if attempt < attempts && policy.retries(e.code) && run.stopped().is_none() => {
                let backoff = policy.backoff_ms.saturating_mul(1 << (attempt - 1).min(16));
                let backoff = Duration::from_millis(backoff.min(RetryPolicy::MAX_BACKOFF_MS));
                if parks(park_after, &run, backoff) {
                    parking = Some(Wait {
                        node_id: node.id.clone(),
                        wake_at: later(backoff),
                        attempt: attempt as i32 + 1,
                    });
                    break result;
                }
                let waited = async {
                    tokio::time::sleep(backoff).await;
                    Ok(())
                };
                if let Err(stop) = run.unless_stopped(waited).await {
                    break Err(stop);
                }
                attempt += 1;
            }
            _ => break result,
        }
    };
    // The node's copy of the credential goes now; the vault's copy is zeroized when `opened` drops.
    drop(ctx);
    if let Some(wait) = parking {
        return park(wait);
    }
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
    if let Some(info) = &info {
        result = hooks::after(&plugins, info, result).await;
    }
    NodeRun {
        result,
        attempts: attempt,
        params_shape,
        audit: opened.audit,
        park: None,
        skipped: None,
    }
}

fn node_info(node: &CompiledNode, ctx: &NodeCtx) -> NodeInfo {
    NodeInfo {
        company_id: ctx.run.company_id,
        run_id: ctx.run.run_id,
        flow_id: ctx.run.flow_id,
        node_id: node.id.clone(),
        node_path: ctx.node_path.clone(),
        kind: node.spec.kind,
    }
}

/// Whether a wait this long parks its run (`park_after`: it may park at
/// all). Never past the run's deadline: parked, it could not be interrupted
/// when the deadline comes, so it waits in place where it can be.
fn parks(park_after: Option<Duration>, run: &RunCtx, wait: Duration) -> bool {
    park_after.is_some_and(|p| wait > p) && run.deadline.is_none_or(|d| tokio::time::Instant::now() + wait < d)
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
        port: None,
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
            flows: Arc::new(crate::flow_cache::FlowCache::new(nodes::Implementations::built_in())),
            sandbox: crate::sandbox::Sandbox::new(1, Default::default()),
            keyring,
            delay_max: Duration::from_secs(1),
            park_after: Duration::from_millis(200),
            http_max_timeout: Duration::from_secs(1),
            http_max_response_bytes: 1024,
            template_timeout: Duration::from_secs(1),
            code_timeout: Duration::from_secs(1),
            code_max_timeout: Duration::from_secs(1),
            step_output_max_bytes,
            run_output_max_bytes: 1 << 20,
            runner: Arc::new(Executor),
            oauth: Arc::new(crate::oauth::Tokens::new(
                floq_shared::oauth::Registry::new(&[]),
                Uuid::now_v7(),
            )),
            plugins: Default::default(),
        })
    }

    fn flow(def: Value) -> CompiledFlow {
        let def: FlowDefinition = serde_json::from_value(def).unwrap();
        CompiledFlow::compile(&def, &nodes::Implementations::built_in()).unwrap()
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
            cancel: tokio_util::sync::CancellationToken::new(),
            deadline: None,
            path: "".into(),
        }
    }

    async fn execute_with(flow: &CompiledFlow, input: Value, vars: Option<Value>, env: Arc<NodeEnv>) -> Outcome {
        execute(flow, RunInput::new(run_ctx(vars), &input), env).await
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

    fn waiting_ms(ms: u64) -> CompiledFlow {
        flow(json!({
            "nodes": [
                {"id": "first", "type": "set", "params": {"values": {"x": 1}}},
                {"id": "wait", "type": "delay", "params": {"ms": ms}},
                {"id": "after", "type": "set", "params": {"values": {"y": 2}}}
            ],
            "edges": [{"from": "first", "to": "wait"}, {"from": "wait", "to": "after"}]
        }))
    }

    async fn execute_ctx(flow: &CompiledFlow, run: RunCtx) -> Outcome {
        execute(flow, RunInput::new(run, &json!({})), env(1 << 20).await).await
    }

    #[tokio::test]
    async fn a_run_cancelled_before_it_starts_runs_nothing() {
        let run = run_ctx(None);
        run.cancel.cancel();
        let outcome = execute_ctx(&waiting_ms(10), run).await;
        assert_eq!(outcome.status, RunStatus::Cancelled);
        assert_eq!(outcome.error.as_ref().unwrap()["code"], "cancelled");
        assert!(outcome.steps.is_empty() && outcome.audit.is_empty());
    }

    #[tokio::test]
    async fn a_cancel_interrupts_the_running_delay_and_starts_nothing_after_it() {
        let run = run_ctx(None);
        let token = run.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            token.cancel();
        });
        let outcome = execute_ctx(&waiting_ms(900), run).await;
        assert_eq!(outcome.status, RunStatus::Cancelled, "{:?}", outcome.error);
        assert_eq!(
            statuses(&outcome),
            [("first", StepStatus::Succeeded), ("wait", StepStatus::Cancelled)]
        );
        let interrupted = outcome.steps.last().unwrap();
        assert_eq!(
            interrupted.error.as_ref().unwrap()["code"],
            "cancelled",
            "interrupted, not run out"
        );
        assert_eq!(outcome.audit.len(), 2, "the interrupted node is audited too");
    }

    #[tokio::test]
    async fn a_deadline_interrupts_a_code_loop_and_fails_the_run() {
        // Long enough for the node to start on a loaded machine (at 100 ms CI once saw the deadline pass first),
        // short of the script's own 1 s limit.
        let flow = flow(json!({
            "deadline_ms": 500,
            "nodes": [{"id": "spin", "type": "code", "params": {"code": "while (true) {}"}}]
        }));
        assert_eq!(flow.deadline, Some(Duration::from_millis(500)));
        let mut run = run_ctx(None);
        run.deadline = deadline(&flow, Duration::from_secs(3600), Utc::now());
        let outcome = execute_ctx(&flow, run).await;
        assert_eq!(outcome.status, RunStatus::Failed);
        assert_eq!(outcome.error.as_ref().unwrap()["code"], "deadline_exceeded");
        assert_eq!(statuses(&outcome), [("spin", StepStatus::Cancelled)]);
        // The script's own 1 s limit would say `sandbox_timeout`: the deadline came first.
        assert_eq!(outcome.steps[0].error.as_ref().unwrap()["code"], "deadline_exceeded");
    }

    #[test]
    fn a_deadline_counts_from_the_first_start_and_is_capped() {
        let flow = flow(json!({"deadline_ms": 60_000, "nodes": [{"id": "a", "type": "merge"}]}));
        let now = tokio::time::Instant::now();
        let fresh = deadline(&flow, Duration::from_secs(3600), Utc::now()).unwrap();
        assert!(fresh >= now + Duration::from_secs(59));
        let capped = deadline(&flow, Duration::from_secs(1), Utc::now()).unwrap();
        assert!(capped <= tokio::time::Instant::now() + Duration::from_secs(1));
        let resumed = deadline(
            &flow,
            Duration::from_secs(3600),
            Utc::now() - chrono::Duration::seconds(120),
        )
        .unwrap();
        assert!(resumed <= tokio::time::Instant::now(), "already past");
        let none = flow_without_deadline();
        assert_eq!(deadline(&none, Duration::from_secs(3600), Utc::now()), None);
    }

    fn flow_without_deadline() -> CompiledFlow {
        flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
    }

    #[tokio::test]
    async fn a_cancel_stops_a_loops_bodies_at_their_own_boundaries() {
        let flow = flow(json!({
            "nodes": [{"id": "each", "type": "loop", "params": {
                "items": [1, 2, 3],
                "concurrency": 1,
                "flow": {"nodes": [{"id": "wait", "type": "delay", "params": {"ms": 900}}]}
            }}]
        }));
        let run = run_ctx(None);
        let token = run.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            token.cancel();
        });
        let outcome = execute_ctx(&flow, run).await;
        assert_eq!(outcome.status, RunStatus::Cancelled, "{:?}", outcome.error);
        assert_eq!(statuses(&outcome), [("each", StepStatus::Cancelled)]);
    }

    fn done(node_id: &str, seq: i32, output: Value, port: Option<&str>) -> Step {
        let mut s = step(
            node_id,
            seq as usize,
            StepStatus::Succeeded,
            Some(output),
            None,
            None,
            None,
        );
        s.port = port.map(str::to_string);
        s
    }

    #[tokio::test]
    async fn a_resumed_run_keeps_its_checkpointed_nodes_and_runs_only_the_rest() {
        let resume = Resume {
            steps: vec![
                done("in", 0, json!({"ok": true, "name": "Restored"}), None),
                done("check", 1, json!({"result": true}), Some("true")),
            ],
            waits: vec![],
            started_at: Some(Utc::now() - chrono::Duration::hours(1)),
        };
        let started = resume.started_at;
        let input = json!({"ok": false, "name": "Ada"});
        let run = RunInput {
            resume: Some(resume),
            ..RunInput::new(run_ctx(None), &input)
        };
        let outcome = execute(&branching(), run, env(1 << 20).await).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
        // The checkpointed `in` and `check` are not run again: `yes` sees their outputs and port, not the input's.
        assert_eq!(outcome.output, Some(json!({"hello": "hi Restored"})));
        assert_eq!(outcome.started_at, started.unwrap(), "the run keeps its first start");
        let seqs: Vec<(&str, i32, StepStatus)> = outcome
            .steps
            .iter()
            .map(|s| (s.node_id.as_str(), s.seq, s.status))
            .collect();
        assert_eq!(seqs.len(), 5);
        assert_eq!(
            &seqs[..2],
            [("in", 0, StepStatus::Succeeded), ("check", 1, StepStatus::Succeeded)]
        );
        let mut rest: Vec<_> = seqs[2..].to_vec();
        rest.sort_by_key(|(id, _, _)| *id);
        assert_eq!(
            rest.iter().map(|(id, _, st)| (*id, *st)).collect::<Vec<_>>(),
            [
                ("after_no", StepStatus::Skipped),
                ("no", StepStatus::Skipped),
                ("yes", StepStatus::Succeeded)
            ]
        );
        assert_eq!(
            outcome.steps.iter().map(|s| s.seq).collect::<Vec<_>>(),
            (0..5).collect::<Vec<_>>(),
            "numbered on from the checkpoint"
        );
        let ran: Vec<&Value> = outcome.audit.iter().map(|e| &e.details["node_id"]).collect();
        assert_eq!(ran, [&json!("yes")], "node.execute only for what ran now");
    }

    #[tokio::test]
    async fn past_the_mark_every_completed_step_is_checkpointed_in_order_with_its_entry() {
        let (writer, mut rx) = crate::checkpoints::CheckpointWriter::channel();
        let ctx = run_ctx(None);
        let journal = writer.journal(ctx.company_id.into(), ctx.run_id.into());
        let input = json!({"ok": true, "name": "Ada"});
        let fresh = execute(
            &branching(),
            RunInput {
                journal: Some(journal.clone()),
                ..RunInput::new(run_ctx(None), &input)
            },
            env(1 << 20).await,
        )
        .await;
        assert_eq!(fresh.status, RunStatus::Succeeded);
        assert!(rx.try_recv().is_err(), "a run short of the mark checkpoints nothing");

        journal.mark();
        let outcome = execute(
            &branching(),
            RunInput {
                journal: Some(journal),
                ..RunInput::new(ctx, &input)
            },
            env(1 << 20).await,
        )
        .await;
        assert_eq!(outcome.status, RunStatus::Succeeded);
        drop(writer);
        let mut steps = Vec::new();
        let mut entries = Vec::new();
        while let Some(cmd) = rx.recv().await {
            let c = cmd.checkpoint();
            assert!(c.wait.is_none());
            steps.extend(c.steps.iter().map(|s| (s.node_id.clone(), s.seq, s.port.clone())));
            entries.extend(c.audit.iter().map(|e| e.details["node_id"].clone()));
        }
        let all: Vec<_> = outcome
            .steps
            .iter()
            .map(|s| (s.node_id.clone(), s.seq, s.port.clone()))
            .collect();
        assert!(all.starts_with(&steps) && steps.len() >= 3, "{steps:?} of {all:?}");
        assert!(
            steps.contains(&("check".into(), 1, Some("true".into()))),
            "ports are kept"
        );
        assert_eq!(
            entries.len(),
            steps.iter().filter(|s| s.0 != "no" && s.0 != "after_no").count()
        );
    }

    fn waiting() -> CompiledFlow {
        flow(json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"x": 1}}},
                {"id": "wait", "type": "delay", "params": {"ms": 900}},
                {"id": "b", "type": "set", "params": {"values": "{{ $node.a.output.x }}"}}
            ],
            "edges": [{"from": "a", "to": "wait"}, {"from": "wait", "to": "b"}]
        }))
    }

    #[tokio::test]
    async fn a_long_delay_parks_the_run_and_the_resumed_run_completes_it() {
        let (writer, _rx) = crate::checkpoints::CheckpointWriter::channel();
        let ctx = run_ctx(None);
        let journal = writer.journal(ctx.company_id.into(), ctx.run_id.into());
        let input = json!({});
        let before = Utc::now();
        let ended = execute_parking(
            &waiting(),
            RunInput {
                journal: Some(journal.clone()),
                ..RunInput::new(ctx.clone(), &input)
            },
            env(1 << 20).await,
        )
        .await;
        let Ended::Parked(checkpoint) = ended else {
            panic!("a 900 ms delay past a 200 ms park_after parks: {ended:?}");
        };
        let wait = checkpoint.wait.clone().unwrap();
        assert_eq!((wait.node_id.as_str(), wait.attempt), ("wait", 1));
        assert!(wait.wake_at >= before + chrono::Duration::milliseconds(900));
        assert_eq!(
            checkpoint.steps.iter().map(|s| s.node_id.as_str()).collect::<Vec<_>>(),
            ["a"],
            "parking checkpoints what ran before, even short of the mark"
        );
        assert_eq!(checkpoint.audit.len(), 1);

        // Woken with its wait over: the delay completes at once, `a` does not run again.
        let resume = Resume {
            steps: checkpoint.steps,
            waits: vec![Wait {
                wake_at: Utc::now() - chrono::Duration::milliseconds(1),
                ..wait.clone()
            }],
            started_at: None,
        };
        let clock = Instant::now();
        let outcome = execute(
            &waiting(),
            RunInput {
                resume: Some(resume),
                journal: Some(journal.clone()),
                ..RunInput::new(ctx.clone(), &input)
            },
            env(1 << 20).await,
        )
        .await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
        assert!(
            clock.elapsed() < Duration::from_millis(900),
            "the wait is not served twice"
        );
        assert_eq!(outcome.output, Some(json!(1)));
        assert_eq!(outcome.steps[1].output, Some(json!({"waited_ms": 900})));
        assert_eq!(
            outcome
                .audit
                .iter()
                .map(|e| e.details["node_id"].clone())
                .collect::<Vec<_>>(),
            [json!("wait"), json!("b")]
        );

        // Woken early (a resume before its time): it parks again on the same wake time.
        let early = Resume {
            steps: vec![done("a", 0, json!({"x": 1}), None)],
            waits: vec![Wait {
                wake_at: Utc::now() + chrono::Duration::seconds(5),
                ..wait
            }],
            started_at: None,
        };
        let again = execute_parking(
            &waiting(),
            RunInput {
                resume: Some(early),
                journal: Some(journal),
                ..RunInput::new(ctx, &input)
            },
            env(1 << 20).await,
        )
        .await;
        let Ended::Parked(again) = again else {
            panic!("parks again: {again:?}");
        };
        assert!(again.steps.is_empty(), "nothing new to checkpoint");
        assert!(again.wait.unwrap().wake_at > Utc::now() + chrono::Duration::seconds(4));
    }

    #[tokio::test]
    async fn without_a_journal_a_long_delay_just_waits() {
        let outcome = execute_with(&waiting(), json!({}), None, env(1 << 20).await).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    }

    #[tokio::test]
    async fn a_long_retry_backoff_parks_with_the_next_attempt() {
        let flow = flow(json!({
            "nodes": [{"id": "bad", "type": "switch", "params": {"value": 1, "cases": "nope"},
                       "retry": {"attempts": 3, "backoff_ms": 1000}}]
        }));
        let (writer, _rx) = crate::checkpoints::CheckpointWriter::channel();
        let ctx = run_ctx(None);
        let journal = writer.journal(ctx.company_id.into(), ctx.run_id.into());
        let input = json!({});
        let ended = execute_parking(
            &flow,
            RunInput {
                journal: Some(journal.clone()),
                ..RunInput::new(ctx.clone(), &input)
            },
            env(1 << 20).await,
        )
        .await;
        let Ended::Parked(checkpoint) = ended else {
            panic!("a 1 s backoff past a 200 ms park_after parks: {ended:?}");
        };
        let wait = checkpoint.wait.unwrap();
        assert_eq!((wait.node_id.as_str(), wait.attempt), ("bad", 2));
        // Resumed at attempt 2 with its backoff over: the next backoff (2 s) parks again at attempt 3.
        let resume = Resume {
            waits: vec![Wait {
                wake_at: Utc::now(),
                ..wait
            }],
            ..Resume::default()
        };
        let ended = execute_parking(
            &flow,
            RunInput {
                resume: Some(resume),
                journal: Some(journal.clone()),
                ..RunInput::new(ctx.clone(), &input)
            },
            env(1 << 20).await,
        )
        .await;
        let Ended::Parked(checkpoint) = ended else {
            panic!("parks again: {ended:?}");
        };
        let wait = checkpoint.wait.unwrap();
        assert_eq!(wait.attempt, 3);
        let resume = Resume {
            waits: vec![Wait {
                wake_at: Utc::now(),
                ..wait
            }],
            ..Resume::default()
        };
        let outcome = execute(
            &flow,
            RunInput {
                resume: Some(resume),
                journal: Some(journal),
                ..RunInput::new(ctx, &input)
            },
            env(1 << 20).await,
        )
        .await;
        assert_eq!(outcome.status, RunStatus::Failed, "the last attempt fails the run");
        assert_eq!(outcome.audit.last().unwrap().details["attempts"], 3);
    }

    #[tokio::test]
    async fn steps_completed_short_of_the_mark_are_checkpointed_when_the_run_reaches_it() {
        let flow = flow(json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"x": 1}}},
                {"id": "wait", "type": "delay", "params": {"ms": 150}}
            ],
            "edges": [{"from": "a", "to": "wait"}]
        }));
        let (writer, mut rx) = crate::checkpoints::CheckpointWriter::channel();
        let ctx = run_ctx(None);
        let journal = writer.journal(ctx.company_id.into(), ctx.run_id.into());
        let marker = journal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            marker.mark();
        });
        let input = json!({});
        let run = RunInput {
            journal: Some(journal),
            ..RunInput::new(ctx, &input)
        };
        let outcome = execute(&flow, run, env(1 << 20).await).await;
        assert_eq!(outcome.status, RunStatus::Succeeded);
        let first = rx.recv().await.unwrap();
        let at_mark: Vec<&str> = first.checkpoint().steps.iter().map(|s| s.node_id.as_str()).collect();
        assert_eq!(at_mark, ["a"], "written at the mark, not when the delay ends");
        let then: Vec<String> = rx
            .recv()
            .await
            .unwrap()
            .checkpoint()
            .steps
            .iter()
            .map(|s| s.node_id.clone())
            .collect();
        assert_eq!(then, ["wait"]);
    }
}
