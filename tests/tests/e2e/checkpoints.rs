//! Checkpoints, resume, idempotency keys, parked delays and sub-flow
//! pinning (issue #15): a run past the running mark that loses its worker
//! goes on after its checkpointed nodes, so a remote API counting calls by
//! the idempotency key sees the first call once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use floq_tests::{Options, TestApp};

type Calls = Arc<Mutex<HashMap<String, usize>>>;

/// A server counting calls to `{base}/hit` by their `Idempotency-Key`
/// header; the first call of a key to `{base}/slow` takes 1.5 s.
async fn counting_server() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let count = |calls: Calls, headers: &HeaderMap| {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        let mut calls = calls.lock().unwrap();
        let n = calls.entry(key).or_default();
        *n += 1;
        *n
    };
    let (hit, slow) = (calls.clone(), calls.clone());
    let base = crate::runs::serve(
        axum::Router::new()
            .route(
                "/hit",
                axum::routing::post(move |headers: HeaderMap| {
                    count(hit.clone(), &headers);
                    async { "counted" }
                }),
            )
            .route(
                "/slow",
                axum::routing::post(move |headers: HeaderMap| {
                    let first = count(slow.clone(), &headers) == 1;
                    async move {
                        if first {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                        }
                        "counted"
                    }
                }),
            ),
    )
    .await;
    (base, calls)
}

fn call(id: &str, base: &str) -> Value {
    json!({"id": id, "type": "http_request",
           "params": {"method": "POST", "url": format!("{base}/hit"), "idempotency_header": "Idempotency-Key"}})
}

/// first call → delay → second call.
fn call_wait_call(base: &str, ms: u64) -> Value {
    json!({
        "nodes": [call("first", base), {"id": "wait", "type": "delay", "params": {"ms": ms}}, call("second", base)],
        "edges": [{"from": "first", "to": "wait"}, {"from": "wait", "to": "second"}]
    })
}

