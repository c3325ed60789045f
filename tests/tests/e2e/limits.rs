//! Limits one tenant's flows cannot push past (output sizes, helper output) and the masking of secrets in what
//! runs return (object keys, the encodings secrets travel in, secrets too short to mask).

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::get;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::runs::serve;
use floq_tests::{Options, TestApp};

/// Needs percent-encoding in a query string (`@`, `/`, space, `+`) and JSON escaping (`"`).
const QUERY_SECRET: &str = "p@ss/w rd+Secret\"01";
const KV_SECRET: &str = "kv-Secret/Value+0042";

/// A server that hands back what it was sent in the forms a real API might: the raw (URL-encoded) query string,
/// the header value and the decoded query value as object keys, and the header value base64-encoded.
async fn reflecting_server() -> String {
    serve(axum::Router::new().route(
        "/reflect",
        get(
            |headers: HeaderMap,
             raw: axum::extract::RawQuery,
             query: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                let header = headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let key = query.0.get("key").cloned().unwrap_or_default();
                let mut by_key = serde_json::Map::new();
                by_key.insert(header.clone(), json!("the header value, as a key"));
                by_key.insert(key.clone(), json!("the query value, as a key"));
                axum::Json(json!({
                    "query": raw.0,
                    "by_key": by_key,
                    "basic": base64::engine::general_purpose::STANDARD.encode(format!("user:{header}")),
                    "escaped": serde_json::to_string(&key).unwrap(),
                    "link": format!("https://partner.example/cb?token={}", raw.0.unwrap_or_default()),
                }))
            },
        ),
    ))
    .await
}

