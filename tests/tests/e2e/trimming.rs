//! The retention pass trims rows that stop mattering on their own clock:
//! sessions a day past their expiry, sign-in buckets that forgave every
//! failure, cron fire records older than a day. Live ones stay.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use floq_scheduler::retention::{self, Trimmed};
use floq_tests::{Options, TestApp};

#[tokio::test]
async fn retention_trims_dead_sessions_sign_in_buckets_and_fire_records_and_keeps_live_ones() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let (company, user) = (app.admin.company_id, app.admin.user_id);

    // Sessions: (expired how long ago, or negative for still live; revoked?) → kept?
    let sessions = [
        ("2 days", false, false),
        ("3 days", true, false),
        ("1 hour", false, true),
        ("-1 hour", false, true),
        ("-1 hour", true, true),
    ];
    let mut session_ids = Vec::new();
    for (ago, revoked, _) in sessions {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, company_id, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, now() - $5::interval, CASE WHEN $6 THEN now() END)",
        )
        .bind(id)
        .bind(id.as_bytes().to_vec())
        .bind(user)
        .bind(company)
        .bind(ago)
        .bind(revoked)
        .execute(&app.pool)
        .await
        .unwrap();
        session_ids.push(id);
    }

    // Sign-in buckets: (failures, last failure how long ago, locked for) → kept?
    let buckets = [
        ("forgiven", 2, "10 minutes", None, false),
        ("forgiven-lock-over", 9, "20 minutes", Some("-5 minutes"), false),
        ("still-counting", 30, "10 minutes", None, true),
        ("still-locked", 1, "2 hours", Some("1 minute"), true),
        ("fresh", 1, "0 seconds", None, true),
    ];
    for (key, failures, ago, locked, _) in buckets {
        sqlx::query(
            "INSERT INTO login_attempts (key, failures, locked_until, updated_at)
             VALUES ($1, $2, now() + $3::interval, now() - $4::interval)",
        )
        .bind(key)
        .bind(failures)
        .bind(locked)
        .bind(ago)
        .execute(&app.pool)
        .await
        .unwrap();
    }

    // Fire records of a real schedule: two days old (go), an hour old (stays).
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, schedule) = app
        .post(
            &format!("/api/v1/flows/{flow}/schedules"),
            &app.admin.api_key,
            json!({"cron": "0 0 1 1 *", "enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    let schedule: Uuid = schedule["id"].as_str().unwrap().parse().unwrap();
    // Written as the tenant, as the scheduler does: the test's own role may only write through its roles' policies.
    let mut tx = floq_shared::db::tenant_tx(&app.pool, company).await.unwrap();
    for ago in ["2 days", "3 days", "1 hour"] {
        sqlx::query(
            "INSERT INTO schedule_fires (schedule_id, company_id, tick, fired_at)
             VALUES ($1, $2, now() - $3::interval, now() - $3::interval)",
        )
        .bind(schedule)
        .bind(company)
        .bind(ago)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    let swept = retention::enforce(&app.pool).await.unwrap();
    assert_eq!(
        swept.dead,
        Trimmed {
            sessions: 2,
            login_attempts: 2,
            schedule_fires: 2,
            sso_states: 0,
        }
    );

    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM sessions WHERE id = ANY($1) ORDER BY id")
        .bind(&session_ids)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let kept: Vec<Uuid> = session_ids
        .iter()
        .zip(sessions)
        .filter(|(_, (_, _, kept))| *kept)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(left, kept, "sessions within a day of expiry and live ones stay");

    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM login_attempts ORDER BY key")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut kept: Vec<String> = buckets.iter().filter(|b| b.4).map(|b| b.0.to_string()).collect();
    kept.sort();
    assert_eq!(left, kept, "buckets still counting or locked stay");

    // Read as the tenant too.
    let mut tx = floq_shared::db::tenant_tx(&app.pool, company).await.unwrap();
    let (recent, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE fired_at > now() - interval '2 hours'), count(*) FROM schedule_fires",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((recent, all), (1, 1), "the recent fire record stays");

    // A second pass finds nothing more.
    assert_eq!(retention::trim_dead_rows(&app.pool).await.unwrap(), Trimmed::default());
    app.teardown().await;
}
