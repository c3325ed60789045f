//! Webhook triggers: the token is the credential, signatures guard against
//! forgery and replay, and the request becomes the run's `$input`.

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use floq_tests::TestApp;

fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_webhook_turns_a_request_into_a_run_and_its_token_rotates() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let path = hook["path"].as_str().unwrap().to_string();
    let (_, shown) = app.get(&format!("/api/v1/flows/{flow}/webhook"), &admin).await;
    assert_eq!(shown["enabled"], true);
    assert!(
        !shown.to_string().contains(hook["token"].as_str().unwrap()),
        "the token is shown once"
    );

    let resp = app
        .client
        .post(format!("{}{path}?order=42&note=a%20b", app.base))
        .header("authorization", "Bearer not-for-the-flow")
        .header("cookie", "floq_session=nope")
        .header("x-source", "shop")
        .json(&json!({"total": 12.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let run = app.wait_run(body["run_id"].as_str().unwrap()).await;
    assert_eq!(run["trigger"], "webhook");
    let input = &run["input"];
    assert_eq!(input["method"], "POST");
    assert_eq!(input["body"], json!({"total": 12.5}));
    assert_eq!(input["query"], json!({"order": "42", "note": "a b"}));
    assert_eq!(input["headers"]["x-source"], "shop");
    assert!(input["headers"].get("authorization").is_none() && input["headers"].get("cookie").is_none());

    let get = app.client.get(format!("{}{path}", app.base)).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.client
            .post(format!("{}/hooks/unknown", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let (_, rotated) = app
        .post(&format!("/api/v1/flows/{flow}/webhook/rotate"), &admin, json!({}))
        .await;
    let new_path = rotated["path"].as_str().unwrap();
    assert_eq!(
        app.client
            .post(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.client
            .post(format!("{}{new_path}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );

    assert_eq!(
        app.request(Method::DELETE, &format!("/api/v1/flows/{flow}/webhook"), &admin, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.client
            .post(format!("{}{new_path}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let (_, audit) = app.get("/api/v1/audit?action=webhook.*", &admin).await;
    assert!(audit["items"].as_array().unwrap().len() >= 3, "{audit}");
    assert!(!audit.to_string().contains(rotated["token"].as_str().unwrap()));
    app.teardown().await;
}

#[tokio::test]
async fn signed_webhooks_refuse_forged_and_replayed_calls() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &admin,
            Some(json!({"signed": true, "tolerance_seconds": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let url = format!("{}{}", app.base, hook["path"].as_str().unwrap());
    let secret = hook["secret"].as_str().unwrap().to_string();
    let body = r#"{"event":"paid"}"#;
    let now = chrono::Utc::now().timestamp();
    let call = |signature: Option<String>| {
        let mut req = app
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            req = req.header("x-floq-signature", s);
        }
        req.send()
    };
    assert_eq!(call(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(Some(sign("whsec_wrong", now, body))).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(Some(sign(&secret, now - 600, body))).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "a replay"
    );
    assert_eq!(
        call(Some(sign(&secret, now, r#"{"event":"refunded"}"#)))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED,
        "a tampered body"
    );
    let ok = call(Some(sign(&secret, now, body))).await.unwrap();
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let run: Value = ok.json().await.unwrap();
    let run = app.wait_run(run["run_id"].as_str().unwrap()).await;
    assert_eq!(run["input"]["body"], json!({"event": "paid"}));
    assert!(run["input"]["headers"].get("x-floq-signature").is_none());

    // Rotation changes the secret too.
    let (_, rotated) = app
        .post(&format!("/api/v1/flows/{flow}/webhook/rotate"), &admin, json!({}))
        .await;
    assert_ne!(rotated["secret"], hook["secret"]);
    app.teardown().await;
}

/// Enables a webhook on a freshly deployed flow and returns its URL.
async fn hook_url(app: &TestApp, definition: Value, settings: Value) -> (String, String) {
    let flow = app.deployed_flow(definition).await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &app.admin.api_key,
            Some(settings),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    (flow, format!("{}{}", app.base, hook["path"].as_str().unwrap()))
}

#[tokio::test]
async fn a_sync_webhook_answers_with_the_respond_nodes_status_headers_and_body() {
    let app = TestApp::spawn().await;
    let (_, url) = hook_url(
        &app,
        json!({
            "nodes": [
                {"id": "shape", "type": "set", "params": {"values": {"order": "{{ $input.body.order }}"}}},
                {"id": "reply", "type": "respond", "params": {
                    "status": 201,
                    "headers": {"X-Order": "{{ $node.shape.output.order }}", "Cache-Control": "public"},
                    "body": {"accepted": "{{ $node.shape.output.order }}", "wait": "{{ $input.query.wait }}"}}}
            ],
            "edges": [{"from": "shape", "to": "reply"}]
        }),
        json!({}),
    )
    .await;

    let resp = app
        .client
        .post(format!("{url}?wait=10"))
        .json(&json!({"order": "A-17"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let headers = resp.headers().clone();
    assert_eq!(headers["x-order"], "A-17");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store", "the API's security headers win");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .ends_with("; sandbox"),
        "what a flow serves cannot run on the API's origin"
    );
    let run_id = headers["x-floq-run-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"accepted": "A-17", "wait": null}),
        "`wait` is not part of $input"
    );

    // The answer was committed before it was sent.
    let run = app.get(&format!("/api/v1/runs/{run_id}"), &app.admin.api_key).await.1;
    assert_eq!(run["status"], "succeeded", "{run}");
    app.teardown().await;
}

#[tokio::test]
async fn a_sync_webhook_without_respond_answers_with_the_runs_output_or_its_failure() {
    let app = TestApp::spawn().await;
    let (flow, url) = hook_url(
        &app,
        json!({"nodes": [{"id": "out", "type": "set", "params": {"values": {"total": "{{ $input.body.n }}"}}}]}),
        // The webhook's own setting makes every call wait.
        json!({"wait_seconds": 10}),
    )
    .await;
    let resp = app.client.post(&url).json(&json!({"n": 3})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"total": 3}));
    let (_, shown) = app
        .get(&format!("/api/v1/flows/{flow}/webhook"), &app.admin.api_key)
        .await;
    assert_eq!(shown["webhook"]["wait_seconds"], 10);

    // `?wait=0` asks for the asynchronous answer.
    let resp = app.client.post(format!("{url}?wait=0")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let (_, failing) = hook_url(
        &app,
        json!({"nodes": [{"id": "boom", "type": "code", "params": {"code": "throw new Error('card declined')"}}]}),
        json!({}),
    )
    .await;
    let resp = app.client.post(format!("{failing}?wait=10")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let run_id = resp.headers()["x-floq-run-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "run_failed");
    assert_eq!(
        body["error"]["details"],
        json!({"run_id": run_id, "node": "boom", "status": "failed", "error_code": "sandbox_error"})
    );
    assert!(
        !body.to_string().contains("card declined"),
        "the caller gets no node messages: {body}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_sync_webhook_that_outwaits_its_limit_answers_202_and_the_run_continues() {
    let app = TestApp::spawn().await;
    let (_, url) = hook_url(
        &app,
        json!({"nodes": [
            {"id": "slow", "type": "delay", "params": {"ms": 2500}},
            {"id": "reply", "type": "respond", "params": {"body": "done"}}
        ], "edges": [{"from": "slow", "to": "reply"}]}),
        json!({}),
    )
    .await;
    let started = std::time::Instant::now();
    let resp = app.client.post(format!("{url}?wait=1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "it answered at the wait"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "pending", "{body}");
    let run = app.wait_run(body["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"]["body"], "done");

    // A string body goes out as text.
    let resp = app.client.post(format!("{url}?wait=10")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "done");
    app.teardown().await;
}

#[tokio::test]
async fn an_oversized_payload_or_a_wait_beyond_the_maximum_is_refused_and_starts_nothing() {
    let app = TestApp::spawn_configured(Default::default(), |c| {
        c.webhook_max_wait = std::time::Duration::from_secs(5);
        c.body_limit_bytes = 4096;
    })
    .await;
    let (flow, url) = hook_url(&app, json!({"nodes": [{"id": "a", "type": "merge"}]}), json!({})).await;
    let resp = app.client.post(&url).body("x".repeat(5000)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    for bad in ["6", "-1", "soon"] {
        let resp = app.client.post(format!("{url}?wait={bad}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
        assert_eq!(body["error"]["details"][0]["field"], "wait");
    }
    let (status, body) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &app.admin.api_key,
            Some(json!({"wait_seconds": 6})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "wait_seconds");
    let (_, runs) = app
        .get(&format!("/api/v1/runs?flow_id={flow}"), &app.admin.api_key)
        .await;
    assert_eq!(runs["items"], json!([]));
    app.teardown().await;
}

#[tokio::test]
async fn a_reply_too_large_for_the_broker_is_read_from_the_run_once() {
    let app = TestApp::spawn_configured(Default::default(), |c| {
        c.body_limit_bytes = 4 << 20;
        // The reply is a step output too: past the default 1 MiB it would fail `output_too_large`.
        c.step_output_max_bytes = 4 << 20;
    })
    .await;
    let (_, url) = hook_url(
        &app,
        json!({"nodes": [
            {"id": "reply", "type": "respond", "params": {"status": 207, "body": "{{ $input.body }}"}}
        ]}),
        json!({}),
    )
    .await;
    let big = "x".repeat(1_500_000);
    let resp = app
        .client
        .post(format!("{url}?wait=20"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MULTI_STATUS);
    assert!(resp.text().await.unwrap() == big);
    app.teardown().await;
}

#[tokio::test]
async fn a_webhook_can_refuse_caller_chosen_waits_and_a_full_replica_answers_at_once() {
    let app = TestApp::spawn_configured(Default::default(), |c| c.webhook_max_waiting = 0).await;
    let (_, url) = hook_url(
        &app,
        json!({"nodes": [{"id": "a", "type": "merge"}]}),
        json!({"allow_wait": false}),
    )
    .await;
    // `wait` is then the caller's own parameter: passed on, never refused.
    let resp = app.client.post(format!("{url}?wait=soon")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let run = app.wait_run(body["run_id"].as_str().unwrap()).await;
    assert_eq!(run["input"]["query"], json!({"wait": "soon"}));

    // No room for another waiting call on this replica: answered at once, the run still starts.
    let (_, open) = hook_url(&app, json!({"nodes": [{"id": "a", "type": "merge"}]}), json!({})).await;
    let resp = app.client.post(format!("{open}?wait=10")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let run_id = resp.headers()["x-floq-run-id"].to_str().unwrap().to_string();
    assert_eq!(app.wait_run(&run_id).await["status"], "succeeded");
    app.teardown().await;
}