#[tokio::test]
async fn secrets_echoed_as_keys_or_encoded_are_masked_in_run_output() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let (status, cred) = app
        .post(
            "/api/v1/credentials",
            &admin,
            json!({"name": "partner", "type": "api_key_query", "data": {"name": "key", "value": QUERY_SECRET}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cred}");
    let (status, body) = app
        .request(
            Method::PUT,
            "/api/v1/kv/partner-header",
            &admin,
            Some(json!({"value": format!("secret:{KV_SECRET}")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let base = reflecting_server().await;
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "call", "type": "http_request", "params": {
                "method": "GET",
                "url": format!("{base}/reflect"),
                "credential_id": cred["id"],
                "headers": {"x-api-key": {"$secret": "partner-header"}},
            }}]}),
            json!({}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, fetched) = app
        .get(&format!("/api/v1/runs/{}", run["id"].as_str().unwrap()), &admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = fetched.to_string();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for (form, leaked) in [
        ("raw query secret", QUERY_SECRET.to_string()),
        ("raw KV secret", KV_SECRET.to_string()),
        ("percent-encoded query secret", "p%40ss%2Fw".to_string()),
        ("form-encoded query secret", "w+rd%2BSecret".to_string()),
        ("percent-encoded KV secret", "kv-Secret%2FValue".to_string()),
        ("JSON-escaped query secret", "Secret\\\\\\\"01".to_string()),
        (
            "base64 of user:KV secret",
            b64(&format!("user:{KV_SECRET}"))[8..24].to_string(),
        ),
    ] {
        assert!(!text.contains(&leaked), "{form} leaked: {text}");
    }
    let body = &fetched["output"]["body"];
    let keys: Vec<&String> = body["by_key"].as_object().expect("by_key").keys().collect();
    assert!(keys.iter().all(|k| k.contains("[masked]")), "{keys:?}");
    assert_eq!(body["query"], "key=[masked]", "{body}");

    // The other company cannot read the run at all.
    let other = app.other_company().await;
    let (status, _) = app
        .get(&format!("/api/v1/runs/{}", run["id"].as_str().unwrap()), &other.api_key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.teardown().await;
}

#[tokio::test]
async fn secrets_too_short_to_mask_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let message = "must be at least 8 characters: shorter secrets cannot be masked safely in run output";
    for (body, field) in [
        (
            json!({"name": "short", "type": "http_bearer", "data": {"token": "abc"}}),
            "data.token",
        ),
        (
            json!({"name": "short", "type": "http_basic", "data": {"username": "ada", "password": "pw1"}}),
            "data.password",
        ),
        (
            json!({"name": "short", "type": "api_key_query", "data": {"name": "key", "value": "k3y"}}),
            "data.value",
        ),
        (
            json!({"name": "short", "type": "postgres", "data": {"uri": "postgres://app:pw@db.internal/app"}}),
            "data.uri",
        ),
    ] {
        let (status, resp) = app.post("/api/v1/credentials", &admin, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
        assert_eq!(resp["error"]["code"], "validation_failed", "{resp}");
        assert_eq!(
            resp["error"]["details"],
            json!([{"field": field, "message": message}]),
            "{resp}"
        );
    }
    let (status, resp) = app
        .request(
            Method::PUT,
            "/api/v1/kv/pin",
            &admin,
            Some(json!({"value": "secret:123"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{resp}");
    assert_eq!(
        resp["error"]["details"],
        json!([{"field": "value", "message": message}]),
        "{resp}"
    );
    // Nothing was stored, and a secret long enough is accepted.
    let (_, listed) = app.get("/api/v1/credentials", &admin).await;
    assert_eq!(listed["items"], json!([]));
    let (status, resp) = app
        .request(
            Method::PUT,
            "/api/v1/kv/pin",
            &admin,
            Some(json!({"value": "secret:12345678"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    app.teardown().await;
}

fn loop_flow(items: u32, bytes: u32) -> Value {
    json!({"nodes": [{"id": "each", "type": "loop", "params": {
        "items": format!("{{{{ Array.from({{ length: {items} }}, (_, i) => i) }}}}"),
        "max_items": 10_000,
        "flow": {"nodes": [{"id": "big", "type": "code", "params": {"code": format!("return 'x'.repeat({bytes});")}}]},
    }}]})
}

#[tokio::test]
async fn a_loop_past_the_step_output_limit_fails_and_its_run_stays_small() {
    let app = TestApp::spawn().await;
    // 400 items of 10 kB: 4 MB, past the default 1 MiB step output limit.
    let run = app.run_flow(loop_flow(400, 10_000), json!({})).await;
    assert_eq!(
        run["status"],
        "failed",
        "{}",
        &run.to_string()[..run.to_string().len().min(2_000)]
    );
    assert_eq!(run["error"]["code"], "output_too_large", "{}", run["error"]);
    assert_eq!(
        run["error"]["message"],
        "node `each` failed: its output exceeded the 1048576-byte limit (FLOQ_STEP_OUTPUT_MAX_BYTES)"
    );
    let (status, fetched) = app
        .request(
            Method::GET,
            &format!("/api/v1/runs/{}", run["id"].as_str().unwrap()),
            &app.admin.api_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        fetched.to_string().len() < 16 * 1024,
        "{} bytes",
        fetched.to_string().len()
    );

    // Under the limit the same loop still works.
    let run = app.run_flow(loop_flow(20, 1_000), json!({})).await;
    assert_eq!(run["status"], "succeeded", "{}", run["error"]);
    assert_eq!(run["output"].as_array().map(Vec::len), Some(20));

    // A loop may not ask for more items than the platform allows.
    let (status, body) = app
        .post(
            "/api/v1/flows",
            &app.admin.api_key,
            json!({"name": "huge loop", "definition": {"nodes": [{"id": "each", "type": "loop", "params": {
                "items": "{{ $input.list }}", "max_items": 100_000, "flow": {"nodes": [{"id": "n", "type": "set", "params": {"values": {}}}]},
            }}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.teardown().await;
}

#[tokio::test]
async fn a_run_past_the_run_output_limit_fails_naming_the_node() {
    let app = TestApp::spawn_configured(Options::default(), |c| {
        c.step_output_max_bytes = 64 * 1024;
        c.run_output_max_bytes = 100 * 1024;
    })
    .await;
    let node = |id: &str| json!({"id": id, "type": "code", "params": {"code": "return 'y'.repeat(40000);"}});
    let definition = json!({
        "nodes": [node("a"), node("b"), node("c")],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    });
    let run = app.run_flow(definition, json!({})).await;
    if run["status"] != "failed" {
        panic!("{}", &run.to_string()[..1_000]);
    }
    assert_eq!(run["error"]["code"], "output_too_large");
    assert_eq!(
        run["error"]["message"],
        "node `c` failed: with it the run's outputs exceeded the 102400-byte limit (FLOQ_RUN_OUTPUT_MAX_BYTES)"
    );
    // One node past the step limit fails on its own.
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "one", "type": "code", "params": {"code": "return 'z'.repeat(70000);"}}]}),
            json!({}),
        )
        .await;
    assert_eq!(
        run["error"]["message"],
        "node `one` failed: its output exceeded the 65536-byte limit (FLOQ_STEP_OUTPUT_MAX_BYTES)"
    );
    app.teardown().await;
}

#[tokio::test]
async fn format_date_with_a_huge_format_fails_fast_and_other_tenants_run_on() {
    let app = TestApp::spawn().await;
    let other = app.other_company().await;
    let attack = app
        .deployed_flow(json!({"nodes": [{"id": "fmt", "type": "code", "params": {
            "code": "return $h.formatDate(0, '%Y'.repeat(3e6));",
        }}]}))
        .await;
    let started = Instant::now();
    let run = app.start_run(&attack, json!({})).await;

    // The other company's run, started meanwhile, is not held up.
    let (status, flow) = app
        .post(
            "/api/v1/flows",
            &other.api_key,
            json!({"name": "plain", "definition": {"nodes": [{"id": "ok", "type": "code", "params": {"code": "return 1 + 1;"}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow_id = flow["id"].as_str().unwrap();
    let (status, _) = app
        .post(&format!("/api/v1/flows/{flow_id}/deploy"), &other.api_key, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, started_other) = app
        .post(
            &format!("/api/v1/flows/{flow_id}/runs"),
            &other.api_key,
            json!({"input": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started_other}");

    let finished = app.wait_run(&run).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["error"]["code"], "sandbox_error", "{}", finished["error"]);
    let message = finished["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("$h.formatDate: format length above the sandbox limit of 256"),
        "{message}"
    );
    let other_run = started_other["run_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, r) = app.get(&format!("/api/v1/runs/{other_run}"), &other.api_key).await;
        if r["status"] == "succeeded" {
            assert_eq!(r["output"], json!(2));
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.teardown().await;
}

/// A script stuck in native code the sandbox cannot interrupt (printing a BigInt near the engine's size cap is one
/// operation JavaScript cannot wrap) is answered at its deadline; past `FLOQ_SANDBOX_MAX_ABANDONED` stuck threads
/// the worker drains and exits with an error naming the setting, and a restarted worker runs what is queued.
#[tokio::test]
async fn a_worker_with_too_many_stuck_sandbox_threads_drains_and_exits() {
    let mut app = TestApp::spawn_configured(Options::default(), |c| c.sandbox_max_abandoned = 0).await;
    let other = app.other_company().await;
    let before = floq_shared::telemetry::METRICS.sandbox_abandoned_threads.get();
    let run = app
        .run_flow(
            // Seconds of native work on any machine: 3n ** 200000n printed in about 0.5 s on a quiet one,
            // inside the pool's grace, and then the test's premise did not hold.
            json!({"nodes": [{"id": "stuck", "type": "code", "params": {
                "code": "return ('' + 3n ** 400000n).length;", "timeout_ms": 10,
            }}]}),
            json!({}),
        )
        .await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "sandbox_timeout", "{}", run["error"]);
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be interrupted"),
        "{}",
        run["error"]
    );
    assert!(floq_shared::telemetry::METRICS.sandbox_abandoned_threads.get() > before);

    let worker = app.worker.take().expect("worker");
    let ended = tokio::time::timeout(Duration::from_secs(30), worker.finished())
        .await
        .expect("the worker exits on its own");
    let err = ended.expect_err("an exhausted worker exits with an error");
    assert!(err.to_string().contains("FLOQ_SANDBOX_MAX_ABANDONED"), "{err:#}");

    // Another company's run waits in the queue for the restarted worker, and runs.
    let (status, flow) = app
        .post(
            "/api/v1/flows",
            &other.api_key,
            json!({"name": "plain", "definition": {"nodes": [{"id": "ok", "type": "code", "params": {"code": "return 40 + 2;"}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow_id = flow["id"].as_str().unwrap();
    let (status, _) = app
        .post(&format!("/api/v1/flows/{flow_id}/deploy"), &other.api_key, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, started) = app
        .post(
            &format!("/api/v1/flows/{flow_id}/runs"),
            &other.api_key,
            json!({"input": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    app.start_worker().await;
    let run_id = started["run_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = app.get(&format!("/api/v1/runs/{run_id}"), &other.api_key).await;
        if r["status"] == "succeeded" {
            assert_eq!(r["output"], json!(42));
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.teardown().await;
}
