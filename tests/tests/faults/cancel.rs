//! Fault 6: cancel in each phase (`POST /api/v1/runs/{id}/cancel`, H1): a
//! queued run never starts; a run in a `delay`, a `code` loop or waiting on
//! an HTTP answer is interrupted; a finished run answers `409 run_finished`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use floq_tests::accounting::{self, Rule};
use floq_tests::counting::CountingServer;
use floq_tests::process::Kind;
use floq_tests::stack::{Stack, StackOptions};

use crate::{serial, stack};

async fn run_status(stack: &Stack, run: Uuid) -> Value {
    let (status, body) = stack.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Waits (bounded) until `done(run)` holds.
async fn wait_until(stack: &Stack, run: Uuid, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = run_status(stack, run).await;
        if done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "run {run} never {what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cancel(stack: &Stack, run: Uuid) -> (StatusCode, Value) {
    stack.post(&format!("/api/v1/runs/{run}/cancel"), json!({})).await
}

fn single(node: Value) -> Value {
    json!({"nodes": [node, {"id": "after", "type": "set", "params": {"values": {"x": 1}}}],
           "edges": [{"from": node["id"], "to": "after"}]})
}

#[tokio::test]
async fn a_run_cancelled_in_each_phase_ends_cancelled_and_its_node_is_interrupted() {
    let _serial = serial().await;
    let mut stack = stack(StackOptions::default()).await;
    let server = CountingServer::start().await;
    let mut accepted = Vec::new();

    // Queued: no worker takes it before the cancel; it never starts afterwards.
    stack.worker.take().expect("worker").kill9().await;
    let calls_once = stack
        .deployed_flow(json!({"nodes": [{"id": "call", "type": "http_request",
                                         "params": {"method": "POST", "url": server.hit_url()}}]}))
        .await;
    let queued = stack.start_run(&calls_once, json!({})).await;
    accepted.push(queued);
    let (status, body) = cancel(&stack, queued).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled", "a queued run is cancelled at once: {body}");
    stack.worker = Some(stack.spawn(Kind::Worker, &[]).await);

    // Running a delay, a code loop, waiting on HTTP: each is interrupted where it is.
    let delay = stack
        .deployed_flow(single(
            json!({"id": "wait", "type": "delay", "params": {"ms": 120_000}}),
        ))
        .await;
    let code = stack
        .deployed_flow(single(json!({"id": "spin", "type": "code",
                                     "params": {"code": "while (true) {}", "timeout_ms": 60_000}})))
        .await;
    let slow_url = format!("{}/hit?run={{{{ $run.id }}}}&delay_ms=120000", server.base);
    let http = stack
        .deployed_flow(single(json!({"id": "call", "type": "http_request",
                                     "params": {"method": "POST", "url": slow_url, "timeout_ms": 30_000}})))
        .await;
    for (flow, node) in [(&delay, "wait"), (&code, "spin"), (&http, "call")] {
        let run = stack.start_run(flow, json!({})).await;
        accepted.push(run);
        wait_until(&stack, run, "started", |r| r["status"] == "running").await;
        if node == "call" {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while server.counter.waiting() == 0 {
                assert!(tokio::time::Instant::now() < deadline, "the HTTP call never arrived");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (status, body) = cancel(&stack, run).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert!(body["cancel_requested_at"].is_string(), "{body}");
        let done = wait_until(&stack, run, "ended", |r| {
            r["status"] != "running" && r["status"] != "queued"
        })
        .await;
        assert_eq!(done["status"], "cancelled", "{done}");
        let step = done["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["node_id"] == node))
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(step["status"], "cancelled", "{node} is shown cancelled: {done}");
        assert!(
            !done["steps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["node_id"] == "after" && s["status"] == "succeeded"),
            "nothing ran after the cancel: {done}"
        );
    }

    // Finished: nothing to cancel.
    let finished = stack.start_run(&calls_once, json!({})).await;
    accepted.push(finished);
    wait_until(&stack, finished, "finished", |r| r["status"] == "succeeded").await;
    let (status, body) = cancel(&stack, finished).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "run_finished", "{body}");

    let acc = accounting::settle(
        &stack.pool,
        &accepted,
        &server.counter,
        &Rule::Never,
        Duration::from_secs(60),
    )
    .await;
    acc.assert_exact();
    assert_eq!((acc.cancelled, acc.succeeded), (4, 1), "{}", acc.line());
    assert!(
        server.counter.for_run(&queued.to_string()).is_empty(),
        "the cancelled queued run never called"
    );
}
