//! The egress policy, as a hostile tenant meets it: a flow of another company
//! trying to reach loopback, private and metadata addresses, the platform's
//! own database, broker and listeners, through every spelling of an address
//! and through redirects.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::get;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::runs::serve;
use floq_tests::smtp_sink::SmtpSink;
use floq_tests::{Options, TestApp, failed_step};

fn call(url: &str) -> Value {
    json!({"nodes": [{"id": "call", "type": "http_request", "params": {"method": "GET", "url": url}}]})
}

/// A server that counts the requests it gets.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let base = serve(axum::Router::new().fallback(get(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "reached" }
    })))
    .await;
    (base, hits)
}

fn port_of(base: &str) -> u16 {
    base.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

async fn assert_all_denied(app: &TestApp, key: &str, urls: &[String]) {
    let mut runs = Vec::new();
    for url in urls {
        let flow = app.deployed_flow_as(key, call(url)).await;
        runs.push((url, app.start_run_as(key, &flow, json!({})).await));
    }
    for (url, run) in runs {
        let run = app.wait_run_as(key, &run).await;
        let (code, message) = failed_step(&run);
        assert_eq!(code, "egress_denied", "{url}: {run}");
        assert!(message.contains("denied by the egress policy"), "{url}: {message}");
    }
}

#[tokio::test]
async fn a_flow_cannot_reach_loopback_private_or_metadata_addresses_in_any_spelling() {
    let app = TestApp::spawn_configured(Options::default(), |c| c.egress_allow.clear()).await;
    let attacker = app.other_company().await;
    let (base, hits) = counting_server().await;
    let port = port_of(&base);
    let urls: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "127.1",
        "0x7f000001",
        "2130706433",
        "0.0.0.0",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ]
    .iter()
    .map(|h| format!("http://{h}:{port}/"))
    .chain(
        [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.0.0.1/",
            "http://172.16.0.1/",
            "http://192.168.0.1/",
            "http://100.64.0.1/",
        ]
        .map(String::from),
    )
    .collect();
    assert_all_denied(&app, &attacker.api_key, &urls).await;
    let (code, message) = failed_step(
        &app.run_flow_as(
            &attacker.api_key,
            call(&format!("http://localhost:{port}/x")),
            json!({}),
        )
        .await,
    );
    assert_eq!(code, "egress_denied");
    assert!(
        message.contains(&format!("localhost:{port}")),
        "the refusal names the host: {message}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request reached the server");
    app.teardown().await;
}

#[tokio::test]
async fn a_redirect_cannot_lead_a_flow_to_an_address_the_policy_denies() {
    let (inner, inner_hits) = counting_server().await;
    let inner_port = port_of(&inner);
    let outer =
        serve(
            axum::Router::new()
                .route(
                    "/to-ip",
                    get(move || async move {
                        axum::response::Redirect::temporary(&format!("http://127.0.0.1:{inner_port}/"))
                    }),
                )
                .route(
                    "/to-name",
                    get(move || async move {
                        axum::response::Redirect::temporary(&format!("http://localhost:{inner_port}/"))
                    }),
                )
                .route(
                    "/to-mapped",
                    get(move || async move {
                        axum::response::Redirect::temporary(&format!("http://[::ffff:127.0.0.1]:{inner_port}/"))
                    }),
                ),
        )
        .await;
    let outer_port = port_of(&outer);
    // Only the first hop is trusted.
    let app = TestApp::spawn_configured(Options::default(), |c| {
        c.egress_allow = floq_shared::egress::parse_allow_list(&format!("127.0.0.1:{outer_port}")).unwrap();
    })
    .await;
    let attacker = app.other_company().await;
    let urls: Vec<String> = ["to-ip", "to-name", "to-mapped"]
        .iter()
        .map(|p| format!("{outer}/{p}"))
        .collect();
    assert_all_denied(&app, &attacker.api_key, &urls).await;
    assert_eq!(inner_hits.load(Ordering::SeqCst), 0);
    app.teardown().await;
}

