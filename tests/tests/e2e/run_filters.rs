//! The runs list filtered by trigger and created time, beside flow and status.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use floq_tests::{Options, TestApp, assert_error};

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn runs_are_filtered_by_trigger_and_created_time_and_bad_values_name_their_parameter() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let key = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let first = app.start_run(&flow, json!({})).await;
    let second = app.start_run(&flow, json!({})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &key,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let resp = app
        .client
        .post(format!("{}{}", app.base, hook["path"].as_str().unwrap()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let hooked = resp.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, page) = app.get("/api/v1/runs?trigger=webhook", &key).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [hooked.as_str()]);
    let (_, page) = app.get(&format!("/api/v1/runs?trigger=api&flow_id={flow}"), &key).await;
    assert_eq!(ids(&page), [second.as_str(), first.as_str()]);
    let (_, page) = app.get("/api/v1/runs?trigger=cron", &key).await;
    assert!(ids(&page).is_empty(), "{page}");
    let (_, page) = app.get(&format!("/api/v1/runs?from={between}"), &key).await;
    assert_eq!(ids(&page), [hooked.as_str()]);
    let (_, page) = app.get(&format!("/api/v1/runs?to={between}&status=queued"), &key).await;
    assert_eq!(ids(&page), [second.as_str(), first.as_str()]);
    // The time bounds and the cursor together.
    let (_, page) = app.get(&format!("/api/v1/runs?to={between}&limit=1"), &key).await;
    assert_eq!(ids(&page), [second.as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = app
        .get(&format!("/api/v1/runs?to={between}&limit=1&cursor={cursor}"), &key)
        .await;
    assert_eq!(ids(&page), [first.as_str()]);
    let (_, page) = app
        .get(&format!("/api/v1/runs?from={between}&to={between}"), &key)
        .await;
    assert!(ids(&page).is_empty(), "{page}");

    let rfc = "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z";
    for (query, field, message) in [
        ("trigger=email", "trigger", "must be one of api, webhook, cron, mcp"),
        ("from=yesterday", "from", rfc),
        ("to=2026-13-01T00:00:00Z", "to", rfc),
        (
            "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
            "must not be after `to`",
        ),
    ] {
        let (status, body) = app.get(&format!("/api/v1/runs?{query}"), &key).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_error(
            &body,
            "validation_failed",
            "a query parameter is invalid",
            json!([{"field": field, "message": message}]),
        );
    }

    // Another company, and a member without a grant, see none of them; a role without `run:read` is refused.
    let globex = app.other_company().await;
    let ungranted = app.member(&["viewer"]).await;
    for who in [&globex.api_key, &ungranted.api_key] {
        let (status, page) = app.get("/api/v1/runs?trigger=webhook", who).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(ids(&page).is_empty(), "{page}");
    }
    let auditor = app.member(&["audit_viewer"]).await;
    let (status, body) = app.get("/api/v1/runs?trigger=webhook", &auditor.api_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(&body, "forbidden", "your role does not allow `run:read`", Value::Null);
    app.teardown().await;
}
