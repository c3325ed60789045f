//! What an anonymous caller and a flow can do with a webhook: replay a signed
//! request (issue 12 #11), redirect from the API's origin (#12), and read the
//! platform's metrics (#13).

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use floq_shared::Secret;
use floq_tests::{Options, TestApp};

fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An error body without its request id, to compare whole.
fn error_of(mut body: Value) -> Value {
    assert!(body["error"]["request_id"].is_string(), "{body}");
    body["error"].as_object_mut().unwrap().remove("request_id");
    body
}

async fn put_webhook(app: &TestApp, key: &str, flow: &str, settings: Value) -> (StatusCode, Value) {
    app.request(
        Method::PUT,
        &format!("/api/v1/flows/{flow}/webhook"),
        key,
        Some(settings),
    )
    .await
}

async fn runs_of(app: &TestApp, flow: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE flow_id = $1")
        .bind(Uuid::parse_str(flow).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn post_signed(app: &TestApp, url: &str, signature: &str, body: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("x-floq-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_signed_request_starts_one_run_however_often_and_wherever_it_is_replayed() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, hook) = put_webhook(&app, &admin, &flow, json!({"signed": true, "tolerance_seconds": 60})).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let path = hook["path"].as_str().unwrap().to_string();
    let url = format!("{}{path}", app.base);
    let secret = hook["secret"].as_str().unwrap().to_string();
    let body = r#"{"event":"paid","amount":100}"#;
    let now = chrono::Utc::now().timestamp();
    let signature = sign(&secret, now, body);

    let (status, first) = post_signed(&app, &url, &signature, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    app.wait_run(first["run_id"].as_str().unwrap()).await;

    let replayed = json!({"error": {
        "code": "signature_replayed",
        "message": "this signed request was already accepted; sign it again with a new timestamp to start another run",
        "details": null,
    }});
    let (status, again) = post_signed(&app, &url, &signature, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(error_of(again), replayed);
    // Re-spelling the header (case of the hex, spaces, order) is the same signature.
    let (t_part, v1_part) = signature.split_once(',').unwrap();
    let respelled = format!("{} , {}", v1_part.to_uppercase().replace("V1=", "v1="), t_part);
    let (status, again) = post_signed(&app, &url, &respelled, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    // Another API replica on the same database refuses it too.
    let (replica, replica_service) = app.start_api_replica().await;
    let (status, again) = post_signed(&app, &format!("{replica}{path}"), &signature, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(error_of(again), replayed);
    assert_eq!(runs_of(&app, &flow).await, 1, "the replays started nothing");

    // A new signature (the sender's next event) is a new request.
    let (status, next) = post_signed(&app, &url, &sign(&secret, now + 1, body), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{next}");
    assert_eq!(runs_of(&app, &flow).await, 2);

    // Widening the tolerance keeps old claims for as long as their signatures now verify.
    let expiry = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT max(expires_at) FROM webhook_signatures WHERE flow_id = $1",
        )
        .bind(Uuid::parse_str(&flow).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let before = expiry().await;
    let (status, _) = put_webhook(&app, &admin, &flow, json!({"signed": true, "tolerance_seconds": 600})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((expiry().await - before).num_seconds(), 540);
    replica_service.stop().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_signed_request_that_started_no_run_may_be_sent_again_and_expired_claims_are_trimmed() {
    // No scheduler: this test trims by hand, and counts the claims in between.
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let admin = app.admin.api_key.clone();
    // A webhook on a flow not deployed yet: the call is refused and its signature not spent.
    let (status, flow) = app
        .post(
            "/api/v1/flows",
            &admin,
            json!({"name": "later", "definition": {"nodes": [{"id": "a", "type": "merge"}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let flow = flow["id"].as_str().unwrap().to_string();
    let (_, hook) = put_webhook(&app, &admin, &flow, json!({"signed": true})).await;
    let url = format!("{}{}", app.base, hook["path"].as_str().unwrap());
    let secret = hook["secret"].as_str().unwrap();
    let body = r#"{"n":1}"#;
    let signature = sign(secret, chrono::Utc::now().timestamp(), body);
    let (status, refused) = post_signed(&app, &url, &signature, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "not_deployed");
    let (status, _) = app
        .post(&format!("/api/v1/flows/{flow}/deploy"), &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, ok) = post_signed(&app, &url, &signature, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ok}");
    let (status, _) = post_signed(&app, &url, &signature, body).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The scheduler forgets only claims whose signatures can no longer verify.
    sqlx::query(
        "INSERT INTO webhook_signatures (flow_id, company_id, signature_hash, expires_at)
         VALUES ($1, $2, sha256('old'), now() - interval '1 second')",
    )
    .bind(Uuid::parse_str(&flow).unwrap())
    .bind(app.admin.company_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM webhook_signatures")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 2);
    floq_scheduler::retention::trim_webhook_signatures(&app.pool)
        .await
        .unwrap();
    assert_eq!(count().await, 1, "the live claim stays");
    let (status, _) = post_signed(&app, &url, &signature, body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.teardown().await;
}

/// A sync webhook whose `respond` node answers `302` with the request's
/// `location` (and `link`, if given) headers.
fn redirecting_flow() -> Value {
    json!({"nodes": [{"id": "reply", "type": "respond", "params": {
        "status": 302,
        "headers": "{{ $input.body.headers }}",
        "body": "moved"}}]})
}

async fn call(url: &str, headers: Value) -> reqwest::Response {
    // Never follow: the point is what the API answers.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    client
        .post(format!("{url}?wait=10"))
        .json(&json!({"headers": headers}))
        .send()
        .await
        .unwrap()
}

async fn refused_redirect(url: &str, headers: Value, header: &str, target: &str) {
    let resp = call(url, headers.clone()).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{headers}");
    assert!(resp.headers().get("location").is_none() && resp.headers().get("link").is_none());
    let run_id = resp.headers()["x-floq-run-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        error_of(body),
        json!({"error": {
            "code": "reply_refused",
            "message": format!("the reply's `{header}` header points to {target}, which this webhook's redirect_origins does not allow"),
            "details": {"run_id": run_id, "header": header, "target": target},
        }}),
        "{headers}"
    );
}

#[tokio::test]
async fn a_respond_node_redirects_only_on_the_apis_origin_or_to_origins_its_webhook_allows() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app.deployed_flow(redirecting_flow()).await;
    let (status, hook) = put_webhook(&app, &admin, &flow, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    assert_eq!(hook["redirect_origins"], json!([]));
    let url = format!("{}{}", app.base, hook["path"].as_str().unwrap());

    refused_redirect(
        &url,
        json!({"Location": "https://evil.example/"}),
        "location",
        "https://evil.example",
    )
    .await;
    refused_redirect(
        &url,
        json!({"location": "//evil.example/login"}),
        "location",
        "https://evil.example",
    )
    .await;
    refused_redirect(
        &url,
        json!({"location": "/\\evil.example"}),
        "location",
        "https://evil.example",
    )
    .await;
    refused_redirect(
        &url,
        json!({"location": "https://evil.example/über"}),
        "location",
        "https://evil.example",
    )
    .await;
    refused_redirect(
        &url,
        json!({"link": "</next>; rel=next, <https://evil.example/x>; rel=prerender"}),
        "link",
        "https://evil.example",
    )
    .await;
    let resp = call(&url, json!({"location": "/thanks?order=1"})).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()["location"],
        "/thanks?order=1",
        "relative redirects stay allowed"
    );

    // Another company cannot open my webhook's redirects.
    let globex = app.other_company().await;
    let (status, body) = put_webhook(
        &app,
        &globex.api_key,
        &flow,
        json!({"redirect_origins": ["https://evil.example"]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    refused_redirect(
        &url,
        json!({"location": "https://evil.example/"}),
        "location",
        "https://evil.example",
    )
    .await;

    // What is not an origin is refused, naming the entry.
    let (status, body) = put_webhook(
        &app,
        &admin,
        &flow,
        json!({"redirect_origins": ["https://app.example", "https://app.example/path"]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        error_of(body),
        json!({"error": {
            "code": "validation_failed",
            "message": "the webhook settings are invalid",
            "details": [{"field": "redirect_origins[1]",
                         "message": "`https://app.example/path` must be only scheme://host[:port] (no path, query, credentials or wildcard)"}],
        }})
    );

    // The owner allows an origin: that one passes, nothing else does.
    let (status, hook) = put_webhook(
        &app,
        &admin,
        &flow,
        json!({"redirect_origins": ["https://App.Example:443"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{hook}");
    assert_eq!(hook["redirect_origins"], json!(["https://app.example"]));
    let resp = call(&url, json!({"location": "https://app.example/welcome"})).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "https://app.example/welcome");
    refused_redirect(
        &url,
        json!({"location": "https://evil.example/"}),
        "location",
        "https://evil.example",
    )
    .await;
    let (_, shown) = app.get(&format!("/api/v1/flows/{flow}/webhook"), &globex.api_key).await;
    assert_eq!(shown["error"]["code"], "not_found");
    let (_, shown) = app.get(&format!("/api/v1/flows/{flow}/webhook"), &admin).await;
    assert_eq!(shown["webhook"]["redirect_origins"], json!(["https://app.example"]));
    app.teardown().await;
}

#[tokio::test]
async fn the_apis_public_port_serves_no_metrics_and_its_internal_listener_does() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let resp = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        error_of(body),
        json!({"error": {"code": "not_found", "message": "route not found", "details": null}})
    );
    for path in ["/healthz", "/readyz"] {
        let resp = app.client.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path} stays public");
    }
    let internal = format!("http://{}", app.api_metrics);
    assert_ne!(internal, app.base);
    let metrics = app.client.get(format!("{internal}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.text().await.unwrap().contains("floq_http_requests_total"));
    let health = app.client.get(format!("{internal}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    app.teardown().await;
}

#[tokio::test]
async fn a_metrics_token_guards_every_services_metrics_and_never_health() {
    let token = "metrics-token-0123456789abcdef";
    let mut app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        |c| c.metrics_token = Some(Secret::new(token)),
    )
    .await;
    let worker = app.start_worker().await;
    let scheduler = app.start_scheduler().await;
    let unauthorized = json!({"error": {
        "code": "unauthorized",
        "message": "/metrics requires Authorization: Bearer <FLOQ_METRICS_TOKEN>",
        "details": null,
    }});
    for base in [
        format!("http://{}", app.api_metrics),
        format!("http://{worker}"),
        format!("http://{scheduler}"),
    ] {
        let url = format!("{base}/metrics");
        for auth in [None, Some("Bearer wrong-token-0123456789abcdef"), Some(token)] {
            let mut req = app.client.get(&url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{url} with {auth:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            assert_eq!(resp.json::<Value>().await.unwrap(), unauthorized);
        }
        let resp = app.client.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        assert!(resp.text().await.unwrap().contains("floq_"), "{url}");
        for path in ["/healthz", "/readyz"] {
            // A service just started may not be ready yet (its consumers connecting): asked again, it needs no token.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                let resp = app.client.get(format!("{base}{path}")).send().await.unwrap();
                if resp.status() == StatusCode::OK {
                    break;
                }
                assert_eq!(
                    resp.status(),
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{base}{path} needs no token"
                );
                assert!(tokio::time::Instant::now() < deadline, "{base}{path} never ready");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let resp = app.client.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.teardown().await;
}
