//! Fault tests (issue 15): api, worker and scheduler as processes against a
//! private PostgreSQL (and, where the broker is the fault, a private RabbitMQ),
//! a stream of runs whose flows call a counting server, one fault in the
//! middle of it, and an exact accounting at the end (`tests/src/accounting.rs`)
//! printed as one `accounting: …` line (`-- --nocapture` shows it).
//!
//! Each test has a short version that CI runs and a full one behind
//! `#[ignore]` for `deploy/local/test.sh --slow`. The tests of this binary
//! run one at a time (`serial`): each boots a whole deployment, and on two
//! shared cores parallel ones would only slow each other down.

mod api_crash;
mod broker;
mod cancel;
mod cluster;
mod database;
mod failover;
mod oauth_refresh;
mod poison;
mod sigterm;
mod worker_kill;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

use floq_tests::counting::CountingServer;
use floq_tests::stack::{Stack, StackOptions};

/// One fault test at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub async fn stack(options: StackOptions) -> Stack {
    let _ = floq_tests::process::NODE_BIN.set(env!("CARGO_BIN_EXE_floq-node").into());
    Stack::start(options).await
}

/// The stream's flow: call the counting server, wait `wait_ms`, then a cheap node.
/// `keyed`: the call carries its idempotency key (H3's `idempotency_header`).
pub fn call_then_wait(server: &CountingServer, wait_ms: u64, keyed: bool) -> Value {
    let mut call = json!({"method": "POST", "url": server.hit_url()});
    if keyed {
        call["idempotency_header"] = json!("Idempotency-Key");
    }
    json!({
        "nodes": [{"id": "call", "type": "http_request", "params": call},
                  {"id": "wait", "type": "delay", "params": {"ms": wait_ms}},
                  {"id": "done", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}}],
        "edges": [{"from": "call", "to": "wait"}, {"from": "wait", "to": "done"}]
    })
}

/// What a stream of run requests got back.
#[derive(Default, Debug)]
pub struct Streamed {
    pub accepted: Vec<Uuid>,
    /// Answers other than `202`: the status (none when the connection failed) and body.
    pub refused: Vec<(Option<StatusCode>, Value)>,
}

impl Streamed {
    /// Every refusal is a `503` in the structured error shape (never a `500`,
    /// never a half answer); connection failures are allowed only when `api_may_die`.
    #[track_caller]
    pub fn assert_refusals_structured(&self, api_may_die: bool) {
        for (status, body) in &self.refused {
            match status {
                None => assert!(api_may_die, "a request failed without an answer: {body}"),
                Some(status) => {
                    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                    let error = &body["error"];
                    for field in ["code", "message", "request_id"] {
                        assert!(error[field].is_string(), "unstructured error: {body}");
                    }
                    assert!(error.get("details").is_some(), "unstructured error: {body}");
                }
            }
        }
    }

    pub fn summary(&self) -> String {
        let mut by_status = std::collections::BTreeMap::<String, usize>::new();
        for (status, _) in &self.refused {
            *by_status
                .entry(status.map_or("no answer".into(), |s| s.as_u16().to_string()))
                .or_default() += 1;
        }
        format!("stream: accepted={} refused={by_status:?}", self.accepted.len())
    }
}

/// Starts `n` runs of `flow`, `lanes` requests at a time, each lane pausing
/// `pace` between its requests (so the stream spans the fault). Returns the
/// task and a count of requests answered so far.
pub fn stream(
    stack: &Stack,
    flow: &str,
    n: usize,
    lanes: usize,
    pace: Duration,
) -> (JoinHandle<Streamed>, Arc<AtomicUsize>) {
    let done = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/api/v1/flows/{flow}/runs", stack.base);
    let (client, key) = (stack.client.clone(), stack.admin.api_key.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let counted = done.clone();
    let handle = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..lanes {
            let (client, key, url, next, done) =
                (client.clone(), key.clone(), url.clone(), next.clone(), counted.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Streamed::default();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return out;
                    }
                    let sent = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({"input": {"n": i}}))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) => {
                            let status = resp.status();
                            let body: Value = resp.json().await.unwrap_or(Value::Null);
                            match body["run_id"].as_str().and_then(|id| id.parse().ok()) {
                                Some(id) if status == StatusCode::ACCEPTED => out.accepted.push(id),
                                _ => out.refused.push((Some(status), body)),
                            }
                        }
                        Err(e) => {
                            out.refused.push((None, Value::String(e.to_string())));
                            // The API is down (a crash, a restart): keep the stream going across it.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pace).await;
                }
            }));
        }
        let mut all = Streamed::default();
        for t in tasks {
            let part = t.await.expect("stream lane");
            all.accepted.extend(part.accepted);
            all.refused.extend(part.refused);
        }
        all
    });
    (handle, done)
}

/// The stack's api, worker and scheduler are all still up (nobody restarted them).
pub fn assert_services_running(stack: &mut Stack) {
    for service in [&mut stack.api, &mut stack.worker, &mut stack.scheduler] {
        let service = service.as_mut().expect("running");
        assert!(
            service.has_exited().is_none(),
            "{:?} exited:\n{}",
            service.kind,
            service.log_tail()
        );
    }
}

/// Waits (bounded) until `counter` reaches `n`.
pub async fn wait_count(counter: &AtomicUsize, n: usize, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    while counter.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream stalled before {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages in one of the stack's queues (passive declare).
pub async fn queue_depth(stack: &Stack, queue: &str) -> u32 {
    let conn = floq_shared::queue::connect(&stack.amqp_url).await.expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(0, "depth read".into()).await;
    q.message_count()
}

/// Every succeeded run of the three-node stream flow has exactly its three steps: no partial outcome.
pub async fn assert_no_partial_outcomes(stack: &Stack, steps: i64) {
    let partial: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs r
          WHERE r.status = 'succeeded'
            AND (SELECT count(*) FROM run_steps s WHERE s.run_id = r.id) <> $1",
    )
    .bind(steps)
    .fetch_one(&stack.pool)
    .await
    .expect("counting steps");
    assert_eq!(partial, 0, "succeeded runs with a partial set of steps");
}