#[tokio::test]
async fn opening_loopback_never_reopens_the_platforms_database_broker_or_listeners() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: true,
    })
    .await;
    let worker = app.start_worker().await;
    let attacker = app.other_company().await;
    let urls = vec![
        format!("{}/api/v1/flows", app.base),
        format!("{}/metrics", app.base),
        format!("http://{}/metrics", app.api_metrics),
        format!("http://{worker}/metrics"),
        format!("http://localhost:{}/metrics", worker.port()),
        "http://127.0.0.1:5432/".to_string(),
        "http://[::ffff:127.0.0.1]:5432/".to_string(),
        "http://127.0.0.2:5432/".to_string(),
        "http://127.0.0.1:5672/".to_string(),
    ];
    assert_all_denied(&app, &attacker.api_key, &urls).await;
    // What the allow-list opens still works.
    let (base, hits) = counting_server().await;
    let run = app.run_flow_as(&attacker.api_key, call(&base), json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    app.teardown().await;
}

#[tokio::test]
async fn the_postgres_node_connects_only_through_a_credential_and_never_to_the_platform_database() {
    let app = TestApp::spawn().await;
    let attacker = app.other_company().await;
    let key = &attacker.api_key;
    let steal = "SELECT count(*)::text AS n FROM credentials";

    // No inline URI at all: reaching a database is a credential, and a credential is a grant.
    let (status, body) = app
        .post(
            "/api/v1/flows",
            key,
            json!({"name": "steal", "definition": {"nodes": [{"id": "q", "type": "postgres", "params": {
                "connection_uri": floq_tests::database_url(&app.db_name), "query": steal}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    assert!(body.to_string().contains("connection_uri"), "{body}");

    let db = &app.db_name;
    for (uri, expected) in [
        (
            format!("postgres://postgres:not-checked-1@127.0.0.1:5432/{db}"),
            "egress_denied",
        ),
        (
            format!("postgres://postgres:not-checked-1@localhost/{db}"),
            "egress_denied",
        ),
        (
            format!("postgresql://postgres:not-checked-1@[::1]:5432/{db}"),
            "egress_denied",
        ),
        (
            format!("postgres://postgres:not-checked-1@127.0.0.1:5672/{db}"),
            "egress_denied",
        ),
        (format!("postgres:///{db}"), "invalid_params"),
        // No password: sqlx would take the worker's own PGPASSWORD or ~/.pgpass.
        (format!("postgres://postgres@203.0.113.9/{db}"), "invalid_params"),
        (
            format!("postgres://x:not-checked-1@10.9.9.9/{db}?host=/var/run/postgresql"),
            "invalid_params",
        ),
        (
            format!("postgres://x:not-checked-1@203.0.113.9/{db}?sslmode=require&sslkey=/etc/ssl/private/k.pem"),
            "invalid_params",
        ),
    ] {
        let cred = app.credential(key, "postgres", json!({"uri": uri})).await;
        let run = app
            .run_flow_as(
                key,
                json!({"nodes": [{"id": "q", "type": "postgres", "params": {"credential_id": cred, "query": steal}}]}),
                json!({}),
            )
            .await;
        let (code, message) = failed_step(&run);
        assert_eq!(code, expected, "{uri}: {run}");
        assert!(!message.contains("postgres@"), "no credential in the error: {message}");
        assert!(run["output"].is_null(), "{run}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn smtp_send_obeys_the_egress_policy() {
    let app = TestApp::spawn_configured(Options::default(), |c| c.egress_allow.clear()).await;
    let attacker = app.other_company().await;
    let sink = SmtpSink::start().await;
    for uri in [
        format!("smtp://127.0.0.1:{}", sink.port),
        format!("smtp://localhost:{}", sink.port),
        "smtp://127.0.0.1:5432".to_string(),
    ] {
        let run = app
            .run_flow_as(
                &attacker.api_key,
                json!({"nodes": [{"id": "mail", "type": "smtp_send", "params": {
                    "smtp_uri": uri, "from": "a@globex.test", "to": "b@globex.test", "subject": "hi", "text": "x"}}]}),
                json!({}),
            )
            .await;
        assert_eq!(failed_step(&run).0, "egress_denied", "{uri}: {run}");
    }
    assert!(sink.received().is_empty());
    app.teardown().await;
}
