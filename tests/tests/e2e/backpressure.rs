//! Backpressure: triggers are refused past the backlog bounds, and a broker
//! outage only degrades the API, which keeps accepting into the outbox.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use floq_tests::{Options, TestApp, assert_error};

fn quick_flow() -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}}]})
}

/// Starts runs until one is refused; returns the refusal (status, Retry-After, body).
async fn flood_until_refused(base: &str, app: &TestApp, key: &str, flow: &str) -> (StatusCode, Option<String>, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = app
            .client
            .post(format!("{base}/api/v1/flows/{flow}/runs"))
            .bearer_auth(key)
            .json(&json!({"input": {"n": 1}}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = resp.json().await.unwrap();
        if status != StatusCode::ACCEPTED {
            return (status, retry_after, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn api_metrics(app: &TestApp) -> String {
    app.client
        .get(format!("http://{}/metrics", app.api_metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn past_the_global_bound_triggers_get_503_backlog_full_until_it_drains() {
    let mut app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        |c| c.backlog_max = 5,
    )
    .await;
    let flow = app.deployed_flow(quick_flow()).await;
    let (status, retry_after, body) = flood_until_refused(&app.base, &app, &app.admin.api_key, &flow).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_error(
        &body,
        "backlog_full",
        "too many runs are waiting to be executed; retry later",
        Value::Null,
    );
    // The webhook trigger is refused the same way.
    let (_, hook) = app
        .request(
            reqwest::Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &app.admin.api_key,
            Some(json!({})),
        )
        .await;
    let path = hook["path"].as_str().expect("webhook path").to_string();
    let resp = app
        .client
        .post(format!("{}{path}", app.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backlog_full", "{body}");
    let metrics = api_metrics(&app).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("floq_backpressure_rejections_total{reason=\"backlog_full\"} ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(metrics.contains("floq_queue_jobs_waiting"), "{metrics}");
    assert!(metrics.contains("floq_outbox_backlog"), "{metrics}");

    // A worker drains the queue: triggers are accepted again.
    app.start_worker().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app
            .post(
                &format!("/api/v1/flows/{flow}/runs"),
                &app.admin.api_key,
                json!({"input": {"n": 2}}),
            )
            .await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "the backlog never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_company_past_its_bound_gets_429_and_another_company_still_runs() {
    let app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        |c| c.company_backlog_max = 4,
    )
    .await;
    let flow = app.deployed_flow(quick_flow()).await;
    let (status, retry_after, body) = flood_until_refused(&app.base, &app, &app.admin.api_key, &flow).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_error(
        &body,
        "company_backlog_full",
        "too many of this company's runs are waiting to be executed; retry later",
        Value::Null,
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = 'queued'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(queued > 4, "refused only past the bound: {queued} queued");
    // Another company, even one sharing the shard, is not refused for the first one's backlog.
    let other = app.other_company().await;
    let theirs = app.deployed_flow_as(&other.api_key, quick_flow()).await;
    for n in 0..3 {
        app.start_run_as(&other.api_key, &theirs, json!({ "n": n })).await;
    }
    let metrics = api_metrics(&app).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("floq_backpressure_rejections_total{reason=\"company_backlog_full\"} ")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    app.teardown().await;
}

/// An API replica whose broker is unreachable stays ready (degraded, naming
/// the broker), accepts runs into the outbox, and the runs are delivered
/// later (the scheduler's sweep publishes them).
#[tokio::test]
async fn without_its_broker_an_api_replica_is_degraded_and_still_accepts() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(quick_flow()).await;
    // A port nothing listens on.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let ((base, replica), internal) = app
        .start_api_replica_configured(|c| {
            c.amqp_url = floq_shared::Secret::new(format!("amqp://guest:guest@127.0.0.1:{dead}/%2f"));
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = app.client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "a broker outage must not make the API unready"
        );
        let body: Value = resp.json().await.unwrap();
        if body["status"] == "degraded" {
            assert_eq!(body, json!({"status": "degraded", "unreachable": ["rabbitmq"]}));
            break;
        }
        assert_eq!(body, json!({"status": "ready"}));
        assert!(tokio::time::Instant::now() < deadline, "never degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let internal_ready = app
        .client
        .get(format!("http://{internal}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(internal_ready.status(), StatusCode::OK);
    let mut runs = Vec::new();
    for n in 0..5 {
        let resp = app
            .client
            .post(format!("{base}/api/v1/flows/{flow}/runs"))
            .bearer_auth(&app.admin.api_key)
            .json(&json!({"input": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let body: Value = resp.json().await.unwrap();
        runs.push(body["run_id"].as_str().unwrap().to_string());
    }
    for (n, run) in runs.iter().enumerate() {
        let done = app.wait_run(run).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["output"], json!({ "n": n }));
    }
    // The main replica, whose broker is up, is plainly ready.
    let resp = app.client.get(format!("{}/readyz", app.base)).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ready"}));
    replica.stop().await;
    app.teardown().await;
}
