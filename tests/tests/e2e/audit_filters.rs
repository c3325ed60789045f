//! Bounded audit work: the log's filters are served by indexes, and chain
//! verification goes in steps that together check every link once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use floq_tests::{Options, TestApp};

/// The page `query` answers.
async fn listed(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/audit?{query}"), &app.admin.api_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// The plan of the listing's statement with this condition, prepared with
/// bound parameters as the handler's is (the handler's shape).
async fn plan(app: &TestApp, company: Uuid, condition: &str, types: &str, values: &str) -> String {
    let mut tx = floq_shared::db::tenant_tx(&app.pool, company).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(
        format!(
            "PREPARE listing(uuid, {types}, bigint) AS
         SELECT id, floq_audit_json(a)::text FROM (
            SELECT * FROM audit_log WHERE company_id = $1 AND {condition} ORDER BY id DESC LIMIT $LAST
         ) a ORDER BY id DESC"
        )
        .replace("$LAST", &format!("${}", types.split(',').count() + 2)),
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE listing('{company}', {values}, 50)"
    )))
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    // A prepared statement outlives the transaction: the connection goes back to the pool.
    sqlx::query("DEALLOCATE listing").execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    let plan = plan.join("\n");
    println!("{condition}:\n{plan}");
    plan
}

#[tokio::test]
async fn audit_filters_are_served_by_their_indexes() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let company = app.admin.company_id;
    let actor = Uuid::now_v7();
    // 60 000 entries of 60 actions, a handful of the ones looked for.
    sqlx::query(
        "INSERT INTO audit_log (company_id, at, actor_type, actor_id, actor_label, action, resource_type, resource_id, outcome)
         SELECT $1, now() - make_interval(secs => 60000 - i),
                CASE WHEN i % 2 = 0 THEN 'user' ELSE 'system' END,
                CASE WHEN i % 2 = 0 THEN gen_random_uuid() END,
                CASE WHEN i % 2 = 1 THEN 'worker' END,
                (ARRAY['http.request', 'node.execute', 'run.create'])[1 + i % 3] || (i % 20),
                'run', gen_random_uuid()::text, 'success'
           FROM generate_series(1, 60000) i",
    )
    .bind(company)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (company_id, at, actor_type, actor_id, action, resource_type, resource_id, outcome)
         SELECT $1, now() - make_interval(secs => i * 1000), 'user', $2, 'flow.deploy', 'flow', 'f-' || (i % 2), 'success'
           FROM generate_series(1, 5) i",
    )
    .bind(company)
    .bind(actor)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE audit_log").execute(&app.pool).await.unwrap();

    let hits = listed(&app, "action=flow.deploy").await;
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|e| e["action"] == "flow.deploy"));
    assert_eq!(listed(&app, "action=flow.*&limit=3").await.len(), 3);
    assert_eq!(listed(&app, &format!("actor={actor}")).await.len(), 5);
    assert_eq!(listed(&app, "resource_type=flow&resource_id=f-1").await.len(), 3);

    // Each filter's statement, as the handler builds it, scans its index
    // backwards and stops at the page.
    for (condition, types, values, index) in [
        ("action = $2", "text", "'flow.deploy'", "audit_log_action_idx"),
        (
            "actor_id = $2",
            "uuid",
            &format!("'{actor}'") as &str,
            "audit_log_actor_id_idx",
        ),
        ("actor_label = $2", "text", "'scheduler'", "audit_log_actor_label_idx"),
        (
            "resource_type = $2 AND resource_id = $3",
            "text, text",
            "'flow', 'f-1'",
            "audit_log_resource_idx",
        ),
    ] {
        let plan = plan(&app, company, condition, types, values).await;
        assert!(
            plan.contains(&format!("Index Scan Backward using {index}")),
            "{condition}: {plan}"
        );
    }
    // A prefix is a byte-order range of the action index.
    let plan = plan(
        &app,
        company,
        "action ~>=~ $2 AND action ~<~ $3",
        "text, text",
        "'flow.', 'flow/'",
    )
    .await;
    assert!(plan.contains("audit_log_action_idx"), "{plan}");
    app.teardown().await;
}

