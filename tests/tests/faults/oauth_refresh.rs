//! Issue 16: an expired OAuth2 access token, 50 concurrent runs, two worker
//! processes. Exactly one refresh reaches the provider (single-flight in
//! each worker, and across them through the lease on the link's row), the
//! rotated refresh token is stored before anyone uses the new access token,
//! and every run calls the API with the new token.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use floq_tests::oauth_server::{self, CLIENT_ID, CLIENT_SECRET, OAuthServer};
use floq_tests::private::free_port;
use floq_tests::process::Kind;
use floq_tests::stack::StackOptions;

use crate::{serial, stack};

/// One metric's value summed over its label sets matching `labels`, from a service's `/metrics`.
async fn metric(health: std::net::SocketAddr, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("http://{health}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn fifty_runs_on_two_worker_processes_refresh_an_expired_token_exactly_once() {
    let _serial = serial().await;
    let server = OAuthServer::start().await;
    // Slow enough that runs on both workers find the token expired while the refresh is in flight.
    server.slow_refreshes(Duration::from_millis(800));
    let dir = std::env::temp_dir().join(format!("floq-oauth-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("provider file directory");
    let file = dir.join("providers.json");
    std::fs::write(&file, json!([server.provider("mock", "post")]).to_string()).expect("provider file");
    let mut stack = stack(StackOptions {
        vars: vec![("FLOQ_OAUTH_PROVIDERS_FILE", file.display().to_string())],
        ..Default::default()
    })
    .await;
    let second_addr = format!("127.0.0.1:{}", free_port());
    let second = stack
        .spawn(Kind::Worker, &[("FLOQ_WORKER_HTTP_ADDR", second_addr.as_str())])
        .await;
    let first = stack.worker.take().expect("the stack's worker");

    let (status, credential) = stack
        .post(
            "/api/v1/credentials",
            json!({"name": "mock", "type": "oauth2",
                   "data": {"provider": "mock", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{credential}");
    let id = credential["id"].as_str().unwrap().to_string();
    let (status, _, body) = oauth_server::connect(&stack.base, &stack.admin.api_key, &id, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (old_access, old_refresh) = (server.current_access().unwrap(), server.current_refresh().unwrap());
    sqlx::query("UPDATE oauth_links SET expires_at = now() - interval '1 minute' WHERE credential_id = $1::uuid")
        .bind(&id)
        .execute(&stack.pool)
        .await
        .unwrap();
    let generation_before: i64 =
        sqlx::query_scalar("SELECT generation FROM oauth_links WHERE credential_id = $1::uuid")
            .bind(&id)
            .fetch_one(&stack.pool)
            .await
            .unwrap();

    let flow = stack
        .deployed_flow(json!({"nodes": [{"id": "call", "type": "http_request",
                                         "params": {"method": "GET", "url": server.api_url(), "credential_id": id}}]}))
        .await;
    // Both workers consume before the runs arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts = (0..50).map(|i| stack.start_run(&flow, json!({"n": i})));
    let runs = futures_util::future::join_all(starts).await;
    assert_eq!(runs.len(), 50);
    stack.wait_finished(50, Duration::from_secs(120)).await;

    let outcomes: Vec<(String, Option<i32>)> = sqlx::query_as(
        "SELECT r.status, (s.output->>'status')::int FROM runs r LEFT JOIN run_steps s ON s.run_id = r.id AND s.node_id = 'call'",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(outcomes.len(), 50);
    assert!(
        outcomes
            .iter()
            .all(|(status, code)| status == "succeeded" && *code == Some(200)),
        "every run called the API successfully: {outcomes:?}; logs in {}",
        stack.logs.display()
    );
    assert_eq!(server.refreshes(), 1, "exactly one refresh reached the provider");
    let new_access = server.current_access().unwrap();
    assert_ne!(new_access, old_access);
    assert_ne!(
        server.current_refresh().unwrap(),
        old_refresh,
        "the refresh token rotated"
    );
    let bearers = server.bearers();
    assert_eq!(bearers.len(), 50, "one call per run, none refused and retried");
    assert!(bearers.iter().all(|b| *b == new_access), "every run used the new token");
    let generation_after: i64 = sqlx::query_scalar("SELECT generation FROM oauth_links WHERE credential_id = $1::uuid")
        .bind(&id)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(generation_after, generation_before + 1, "one stored refresh");

    // Both processes ran some of the runs, and only one of them refreshed.
    let used = [
        metric(first.health, "floq_secret_decryptions_total", "kind=\"credential\"").await,
        metric(second.health, "floq_secret_decryptions_total", "kind=\"credential\"").await,
    ];
    let refreshed = metric(first.health, "floq_oauth_refreshes_total", "outcome=\"refreshed\"").await
        + metric(second.health, "floq_oauth_refreshes_total", "outcome=\"refreshed\"").await;
    println!("oauth refresh: credential uses per worker {used:?}, refreshes {refreshed}");
    assert!(used.iter().all(|n| *n > 0.0), "both workers ran runs: {used:?}");
    assert_eq!(used.iter().sum::<f64>(), 50.0);
    assert_eq!(refreshed, 1.0);
    drop((first, second));
    let _ = std::fs::remove_dir_all(dir);
}