fn seqs(run: &Value) -> Vec<(String, i64, String)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s["node_id"].as_str().unwrap().to_string(),
                i as i64,
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn stored_seqs(app: &TestApp, run_id: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT seq FROM run_steps WHERE run_id = $1::uuid ORDER BY seq")
        .bind(run_id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn node_entries(app: &TestApp, run_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT details->>'node_id' FROM audit_log WHERE action = 'node.execute' AND details->>'run_id' = $1
          ORDER BY 1",
    )
    .bind(run_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Polls `sql` (one bound run id, a boolean answer) until it holds, for at most 20 s.
async fn until(app: &TestApp, sql: &'static str, run_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !sqlx::query_scalar::<_, bool>(sql)
        .bind(run_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {sql}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_run_whose_worker_dies_after_a_checkpoint_resumes_and_repeats_no_checkpointed_call() {
    let mut app = TestApp::spawn_configured(Options::default(), |c| {
        c.running_mark_after = Duration::from_millis(100);
        c.checkpoint_flush = Duration::from_millis(50);
        // The dead worker's lease lapses soon, so the redelivered copy (or the reaper) takes the run over.
        c.worker_lease = Duration::from_millis(1000);
    })
    .await;
    app.start_scheduler().await;
    let (base, calls) = counting_server().await;
    let flow = app.deployed_flow(call_wait_call(&base, 2500)).await;
    let run_id = app.start_run(&flow, json!({})).await;

    // Past the mark, the first call's step is checkpointed while the run waits.
    until(
        &app,
        "SELECT EXISTS (SELECT 1 FROM run_steps WHERE run_id = $1::uuid AND node_id = 'first')",
        &run_id,
    )
    .await;
    let started: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT started_at FROM runs WHERE id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(started.is_some(), "a run past the mark shows as running");
    app.worker.take().unwrap().abort();
    app.start_worker().await;

    let run = app.wait_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        seqs(&run).into_iter().map(|(n, _, s)| (n, s)).collect::<Vec<_>>(),
        [("first", "succeeded"), ("wait", "succeeded"), ("second", "succeeded")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(stored_seqs(&app, &run_id).await, [0, 1, 2]);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        HashMap::from([(format!("{run_id}:first"), 1), (format!("{run_id}:second"), 1)]),
        "the checkpointed first call is not made again"
    );
    let finished_started: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT started_at FROM runs WHERE id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(finished_started, started, "the resumed run keeps its first start");
    assert_eq!(
        node_entries(&app, &run_id).await,
        ["first", "second", "wait"],
        "one entry per node"
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_idempotency_key_is_the_same_for_every_attempt_and_distinct_per_loop_item() {
    let app = TestApp::spawn().await;
    let (base, calls) = counting_server().await;
    let run = app
        .run_flow(
            json!({"nodes": [
                {"id": "each", "type": "loop", "params": {"items": "{{ $input.items }}", "concurrency": 1, "flow": {
                    "nodes": [{"id": "call", "type": "http_request",
                               "params": {"method": "POST", "url": format!("{base}/hit"), "idempotency_header": "Idempotency-Key"}}]}}},
                {"id": "retried", "type": "http_request", "timeout_ms": 300,
                 "retry": {"attempts": 2, "backoff_ms": 10},
                 "params": {"method": "POST", "url": format!("{base}/slow"), "idempotency_header": "Idempotency-Key"}}
            ], "edges": [{"from": "each", "to": "retried"}]}),
            json!({"items": [1, 2, 3]}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = run["id"].as_str().unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        HashMap::from([
            (format!("{id}:each[0]/call"), 1),
            (format!("{id}:each[1]/call"), 1),
            (format!("{id}:each[2]/call"), 1),
            (format!("{id}:retried"), 2),
        ]),
        "one key per loop item; a retry sends its node's key again"
    );
    app.teardown().await;
}

#[tokio::test]
async fn an_invalid_idempotency_header_is_refused_naming_the_param() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let (status, body) = app
        .post(
            "/api/v1/flows",
            &app.admin.api_key,
            json!({"name": "bad", "definition": {"nodes": [{"id": "h", "type": "http_request",
                "params": {"method": "GET", "url": "http://x", "idempotency_header": "Bad Header:"}}]}}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("idempotency_header"), "{body}");
    app.teardown().await;
}

#[tokio::test]
async fn a_parked_delay_frees_its_prefetch_slot_and_completes_later_without_repeating() {
    let app = TestApp::spawn_configured(Options::default(), |c| {
        c.worker_prefetch = 1;
        c.park_after = Duration::from_millis(300);
    })
    .await;
    let (base, calls) = counting_server().await;
    let parking = app.deployed_flow(call_wait_call(&base, 2000)).await;
    let quick = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"ok": true}}}]}))
        .await;
    let parked = app.start_run(&parking, json!({})).await;
    until(
        &app,
        "SELECT EXISTS (SELECT 1 FROM run_waits WHERE run_id = $1::uuid AND node_id = 'wait')",
        &parked,
    )
    .await;

    // The one prefetch slot is free: another run finishes while the first waits.
    let other = app.wait_run(&app.start_run(&quick, json!({})).await).await;
    assert_eq!(other["status"], "succeeded");
    let (_, first) = app.get(&format!("/api/v1/runs/{parked}"), &app.admin.api_key).await;
    assert_eq!(
        first["status"], "running",
        "still parked when the other run finished: {first}"
    );

    let run = app.wait_run(&parked).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][1]["output"], json!({"waited_ms": 2000}));
    assert_eq!(stored_seqs(&app, &parked).await, [0, 1, 2]);
    assert_eq!(node_entries(&app, &parked).await, ["first", "second", "wait"]);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        HashMap::from([(format!("{parked}:first"), 1), (format!("{parked}:second"), 1)])
    );
    // Parking acked the message rather than returning it: nothing was dead-lettered.
    assert_eq!(
        app.queue_depth(&format!("{}.runs.dead", app.config.queue_prefix)).await,
        0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_sub_flow_runs_the_version_deployed_when_its_run_was_accepted() {
    let app = TestApp::spawn().await;
    let key = &app.admin.api_key;
    let sub = app
        .deployed_flow(json!({"nodes": [{"id": "v", "type": "set", "params": {"values": {"v": 1}}}]}))
        .await;
    let main = app
        .deployed_flow(json!({
            "nodes": [{"id": "wait", "type": "delay", "params": {"ms": 800}},
                      {"id": "sub", "type": "sub_flow", "params": {"flow_id": sub}}],
            "edges": [{"from": "wait", "to": "sub"}]
        }))
        .await;
    let before = app.start_run(&main, json!({})).await;
    // Redeployed while the first run waits, before its sub-flow node runs.
    let (status, _) = app
        .request(
            reqwest::Method::PUT,
            &format!("/api/v1/flows/{sub}"),
            key,
            Some(json!({"definition": {"nodes": [{"id": "v", "type": "set", "params": {"values": {"v": 2}}}]}})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, deployed) = app.post(&format!("/api/v1/flows/{sub}/deploy"), key, json!({})).await;
    assert_eq!(
        (status, deployed["version"].clone()),
        (reqwest::StatusCode::CREATED, json!(2))
    );
    let after = app.start_run(&main, json!({})).await;

    let before = app.wait_run(&before).await;
    assert_eq!(
        before["output"],
        json!({"v": 1}),
        "pinned to the version of its accept time: {before}"
    );
    assert_eq!(app.wait_run(&after).await["output"], json!({"v": 2}));
    app.teardown().await;
}
