//! Cancelling runs in each phase (queued, in a `delay`, in a `code` loop,
//! waiting on an HTTP call), who may cancel, the waiting webhook caller's
//! answer, and flow deadlines, which stop a run the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use floq_tests::{Options, TestApp};

/// Polls until the run is shown `running` (a run is marked so past `FLOQ_RUNNING_MARK_AFTER_MS`).
async fn wait_running(app: &TestApp, run_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, run) = app.get(&format!("/api/v1/runs/{run_id}"), &app.admin.api_key).await;
        match run["status"].as_str() {
            Some("running") => return,
            Some("queued") => {}
            _ => panic!("the run ended before it could be cancelled: {run}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never shown running: {run}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn cancel(app: &TestApp, key: &str, run_id: &str) -> (StatusCode, Value) {
    app.request(Method::POST, &format!("/api/v1/runs/{run_id}/cancel"), key, None)
        .await
}

fn statuses(run: &Value) -> Vec<(String, String)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["node_id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn step<'a>(run: &'a Value, node: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node_id"] == node)
        .unwrap_or_else(|| panic!("no step {node}: {run}"))
}

/// A local HTTP server that counts requests and answers `200 {}`.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (url, calls)
}

/// A local HTTP server that takes connections and never answers; counts them.
async fn silent_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, calls)
}

#[tokio::test]
async fn a_queued_run_is_cancelled_at_once_and_never_starts_even_on_a_worker_that_missed_the_broadcast() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let (url, calls) = counting_server().await;
    let flow = app
        .deployed_flow(
            json!({"nodes": [{"id": "call", "type": "http_request", "params": {"method": "GET", "url": url}}]}),
        )
        .await;
    let run = app.start_run(&flow, json!({})).await;

    let (status, body) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["error"]["code"], "cancelled");
    assert!(
        body["cancel_requested_at"].is_string() && body["finished_at"].is_string(),
        "{body}"
    );

    let (status, again) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "run_finished");
    assert_eq!(again["error"]["details"]["status"], "cancelled");

    // No worker was listening when the cancel was broadcast: the one that starts now reloads it.
    app.start_worker().await;
    let later = app.start_run(&flow, json!({})).await;
    let done = app.wait_run(&later).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the later run called out; the cancelled one, queued before it, never ran"
    );
    let (_, shown) = app.get(&format!("/api/v1/runs/{run}"), &app.admin.api_key).await;
    assert_eq!(shown["status"], "cancelled", "{shown}");
    assert_eq!(shown["steps"], json!([]));

    let (_, audit) = app
        .get(
            &format!("/api/v1/audit?action=run.cancel&resource_id={run}"),
            &app.admin.api_key,
        )
        .await;
    let entries = audit["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["actor"]["id"], app.admin.user_id.to_string(), "{audit}");
    assert_eq!(entries[0]["details"]["status_before"], "queued");
    assert_eq!(entries[0]["details"]["status"], "cancelled");
    app.teardown().await;
}

fn first_then_wait(ms: u64) -> Value {
    json!({
        "nodes": [
            {"id": "first", "type": "set", "params": {"values": {"ok": true}}},
            {"id": "wait", "type": "delay", "params": {"ms": ms}},
            {"id": "after", "type": "set", "params": {"values": {"x": 1}}}
        ],
        "edges": [{"from": "first", "to": "wait"}, {"from": "wait", "to": "after"}]
    })
}

#[tokio::test]
async fn a_running_delay_is_interrupted_and_the_steps_show_what_completed() {
    let app = TestApp::spawn().await;
    // Shorter than FLOQ_PARK_AFTER_MS: the delay waits in the worker that holds the run.
    assert!(app.config.park_after > Duration::from_millis(4_000));
    let flow = app.deployed_flow(first_then_wait(4_000)).await;
    let run = app.start_run(&flow, json!({})).await;
    wait_running(&app, &run).await;
    let (status, body) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "running", "a running run ends at its worker: {body}");
    assert!(body["cancel_requested_at"].is_string(), "{body}");

    let done = app.wait_run(&run).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["error"]["code"], "cancelled");
    assert_eq!(
        statuses(&done),
        [
            ("first".to_string(), "succeeded".to_string()),
            ("wait".to_string(), "cancelled".to_string())
        ],
        "nothing runs after the interrupted node"
    );
    assert_eq!(step(&done, "wait")["error"]["code"], "cancelled");
    app.teardown().await;
}

