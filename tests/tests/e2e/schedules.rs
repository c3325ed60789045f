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
    assert_eq!(schedule["upcoming"].as_array().unwrap().len(), 3);
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
