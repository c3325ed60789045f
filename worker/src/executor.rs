//! The graph walker: runs nodes as soon as their parents are resolved
//! (independent branches concurrently), routes branch ports, skips what a
//! branch did not take, and stops at the first failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::flow_cache::CompiledFlow;
use crate::nodes::{self, NodeEnv, NodeError, NodeOutput};
use floq_shared::audit::{self, Actor, Entry};
use floq_shared::flow::EvalScope;
use floq_shared::telemetry::METRICS;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunStatus {
    Succeeded,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }
}

#[derive(Debug)]
pub struct Step {
    pub node_id: String,
    pub seq: i32,
    pub status: &'static str,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct Outcome {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub steps: Vec<Step>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// One `node.execute` entry per node that ran, written with the outcome.
    pub audit: Vec<Entry>,
}

impl Outcome {
    /// A run that failed before any node ran (e.g. its flow version is unreadable).
    pub fn failed_early(code: &str, message: &str) -> Self {
        let now = Utc::now();
        Self {
            status: RunStatus::Failed,
            output: None,
            error: Some(json!({"code": code, "message": message})),
            steps: vec![],
            started_at: now,
            finished_at: now,
            audit: vec![],
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Pending,
    Running,
    Done,
    Skipped,
}

pub struct RunInput<'a> {
    pub run_id: Uuid,
    pub company_id: Uuid,
    pub flow_id: Uuid,
    pub trigger: &'a str,
    pub attempt: i32,
    pub input: &'a Value,
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
    let run_meta = json!({
        "id": run.run_id, "flow_id": run.flow_id, "trigger": run.trigger, "attempt": run.attempt,
    });
    let vars = Value::Object(Map::new());
    let mut in_flight = FuturesUnordered::new();

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
                    steps.push(step(&flow.nodes[i].id, steps.len(), "skipped", None, None, None, None));
                    continue;
                }
                let node = &flow.nodes[i];
                let scope = EvalScope {
                    input: run.input,
                    nodes: &outputs,
                    vars: &vars,
                    run: &run_meta,
                };
                let params = node.params.eval(&scope);
                let inputs: Map<String, Value> = active
                    .iter()
                    .map(|p| {
                        let id = &flow.nodes[*p].id;
                        (id.clone(), outputs.get(id).cloned().unwrap_or(Value::Null))
                    })
                    .collect();
                state[i] = State::Running;
                shapes[i] =
                    json!({"params": audit::shape(&params), "input": audit::shape(&Value::Object(inputs.clone()))});
                let fut = nodes::implementation(node.kind).run(params, Value::Object(inputs), env.clone());
                in_flight.push(async move {
                    let started = Utc::now();
                    let clock = Instant::now();
                    let result = fut.await;
                    (i, result, started, Utc::now(), clock.elapsed())
                });
            }
        }

        let Some((i, result, started, finished, elapsed)) = in_flight.next().await else {
            break;
        };
        let node = &flow.nodes[i];
        let status = if result.is_ok() { "succeeded" } else { "failed" };
        METRICS
            .node_duration
            .with_label_values(&[node.kind.name(), status])
            .observe(elapsed.as_secs_f64());
        audit.push(
            Entry::new(run.company_id, Actor::system("worker"), "node.execute")
                .resource("run", run.run_id)
                .outcome(if result.is_ok() {
                    audit::Outcome::Success
                } else {
                    audit::Outcome::Failure
                })
                .at(finished)
                .details(json!({
                    "flow_id": run.flow_id,
                    "run_id": run.run_id,
                    "node_id": node.id,
                    "node_type": node.kind.name(),
                    "status": status,
                    "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                    "input": std::mem::take(&mut shapes[i]),
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
                    "succeeded",
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
                    "failed",
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

fn run_error(node_id: &str, e: &NodeError) -> Value {
    json!({"node": node_id, "code": e.code, "message": format!("node `{node_id}` failed: {}", e.message)})
}

fn step(
    node_id: &str,
    seq: usize,
    status: &'static str,
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