#[tokio::test]
async fn a_run_parked_on_a_long_delay_is_cancelled_at_once_and_never_wakes() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(first_then_wait(120_000)).await;
    let run = app.start_run(&flow, json!({})).await;
    // Parked: its checkpoint holds `first`, and no worker holds the run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, seen) = app.get(&format!("/api/v1/runs/{run}"), &app.admin.api_key).await;
        let parked = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM runs r JOIN run_waits w ON w.run_id = r.id
                             WHERE r.id = $1 AND r.worker_id IS NULL)",
        )
        .bind(uuid::Uuid::parse_str(&run).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if parked {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never parked: {seen}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, body) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["status"], "cancelled",
        "nobody holds a parked run: it ends now: {body}"
    );
    assert_eq!(body["error"]["code"], "cancelled");
    let (_, done) = app.get(&format!("/api/v1/runs/{run}"), &app.admin.api_key).await;
    assert_eq!(
        statuses(&done),
        [
            ("first".to_string(), "succeeded".to_string()),
            ("wait".to_string(), "cancelled".to_string())
        ],
        "what ran before it parked stays visible, and the wait shows where it stopped"
    );
    assert_eq!(step(&done, "wait")["error"]["code"], "cancelled");
    app.teardown().await;
}

#[tokio::test]
async fn a_running_code_loop_is_interrupted() {
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [
            {"id": "spin", "type": "code", "params": {"code": "while (true) {}", "timeout_ms": 60000}}
        ]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    wait_running(&app, &run).await;
    let (status, body) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app.wait_run(&run).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(statuses(&done), [("spin".to_string(), "cancelled".to_string())]);

    // The sandbox thread was freed: the next script runs.
    let next = app
        .run_flow(
            json!({"nodes": [{"id": "c", "type": "code", "params": {"code": "return 1 + 1;"}}]}),
            json!({}),
        )
        .await;
    assert_eq!(next["status"], "succeeded", "{next}");
    assert_eq!(next["output"], 2);
    app.teardown().await;
}

#[tokio::test]
async fn a_run_waiting_on_an_http_call_that_never_answers_is_interrupted() {
    let app = TestApp::spawn().await;
    let (url, calls) = silent_server().await;
    let flow = app
        .deployed_flow(json!({"nodes": [
            {"id": "call", "type": "http_request", "params": {"method": "GET", "url": url, "timeout_ms": 30000}}
        ]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    wait_running(&app, &run).await;
    let (status, body) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app.wait_run(&run).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(statuses(&done), [("call".to_string(), "cancelled".to_string())]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the call was made once, then abandoned"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_waiting_webhook_caller_hears_that_the_run_was_cancelled() {
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "wait", "type": "delay", "params": {"ms": 120000}}]}))
        .await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &app.admin.api_key,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let url = format!("{}{}?wait=25", app.base, hook["path"].as_str().unwrap());
    let caller = {
        let client = app.client.clone();
        tokio::spawn(async move { client.post(url).json(&json!({})).send().await.unwrap() })
    };
    // The run the call started, once it shows.
    let run = loop {
        let (_, page) = app
            .get(&format!("/api/v1/runs?flow_id={flow}"), &app.admin.api_key)
            .await;
        if let Some(id) = page["items"][0]["id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    wait_running(&app, &run).await;
    let (status, body) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let answer = tokio::time::timeout(Duration::from_secs(20), caller)
        .await
        .expect("the caller is answered before its wait ends")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers()["x-floq-run-id"].to_str().unwrap(), run);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "run_cancelled", "{body}");
    assert_eq!(body["error"]["details"]["status"], "cancelled");
    assert_eq!(body["error"]["details"]["error_code"], "cancelled");
    app.teardown().await;
}

