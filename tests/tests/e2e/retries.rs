//! Retrying one finished run and replaying many failed ones: new runs with
//! the original's input, linked by `retry_of`, on the same or the latest
//! version; bounded, filtered, audited, tenant-scoped and capability-checked.

use axum::http::{Method, StatusCode};
use floq_tests::{Options, TestApp, assert_error};
use serde_json::{Value, json};
use uuid::Uuid;

fn flow_v(v: i64) -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"v": v, "n": "{{ $input.n }}"}}}]})
}

async fn redeploy(app: &TestApp, flow: &str, definition: Value) {
    let key = &app.admin.api_key;
    let (status, body) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}"),
            key,
            Some(json!({"definition": definition})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post(&format!("/api/v1/flows/{flow}/deploy"), key, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn audit_actions(app: &TestApp, action: &str) -> Vec<Value> {
    sqlx::query_scalar("SELECT details FROM audit_log WHERE company_id = $1 AND action = $2 ORDER BY id")
        .bind(app.admin.company_id)
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_finished_run_is_retried_on_its_own_version_or_the_latest() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(flow_v(1)).await;
    let first = app.wait_run(&app.start_run(&flow, json!({"n": 7})).await).await;
    assert_eq!(first["output"], json!({"v": 1, "n": 7}));
    assert_eq!(first["retry_of"], Value::Null);
    redeploy(&app, &flow, flow_v(2)).await;
    let id = first["id"].as_str().unwrap();

    // No body at all: the same version.
    let resp = app
        .client
        .post(format!("{}/api/v1/runs/{id}/retry", app.base))
        .bearer_auth(&app.admin.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let same: Value = resp.json().await.unwrap();
    assert_eq!(
        (same["version"].as_i64(), same["retry_of"].as_str()),
        (Some(1), Some(id))
    );
    let same = app.wait_run(same["run_id"].as_str().unwrap()).await;
    assert_eq!(same["output"], json!({"v": 1, "n": 7}), "{same}");
    assert_eq!(
        (same["retry_of"].as_str(), same["input"].clone()),
        (Some(id), json!({"n": 7}))
    );
    assert_eq!(same["trigger"], first["trigger"]);

    let (status, latest) = app
        .post(
            &format!("/api/v1/runs/{id}/retry"),
            &app.admin.api_key,
            json!({"version": "latest"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{latest}");
    assert_eq!(latest["version"], 2);
    let latest = app.wait_run(latest["run_id"].as_str().unwrap()).await;
    assert_eq!(latest["output"], json!({"v": 2, "n": 7}));

    // A retry of a retry links to the run it retries.
    let (status, again) = app
        .post(
            &format!("/api/v1/runs/{}/retry", latest["id"].as_str().unwrap()),
            &app.admin.api_key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["retry_of"], latest["id"]);
    app.wait_run(again["run_id"].as_str().unwrap()).await;

    let retries = audit_actions(&app, "run.retry").await;
    assert_eq!(retries.len(), 3, "{retries:?}");
    assert_eq!(retries[0]["retry_of"].as_str(), Some(id));

    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{id}/retry"),
            &app.admin.api_key,
            json!({"version": "newest"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(
        &body,
        "validation_failed",
        "the request body is invalid",
        json!([{"field": "version", "message": "must be `same` or `latest`"}]),
    );
    app.teardown().await;
}

#[tokio::test]
async fn an_unfinished_run_cannot_be_retried_and_others_get_404_or_403() {
    // No worker: the run stays queued.
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let flow = app.deployed_flow(flow_v(1)).await;
    let run = app.start_run(&flow, json!({})).await;
    let retry = format!("/api/v1/runs/{run}/retry");
    let (status, body) = app.post(&retry, &app.admin.api_key, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(
        &body,
        "run_not_finished",
        "the run is queued; only a finished run can be retried",
        Value::Null,
    );

    let other = app.other_company().await;
    let (status, body) = app.post(&retry, &other.api_key, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app
        .post("/api/v1/runs/replay", &other.api_key, json!({"flow_id": flow}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/v1/runs/{}/retry", Uuid::now_v7()),
            &app.admin.api_key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let viewer = app.member(&["viewer"]).await;
    let (status, body) = app.post(&retry, &viewer.api_key, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app.post("/api/v1/runs/replay", &viewer.api_key, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // An executor without a grant on the flow does not see it.
    let executor = app.member(&["flow_executor"]).await;
    let (status, body) = app.post(&retry, &executor.api_key, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    app.teardown().await;
}

/// A failed run of `flow` accepted at `at`, with error code `code`, written
/// as a worker would have left it.
async fn failed_run(app: &TestApp, flow: &str, code: &str, at: &str, n: i64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO runs (id, company_id, flow_id, version, status, trigger, input, error, queued_at, finished_at)
         VALUES ($1, $2, $3, 1, 'failed', 'api', $4, $5, $6::timestamptz, $6::timestamptz)",
    )
    .bind(id)
    .bind(app.admin.company_id)
    .bind(Uuid::parse_str(flow).unwrap())
    .bind(json!({"n": n}))
    .bind(json!({"code": code, "message": "it failed"}))
    .bind(at)
    .execute(&app.pool)
    .await
    .unwrap();
    id
}

fn originals(answer: &Value) -> Vec<String> {
    answer["replayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["original_run_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn replay_restarts_matching_failed_runs_once_bounded_and_audited() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(flow_v(1)).await;
    let other_flow = app.deployed_flow(flow_v(9)).await;
    let jan = [
        failed_run(&app, &flow, "worker_lost", "2026-01-01T10:00:00Z", 1).await,
        failed_run(&app, &flow, "worker_lost", "2026-01-02T10:00:00Z", 2).await,
        failed_run(&app, &flow, "worker_lost", "2026-01-03T10:00:00Z", 3).await,
    ];
    let _other_code = failed_run(&app, &flow, "delivery_limit_exceeded", "2026-01-02T11:00:00Z", 4).await;
    let _other_flow = failed_run(&app, &other_flow, "worker_lost", "2026-01-02T12:00:00Z", 5).await;
    let _february = failed_run(&app, &flow, "worker_lost", "2026-02-02T10:00:00Z", 6).await;
    let key = app.admin.api_key.clone();
    let filter = json!({"flow_id": flow, "error_code": "worker_lost", "from": "2026-01-01T00:00:00Z",
                        "to": "2026-02-01T00:00:00Z", "limit": 2});

    let mut dry = filter.clone();
    dry["dry_run"] = json!(true);
    let (status, answer) = app.post("/api/v1/runs/replay", &key, dry).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["matched"].as_i64(), answer["truncated"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(originals(&answer), [jan[0].to_string(), jan[1].to_string()]);
    assert_eq!(answer["replayed"][0]["run_id"], Value::Null);
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE retry_of IS NOT NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "a dry run starts nothing");

    let (status, answer) = app.post("/api/v1/runs/replay", &key, filter.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        (answer["matched"].as_i64(), answer["truncated"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(originals(&answer), [jan[0].to_string(), jan[1].to_string()]);
    for (i, replayed) in answer["replayed"].as_array().unwrap().iter().enumerate() {
        let run = app.wait_run(replayed["run_id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["retry_of"].as_str(), Some(jan[i].to_string().as_str()));
        assert_eq!(run["output"], json!({"v": 1, "n": i as i64 + 1}));
    }

    // The same filter again: the replayed runs are not replayed twice.
    let (status, answer) = app.post("/api/v1/runs/replay", &key, filter.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        (answer["matched"].as_i64(), answer["truncated"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(originals(&answer), [jan[2].to_string()]);
    let (status, answer) = app.post("/api/v1/runs/replay", &key, filter).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        (answer["matched"].as_i64(), answer["replayed"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );

    let audited = audit_actions(&app, "run.replay").await;
    assert_eq!(audited.len(), 3, "{audited:?}");
    assert_eq!(audited[0]["replayed"], 2);
    assert_eq!(audited[0]["matched"], 3);
    assert_eq!(audited[0]["filter"]["error_code"], "worker_lost");
    assert_eq!(audited[0]["filter"]["limit"], 2);

    // A flow executor replays only the flows it may execute.
    let executor = app.member(&["flow_executor"]).await;
    let (status, answer) = app
        .post("/api/v1/runs/replay", &executor.api_key, json!({"dry_run": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["matched"], 0, "{answer}");
    app.grant("user", executor.user_id, "flow", &other_flow, "execute")
        .await;
    let (status, answer) = app
        .post("/api/v1/runs/replay", &executor.api_key, json!({"dry_run": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["matched"], 1, "{answer}");
    app.teardown().await;
}

#[tokio::test]
async fn bad_replay_filters_get_a_422_naming_the_field() {
    let app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        |c| c.replay_max = 50,
    )
    .await;
    let key = app.admin.api_key.clone();
    for (body, field, message) in [
        (
            json!({"from": "yesterday"}),
            "from",
            "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
        ),
        (
            json!({"to": "2026-13-01T00:00:00Z"}),
            "to",
            "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
        ),
        (
            json!({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            "from",
            "must not be after `to`",
        ),
        (
            json!({"limit": 0}),
            "limit",
            "must be between 1 and 50 (FLOQ_REPLAY_MAX)",
        ),
        (
            json!({"limit": 51}),
            "limit",
            "must be between 1 and 50 (FLOQ_REPLAY_MAX)",
        ),
        (json!({"flow_id": "nope"}), "flow_id", "must be a flow id (UUID)"),
        (json!({"version": "v1"}), "version", "must be `same` or `latest`"),
        (json!({"error_code": ""}), "error_code", "must be 1 to 100 characters"),
    ] {
        let (status, answer) = app.post("/api/v1/runs/replay", &key, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_error(
            &answer,
            "validation_failed",
            "the request body is invalid",
            json!([{"field": field, "message": message}]),
        );
    }
    let (status, answer) = app.post("/api/v1/runs/replay", &key, json!({"colour": "red"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["details"][0]["field"], "body");
    app.teardown().await;
}
