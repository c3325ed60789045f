use std::time::Duration;

use axum::Json;
use axum::routing::{get, post};
use reqwest::StatusCode;
use serde_json::{Value, json};

use floq_tests::TestApp;

fn branching_flow() -> Value {
    json!({
        "nodes": [
            {"id": "greet", "type": "set", "params": {"values": {"greeting": "hello", "who": "{{ $input.name }}"}}},
            {"id": "check", "type": "if", "params": {"condition": "{{ $input.vip }}"}},
            {"id": "vip", "type": "set", "params": {"values": {"tier": "gold", "for": "{{ $node.greet.output.who }}"}}},
            {"id": "regular", "type": "set", "params": {"values": {"tier": "standard"}}}
        ],
        "edges": [
            {"from": "greet", "to": "check"},
            {"from": "check", "port": "true", "to": "vip"},
            {"from": "check", "port": "false", "to": "regular"}
        ]
    })
}

#[tokio::test]
async fn a_deployed_flow_runs_to_success_with_its_steps_recorded() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(branching_flow()).await;

    let run_id = app.start_run(&flow, json!({"name": "Ada", "vip": true})).await;
    let run = app.wait_run(&run_id).await;

    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["version"], 1);
    assert_eq!(run["trigger"], "api");
    assert_eq!(run["output"], json!({"tier": "gold", "for": "Ada"}));
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["node_id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("greet", "succeeded"),
            ("check", "succeeded"),
            ("regular", "skipped"),
            ("vip", "succeeded")
        ]
    );
    assert_eq!(run["steps"][0]["output"], json!({"greeting": "hello", "who": "Ada"}));
    assert_eq!(run["steps"][1]["output"], json!({"result": true}));
    app.teardown().await;
}

#[tokio::test]
async fn switch_routes_by_value_and_merge_joins_the_branch_taken() {
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({
            "nodes": [
                {"id": "route", "type": "switch", "params": {"value": "{{ $input.plan }}", "cases": ["pro", "free"]}},
                {"id": "pro", "type": "set", "params": {"values": {"limit": 1000}}},
                {"id": "free", "type": "set", "params": {"values": {"limit": 10}}},
                {"id": "other", "type": "set", "params": {"values": {"limit": 0}}},
                {"id": "join", "type": "merge"}
            ],
            "edges": [
                {"from": "route", "port": "pro", "to": "pro"},
                {"from": "route", "port": "free", "to": "free"},
                {"from": "route", "port": "default", "to": "other"},
                {"from": "pro", "to": "join"}, {"from": "free", "to": "join"}, {"from": "other", "to": "join"}
            ]
        }))
        .await;

    let free = app.start_run(&flow, json!({"plan": "free"})).await;
    let unknown = app.start_run(&flow, json!({"plan": "enterprise"})).await;

    assert_eq!(app.wait_run(&free).await["output"], json!({"free": {"limit": 10}}));
    assert_eq!(app.wait_run(&unknown).await["output"], json!({"other": {"limit": 0}}));
    app.teardown().await;
}

pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_request_calls_a_local_server_and_exposes_status_and_json_body() {
    let server = serve(
        axum::Router::new()
            .route(
                "/users/{id}",
                get(|axum::extract::Path(id): axum::extract::Path<u32>| async move {
                    Json(json!({"id": id, "name": "Grace"}))
                }),
            )
            .route(
                "/echo",
                post(|headers: axum::http::HeaderMap, Json(body): Json<Value>| async move {
                    Json(json!({"got": body, "x_token": headers.get("x-token").and_then(|v| v.to_str().ok())}))
                }),
            ),
    )
    .await;
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({
            "nodes": [
                {"id": "fetch", "type": "http_request",
                 "params": {"method": "GET", "url": format!("{server}/users/{{{{ $input.user_id }}}}")}},
                {"id": "send", "type": "http_request",
                 "params": {"method": "POST", "url": format!("{server}/echo"),
                            "headers": {"x-token": "t-{{ $input.user_id }}"},
                            "body": {"name": "{{ $node.fetch.output.body.name }}"}}}
            ],
            "edges": [{"from": "fetch", "to": "send"}]
        }))
        .await;

    let run = app.wait_run(&app.start_run(&flow, json!({"user_id": 7})).await).await;

    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["output"]["status"], 200);
    assert_eq!(run["steps"][0]["output"]["body"], json!({"id": 7, "name": "Grace"}));
    assert_eq!(
        run["output"]["body"],
        json!({"got": {"name": "Grace"}, "x_token": "t-7"})
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_failing_node_fails_the_run_with_an_error_naming_it() {
    // A port nobody listens on: connecting fails.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({
            "nodes": [
                {"id": "first", "type": "set", "params": {"values": {"a": 1}}},
                {"id": "call", "type": "http_request", "params": {"method": "GET", "url": format!("http://{dead}/x"), "timeout_ms": 2000}},
                {"id": "after", "type": "set", "params": {"values": {"never": true}}}
            ],
            "edges": [{"from": "first", "to": "call"}, {"from": "call", "to": "after"}]
        }))
        .await;

    let run = app.wait_run(&app.start_run(&flow, json!({})).await).await;

    assert_eq!(run["status"], "failed");
    assert_eq!(
        run["error"],
        json!({"node": "call", "code": "http_connect", "message": "node `call` failed: could not connect to the server"})
    );
    assert_eq!(run["output"], Value::Null);
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{run}");
    assert_eq!(steps[1]["status"], "failed");
    assert_eq!(steps[1]["error"]["code"], "http_connect");
    app.teardown().await;
}

