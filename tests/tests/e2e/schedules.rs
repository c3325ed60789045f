//! Cron schedules: seconds-level firing through the outbox path, exactly one
//! run per tick, and a standby scheduler taking over without a double fire
//! or a missed tick.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use floq_tests::TestApp;

async fn fire_ticks(app: &TestApp) -> Vec<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT tick FROM schedule_fires ORDER BY tick")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_schedule_fires_each_tick_once_through_the_outbox_path() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    for (bad, field) in [
        (json!({"cron": "* * *"}), "cron"),
        (json!({"cron": "*/5 * * * *", "timezone": "Mars/Olympus"}), "timezone"),
        (json!({"cron": "*/5 * * * *", "misfire": "sometimes"}), "misfire"),
    ] {
        let (status, body) = app.post(&format!("/api/v1/flows/{flow}/schedules"), &admin, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
    }
    let (status, schedule) = app
        .post(
            &format!("/api/v1/flows/{flow}/schedules"),
            &admin,
            json!({"cron": "*/1 * * * * *", "timezone": "Europe/Berlin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    assert_eq!(schedule["next_fires"].as_array().unwrap().len(), 5);
    tokio::time::sleep(Duration::from_millis(3_500)).await;

    let ticks = fire_ticks(&app).await;
    assert!(ticks.len() >= 2, "{ticks:?}");
    let runs: Vec<(String, String)> = sqlx::query_as("SELECT trigger, status FROM runs")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(
        runs.len() >= ticks.len() - 1 && runs.len() <= ticks.len(),
        "one run per tick: {runs:?} {ticks:?}"
    );
    assert!(runs.iter().all(|(t, _)| t == "cron"));
    let (_, listed) = app.get(&format!("/api/v1/flows/{flow}/schedules"), &admin).await;
    let shown = &listed["items"][0];
    assert!(shown["last_fired_at"].is_string(), "{listed}");
    assert!(shown["last_drift_ms"].as_i64().unwrap() < 5_000, "{listed}");
    let (_, fires) = app.get("/api/v1/audit?action=job.cron_fire", &admin).await;
    assert!(!fires["items"].as_array().unwrap().is_empty());

    let id = schedule["id"].as_str().unwrap();
    let (status, _) = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/flows/{flow}/schedules/{id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.teardown().await;
}

#[tokio::test]
async fn a_standby_takes_over_without_a_double_fire_or_a_missed_tick() {
    let mut app = TestApp::spawn().await;
    let standby_stop = CancellationToken::new();
    let standby = floq_scheduler::spawn(app.config.clone(), standby_stop.clone())
        .await
        .unwrap();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/flows/{flow}/schedules"),
            &app.admin.api_key,
            json!({"cron": "*/1 * * * * *"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let before = fire_ticks(&app).await.len();
    assert!(before >= 1, "the leader fires");

    // The leader goes away; the standby must lead within seconds and catch up.
    app.scheduler.take().unwrap().stop().await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let ticks = fire_ticks(&app).await;
    assert!(
        ticks.len() >= before + 3,
        "the standby took over: {before} then {}",
        ticks.len()
    );
    for pair in ticks.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 1, "no tick missed: {ticks:?}");
    }
    standby_stop.cancel();
    standby.handle.await.unwrap().unwrap();
    // One snapshot for both counts, after both schedulers stopped.
    let (runs, fired): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM schedule_fires WHERE run_id IS NOT NULL)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(runs, fired, "exactly one run per fired tick");
    app.teardown().await;
}

/// Audit entries of `action`, waiting up to 5 s for the first.
async fn audited(app: &TestApp, action: &str) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = app
            .get(&format!("/api/v1/audit?action={action}"), &app.admin.api_key)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["items"].as_array().unwrap().clone();
        if !items.is_empty() || tokio::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_paused_schedule_does_not_fire_and_resumes_from_the_next_tick() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, schedule) = app
        .post(
            &format!("/api/v1/flows/{flow}/schedules"),
            &admin,
            json!({"cron": "*/1 * * * * *", "misfire": "fire_once"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    assert_eq!(schedule["paused"], false);
    let id = schedule["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/flows/{flow}/schedules/{id}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let (status, paused) = app
        .request(reqwest::Method::PATCH, &path, &admin, Some(json!({"paused": true})))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["enabled"], false);
    assert_eq!(paused["next_fires"], json!([]));
    let fired = fire_ticks(&app).await.len();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(fire_ticks(&app).await.len(), fired, "a paused schedule fired");
    let (_, shown) = app.get(&path, &admin).await;
    assert_eq!(shown["paused"], true, "{shown}");

    let resumed_at = chrono::Utc::now();
    let (status, resumed) = app
        .request(reqwest::Method::PATCH, &path, &admin, Some(json!({"paused": false})))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["paused"], false);
    let next: Vec<chrono::DateTime<chrono::Utc>> = serde_json::from_value(resumed["next_fires"].clone()).unwrap();
    assert_eq!(next.len(), 5);
    assert!(next.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 1), "{next:?}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let ticks = fire_ticks(&app).await;
    assert!(ticks.len() > fired, "it fires again: {ticks:?}");
    // `fire_once` does not make up for the pause: every tick after the pause is after the resume.
    assert!(
        ticks[fired..]
            .iter()
            .all(|t| *t > resumed_at - chrono::Duration::seconds(1)),
        "{ticks:?}"
    );

    let pauses = audited(&app, "schedule.pause").await;
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(pauses[0]["resource"]["id"], id.as_str(), "{pauses:?}");
    assert_eq!(pauses[0]["details"]["before"]["enabled"], true, "{pauses:?}");
    assert_eq!(pauses[0]["details"]["after"]["enabled"], false, "{pauses:?}");
    assert_eq!(audited(&app, "schedule.resume").await.len(), 1);
    app.teardown().await;
}

#[tokio::test]
async fn pausing_needs_edit_and_other_companies_find_no_schedule() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (_, schedule) = app
        .post(
            &format!("/api/v1/flows/{flow}/schedules"),
            &admin,
            json!({"cron": "0 9 * * *"}),
        )
        .await;
    let path = format!("/api/v1/flows/{flow}/schedules/{}", schedule["id"].as_str().unwrap());
    let pause = Some(json!({"paused": true}));

    let globex = app.other_company().await;
    for method in [reqwest::Method::GET, reqwest::Method::PATCH] {
        let (status, body) = app.request(method.clone(), &path, &globex.api_key, pause.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}: {body}");
        floq_tests::assert_error(&body, "not_found", "flow not found", serde_json::Value::Null);
    }
    let (status, body) = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/flows/{flow}/schedules/{}", uuid::Uuid::now_v7()),
            &admin,
            pause.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    floq_tests::assert_error(&body, "not_found", "schedule not found", serde_json::Value::Null);

    // A viewer with a `view` grant sees it, with its next fires, but may not pause it.
    let viewer = app.member(&["viewer"]).await;
    app.grant("user", viewer.user_id, "flow", &flow, "view").await;
    let (status, shown) = app.get(&path, &viewer.api_key).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["next_fires"].as_array().unwrap().len(), 5, "{shown}");
    let (status, body) = app
        .request(reqwest::Method::PATCH, &path, &viewer.api_key, pause.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    floq_tests::assert_error(
        &body,
        "forbidden",
        "your role does not allow `flow:edit`",
        serde_json::Value::Null,
    );
    // An editor with only a `view` grant: the grant is below `edit`.
    let editor = app.member(&["flow_editor"]).await;
    app.grant("user", editor.user_id, "flow", &flow, "view").await;
    let (status, body) = app
        .request(reqwest::Method::PATCH, &path, &editor.api_key, pause.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = app
        .request(reqwest::Method::PATCH, &path, &admin, Some(json!({"paused": "yes"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "body", "{body}");
    let (status, body) = app
        .request(reqwest::Method::PATCH, &path, &admin, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.teardown().await;
}