#[tokio::test]
async fn only_who_may_run_the_flow_cancels_and_another_company_sees_nothing() {
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"x": 1}}}]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    let done = app.wait_run(&run).await;
    assert_eq!(done["status"], "succeeded");

    let globex = app.other_company().await;
    let (status, body) = cancel(&app, &globex.api_key, &run).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    let viewer = app.member(&["viewer"]).await;
    let (status, body) = cancel(&app, &viewer.api_key, &run).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // An executor without a grant on the flow does not see the run at all.
    let executor = app.member(&["flow_executor"]).await;
    let (status, body) = cancel(&app, &executor.api_key, &run).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = cancel(&app, &app.admin.api_key, &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = cancel(&app, &app.admin.api_key, &run).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "run_finished");
    app.teardown().await;
}

#[tokio::test]
async fn a_run_past_its_deadline_fails_interrupting_a_delay_or_a_code_loop() {
    let app = TestApp::spawn().await;
    for (name, node) in [
        (
            "delay",
            json!({"id": "slow", "type": "delay", "params": {"ms": 120000}}),
        ),
        (
            "code",
            json!({"id": "slow", "type": "code", "params": {"code": "while (true) {}", "timeout_ms": 60000}}),
        ),
    ] {
        let done = app
            .run_flow(
                json!({
                    "deadline_ms": 700,
                    "nodes": [{"id": "first", "type": "set", "params": {"values": {"x": 1}}}, node],
                    "edges": [{"from": "first", "to": "slow"}]
                }),
                json!({}),
            )
            .await;
        assert_eq!(done["status"], "failed", "{name}: {done}");
        assert_eq!(done["error"]["code"], "deadline_exceeded", "{name}: {done}");
        assert_eq!(
            statuses(&done),
            [
                ("first".to_string(), "succeeded".to_string()),
                ("slow".to_string(), "cancelled".to_string())
            ],
            "{name}"
        );
        assert_eq!(step(&done, "slow")["error"]["code"], "deadline_exceeded");
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_deadline_is_validated_against_the_configured_maximum() {
    let app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        |c| c.flow_deadline_max = Duration::from_secs(10),
    )
    .await;
    for (deadline, field) in [
        (json!(10_001), "definition.deadline_ms"),
        (json!(0), "definition.deadline_ms"),
    ] {
        let (status, body) = app
            .post(
                "/api/v1/flows",
                &app.admin.api_key,
                json!({"name": "f", "definition": {"nodes": [{"id": "a", "type": "merge"}], "deadline_ms": deadline}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
    }
    let (status, body) = app
        .post(
            "/api/v1/flows",
            &app.admin.api_key,
            json!({"name": "f", "definition": {"nodes": [{"id": "a", "type": "merge"}], "deadline_ms": 10_000}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["definition"]["deadline_ms"], 10_000);
    app.teardown().await;
}

#[tokio::test]
async fn a_redelivered_message_of_a_run_whose_cancel_was_asked_finishes_it_cancelled_without_running() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let (url, calls) = counting_server().await;
    let flow = app
        .deployed_flow(
            json!({"nodes": [{"id": "call", "type": "http_request", "params": {"method": "GET", "url": url}}]}),
        )
        .await;
    let run = app.start_run(&flow, json!({})).await;
    // As if a worker had shown it running, then died after the cancel was asked (its broadcast reached no one).
    let marked = sqlx::query(
        "UPDATE runs SET status = 'running', started_at = now(), cancel_requested_at = now() WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&run).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(marked.rows_affected(), 1);
    // The broker hands the message back marked redelivered, as after a worker's death.
    let conn = floq_shared::queue::connect(&floq_tests::amqp_url()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let company = app.admin.company_id;
    let queue = floq_shared::queue::Topology::from_config(&app.config)
        .queue_for(company)
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let message = loop {
        if let Some(m) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run's message never arrived"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    message
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = conn.close(0, "done".into()).await;

    app.start_worker().await;
    let done = app.wait_run(&run).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["error"]["code"], "cancelled");
    assert_eq!(done["steps"], json!([]));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the redelivery did not run the flow");
    app.teardown().await;
}