#[tokio::test]
async fn a_slow_run_is_visible_as_running_before_it_finishes() {
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "wait", "type": "delay", "params": {"ms": 1500}}]}))
        .await;

    let run_id = app.start_run(&flow, json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, run) = app.get(&format!("/api/v1/runs/{run_id}"), &app.admin.api_key).await;
        if run["status"] == "running" {
            assert!(run["started_at"].is_string());
            break;
        }
        assert_eq!(run["status"], "queued", "{run}");
        assert!(tokio::time::Instant::now() < deadline, "never saw running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = app.wait_run(&run_id).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"], json!({"waited_ms": 1500}));
    app.teardown().await;
}

#[tokio::test]
async fn runs_list_filters_by_flow_and_status_and_pages_with_a_cursor() {
    let app = TestApp::spawn().await;
    let ok = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {}}}]}))
        .await;
    let bad = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "delay", "params": {"ms": 999_999_999}}]}))
        .await;
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(app.start_run(&ok, json!({})).await);
    }
    let failed = app.start_run(&bad, json!({})).await;
    for id in ids.iter().chain([&failed]) {
        app.wait_run(id).await;
    }
    let key = &app.admin.api_key;

    let (status, page) = app.get(&format!("/api/v1/runs?flow_id={ok}&limit=2"), key).await;
    assert_eq!(status, StatusCode::OK);
    let first: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, vec![ids[2].as_str(), ids[1].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = app
        .get(&format!("/api/v1/runs?flow_id={ok}&limit=2&cursor={cursor}"), key)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], ids[0].as_str());
    assert_eq!(page["next_cursor"], Value::Null);

    let (_, failed_page) = app.get("/api/v1/runs?status=failed", key).await;
    assert_eq!(failed_page["items"].as_array().unwrap().len(), 1);
    assert_eq!(failed_page["items"][0]["error"]["code"], "delay_too_long");

    let (status, body) = app.get("/api/v1/runs?status=exploded", key).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["field"], "status");
    app.teardown().await;
}

#[tokio::test]
async fn an_idempotency_key_maps_concurrent_duplicates_to_one_run() {
    let app = TestApp::spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let url = format!("{}/api/v1/flows/{flow}/runs", app.base);
    let send = |key: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(&app.admin.api_key)
            .header("idempotency-key", key)
            .json(&json!({"input": {}}))
            .send()
    };
    let answers = futures_util::future::join_all((0..50).map(|_| send("order-42"))).await;
    let mut statuses = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for resp in answers {
        let resp = resp.unwrap();
        statuses.push(resp.status());
        let body: Value = resp.json().await.unwrap();
        ids.insert(body["run_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "50 duplicates, one run: {ids:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 49);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1);

    // Another key is another run; a key past its 24 hours starts a new one.
    let other: Value = send("order-43").await.unwrap().json().await.unwrap();
    assert!(!ids.contains(other["run_id"].as_str().unwrap()));
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'order-42'")
        .execute(&app.pool)
        .await
        .unwrap();
    let later = send("order-42").await.unwrap();
    assert_eq!(later.status(), StatusCode::ACCEPTED);
    let later: Value = later.json().await.unwrap();
    assert!(!ids.contains(later["run_id"].as_str().unwrap()));

    let bad = app
        .client
        .post(&url)
        .bearer_auth(&app.admin.api_key)
        .header("idempotency-key", "")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.teardown().await;
}

#[tokio::test]
async fn triggers_beyond_the_flow_or_company_rate_get_429_with_retry_after() {
    let app = TestApp::spawn_configured(floq_tests::Options::default(), |c| {
        c.trigger_rate_per_flow = 1;
        c.trigger_burst_per_flow = 3;
        c.trigger_rate_per_company = 1;
        c.trigger_burst_per_company = 5;
    })
    .await;
    let (a, b) = (
        app.deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
            .await,
        app.deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
            .await,
    );
    let start = |flow: &str| {
        app.client
            .post(format!("{}/api/v1/flows/{flow}/runs", app.base))
            .bearer_auth(&app.admin.api_key)
            .json(&json!({}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(start(&a).await.unwrap().status(), StatusCode::ACCEPTED);
    }
    let limited = start(&a).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 1);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another flow has its own bucket, until the company's runs out.
    assert_eq!(start(&b).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(
        start(&b).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the company's burst of 5 is spent"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(runs, 4, "refused triggers create nothing");
    app.teardown().await;
}