async fn verify(app: &TestApp, query: &str) -> Value {
    let (status, body) = app
        .get(&format!("/api/v1/audit/verify?{query}"), &app.admin.api_key)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Follows `next_seq` from the start, `limit` links a call; every step's report.
async fn verify_in_steps(app: &TestApp, limit: i64) -> Vec<Value> {
    let mut steps = Vec::new();
    let mut query = format!("limit={limit}");
    loop {
        let step = verify(app, &query).await;
        let next = step["next_seq"].as_i64();
        steps.push(step);
        match next {
            Some(next) => query = format!("limit={limit}&from_seq={next}"),
            None => return steps,
        }
        assert!(steps.len() < 100, "verification never ended");
    }
}

#[tokio::test]
async fn verification_goes_in_bounded_steps_that_check_every_link_once_and_still_find_a_break() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: true,
    })
    .await;
    let company = app.admin.company_id;
    sqlx::query(
        "INSERT INTO audit_log (company_id, at, actor_type, actor_label, action, outcome)
         SELECT $1, now(), 'system', 'test', 'test.bulk', 'success' FROM generate_series(1, 40)",
    )
    .bind(company)
    .execute(&app.pool)
    .await
    .unwrap();
    // Wait for the sealer, then hold the chain still: sealing is over and no
    // request entries of this test are written while it checks (none are: the
    // API's own entries go to the company too, so count seals, not calls).
    let sealed = loop {
        let (pending, sealed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit_log WHERE company_id = $1 AND action = 'test.bulk'
                       AND NOT EXISTS (SELECT 1 FROM audit_seals s WHERE s.entry_id = audit_log.id)),
                    (SELECT count(*) FROM audit_seals WHERE company_id = $1)",
        )
        .bind(company)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if pending == 0 {
            break sealed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(sealed >= 40);

    let steps = verify_in_steps(&app, 7).await;
    assert!(steps.iter().all(|s| s["ok"] == true), "{steps:?}");
    assert!(steps.iter().all(|s| s["checked"].as_i64().unwrap() <= 7));
    let checked: i64 = steps.iter().map(|s| s["checked"].as_i64().unwrap()).sum();
    assert!(checked >= sealed, "every sealed link is checked: {checked} of {sealed}");
    for pair in steps.windows(2) {
        assert_eq!(
            pair[1]["from_seq"].as_i64().unwrap(),
            pair[0]["last_seq"].as_i64().unwrap() + 1,
            "steps follow each other without gap or overlap: {pair:?}"
        );
    }
    assert_eq!(steps[0]["from_seq"], 1);
    assert!(steps.last().unwrap()["next_seq"].is_null());

    // Tamper with the entry sealed at seq 10: only the step holding it says so.
    let target: i64 = sqlx::query_scalar("SELECT entry_id FROM audit_seals WHERE company_id = $1 AND seq = 10")
        .bind(company)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET action = 'test.tampered' WHERE id = $1")
        .bind(target)
        .execute(&app.pool)
        .await
        .unwrap();
    let step = verify(&app, "limit=7&from_seq=8").await;
    assert_eq!(step["ok"], false, "{step}");
    assert_eq!(
        step["first_broken"],
        json!({"seq": 10, "entry_id": target, "reason": "entry_altered"})
    );
    assert_eq!(verify(&app, "limit=7&from_seq=1").await["ok"], true);
    // A whole verification from the start (one call) still finds it.
    assert_eq!(verify(&app, "").await["first_broken"]["seq"], 10);

    // A seal removed right at a step's boundary is found by the next step.
    sqlx::query("DELETE FROM audit_seals WHERE company_id = $1 AND seq = 22")
        .bind(company)
        .execute(&app.pool)
        .await
        .unwrap();
    let step = verify(&app, "limit=7&from_seq=22").await;
    assert_eq!(step["first_broken"]["reason"], "seal_missing", "{step}");
    assert_eq!(step["first_broken"]["seq"], 23);

    // Below the anchor is the anchor; bad values are refused naming them.
    assert_eq!(verify(&app, "from_seq=0&limit=1").await["from_seq"], 1);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("from_seq=-1", "from_seq"),
        ("from_seq=x", "from_seq"),
    ] {
        let (status, body) = app
            .get(&format!("/api/v1/audit/verify?{query}"), &app.admin.api_key)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{query}");
    }
    app.teardown().await;
}
