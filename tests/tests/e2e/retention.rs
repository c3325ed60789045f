//! Retention: the scheduler deletes what a company's settings say — old and
//! surplus audit entries from the start of the chain, old finished runs —
//! in batches, audits each pass, and leaves everything else alone.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use floq_tests::{Options, TestApp};

/// Makes a finished run (with its steps) look `age` old as a real one would:
/// queued then, under a uuid v7 made then (retention ages runs by both).
/// Returns its new id.
async fn backdated(app: &TestApp, run: &str, age: chrono::Duration) -> String {
    let then = chrono::Utc::now() - age;
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, then.timestamp() as u64, then.timestamp_subsec_nanos());
    let id = uuid::Uuid::new_v7(ts);
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO runs (id, company_id, flow_id, version, status, trigger, input, output, error, attempt,
                           queued_at, started_at, finished_at)
         SELECT $2, company_id, flow_id, version, status, trigger, input, output, error, attempt,
                $3, started_at, finished_at FROM runs WHERE id = $1::uuid",
    )
    .bind(run)
    .bind(id)
    .bind(then)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE run_steps SET run_id = $2 WHERE run_id = $1::uuid")
        .bind(run)
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM runs WHERE id = $1::uuid")
        .bind(run)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id.to_string()
}

#[tokio::test]
async fn retention_deletes_exactly_what_the_settings_say_while_the_api_answers() {
    let app = TestApp::spawn_configured(Options::default(), |c| c.retention_interval = Duration::from_secs(1)).await;
    let admin = app.admin.api_key.clone();
    let company = app.admin.company_id;

    // Runs: two finished ten days ago, one finished now, one queued ten days ago (never deleted).
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let run = app.start_run(&flow, json!({})).await;
        app.wait_run(&run).await;
        runs.push(run);
    }
    for run in &mut runs[..2] {
        *run = backdated(&app, run, chrono::Duration::days(10)).await;
    }
    let stuck = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO runs (id, company_id, flow_id, version, status, trigger, input, queued_at)
         VALUES ($1, $2, $3::uuid, 1, 'queued', 'api', '{}', now() - interval '10 days')",
    )
    .bind(stuck)
    .bind(company)
    .bind(&flow)
    .execute(&app.pool)
    .await
    .unwrap();

    // Audit: 3 000 entries from 40 days ago, then 11 000 recent ones.
    for (age, n) in [("40 days", 3_000), ("0 days", 11_000)] {
        sqlx::query(
            "INSERT INTO audit_log (company_id, at, actor_type, action, outcome)
             SELECT $1, now() - $2::interval, 'system', 'test.bulk', 'success' FROM generate_series(1, $3)",
        )
        .bind(company)
        .bind(age)
        .bind(n)
        .execute(&app.pool)
        .await
        .unwrap();
    }

    let (status, body) = app
        .request(
            Method::PUT,
            "/api/v1/settings/retention",
            &admin,
            Some(json!({"audit_max_age_days": 30, "audit_max_entries": 10000, "runs_max_age_days": 7})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut converged = false;
    for _ in 0..150 {
        // The API keeps answering while the scheduler deletes.
        assert_eq!(app.get("/api/v1/flows", &admin).await.0, StatusCode::OK);
        let (old, sealed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit_log WHERE company_id = $1 AND at < now() - interval '30 days'),
                    (SELECT count(*) FROM audit_seals WHERE company_id = $1)",
        )
        .bind(company)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let runs_left: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if old == 0 && sealed <= 10_000 && runs_left == 2 {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(converged, "retention did not converge");

    let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM runs ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(left.contains(&stuck), "a queued run is never deleted");
    assert!(left.iter().any(|id| id.to_string() == runs[2]), "a recent run stays");
    let orphan_steps: i64 = sqlx::query_scalar("SELECT count(*) FROM run_steps WHERE run_id = ANY($1::uuid[])")
        .bind(&runs[..2])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orphan_steps, 0, "steps go with their run");
    let recent_bulk: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'test.bulk' AND at > now() - interval '1 day'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(recent_bulk > 9_000, "the newest entries stay ({recent_bulk})");

    // What remains still verifies: the oldest remaining seal anchors the chain.
    let (_, report) = app.get("/api/v1/audit/verify", &admin).await;
    assert_eq!(report["ok"], true, "{report}");
    let (_, jobs) = app.get("/api/v1/audit?action=job.retention", &admin).await;
    let deleted: i64 = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["audit_entries_deleted"].as_i64().unwrap())
        .sum();
    assert!(deleted >= 4_000, "each pass is audited with counts: {jobs}");
    let runs_deleted: i64 = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["runs_deleted"].as_i64().unwrap())
        .sum();
    assert_eq!(runs_deleted, 2);
    app.teardown().await;
}
