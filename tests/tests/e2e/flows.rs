use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use floq_tests::TestApp;

fn one_node() -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"x": 1}}}], "edges": []})
}

async fn flow_count(app: &TestApp) -> usize {
    let (_, list) = app.get("/api/v1/flows", &app.admin.api_key).await;
    list["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn flows_can_be_created_read_listed_updated_and_deleted() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let key = &app.admin.api_key;

    let (status, created) = app
        .post(
            "/api/v1/flows",
            key,
            json!({"name": "  Orders  ", "definition": one_node()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["name"], "Orders");
    assert_eq!(created["latest_version"], Value::Null);
    let id = created["id"].as_str().unwrap();

    let (status, got) = app.get(&format!("/api/v1/flows/{id}"), key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["definition"], one_node());

    let (status, updated) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{id}"),
            key,
            Some(json!({"name": "Orders v2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["name"], "Orders v2");
    assert_eq!(updated["definition"], one_node());

    for i in 0..3 {
        app.post(
            "/api/v1/flows",
            key,
            json!({"name": format!("f{i}"), "definition": one_node()}),
        )
        .await;
    }
    let (_, page) = app.get("/api/v1/flows?limit=3", key).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = app.get(&format!("/api/v1/flows?limit=3&cursor={cursor}"), key).await;
    assert_eq!(rest["items"][0]["id"], id);
    assert_eq!(rest["next_cursor"], Value::Null);

    let (status, _) = app
        .request(Method::DELETE, &format!("/api/v1/flows/{id}"), key, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&format!("/api/v1/flows/{id}"), key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(flow_count(&app).await, 3);
    app.teardown().await;
}

#[tokio::test]
async fn deploying_makes_immutable_numbered_versions_and_runs_pin_theirs() {
    let app = TestApp::spawn().await;
    let key = &app.admin.api_key;
    let id = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"v": 1}}}]}))
        .await;

    let (status, _) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{id}"),
            key,
            Some(json!({"definition": {"nodes": [{"id": "a", "type": "set", "params": {"values": {"v": 2}}}]}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The draft changed but version 1 did not: runs still get v = 1.
    let run = app.wait_run(&app.start_run(&id, json!({})).await).await;
    assert_eq!(
        (run["version"].clone(), run["output"].clone()),
        (json!(1), json!({"v": 1}))
    );

    let (status, deployed) = app.post(&format!("/api/v1/flows/{id}/deploy"), key, json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(deployed["version"], 2);
    let run = app.wait_run(&app.start_run(&id, json!({})).await).await;
    assert_eq!(
        (run["version"].clone(), run["output"].clone()),
        (json!(2), json!({"v": 2}))
    );

    // The application role cannot rewrite a version, even with SQL.
    let mut tx = floq_shared::db::tenant_tx(&app.pool, app.admin.company_id)
        .await
        .unwrap();
    let err = sqlx::query("UPDATE flow_versions SET definition = '{}'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(tx);
    app.teardown().await;
}

#[tokio::test]
async fn running_a_flow_that_was_never_deployed_is_a_conflict() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let key = &app.admin.api_key;
    let (_, flow) = app
        .post("/api/v1/flows", key, json!({"name": "draft", "definition": one_node()}))
        .await;

    let (status, body) = app
        .post(
            &format!("/api/v1/flows/{}/runs", flow["id"].as_str().unwrap()),
            key,
            json!({}),
        )
        .await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "not_deployed");
    let (status, _) = app
        .post(&format!("/api/v1/flows/{}/runs", uuid::Uuid::now_v7()), key, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    app.teardown().await;
}

#[tokio::test]
async fn invalid_definitions_are_rejected_naming_the_node_and_nothing_is_written() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let key = &app.admin.api_key;
    let cases = [
        (
            json!({"nodes": [{"id": "x", "type": "teleport"}]}),
            "definition.nodes[0].type",
            "x",
        ),
        (
            json!({"nodes": [{"id": "h", "type": "http_request", "params": {"method": "GET"}}]}),
            "definition.nodes[0].params.url",
            "h",
        ),
        (
            json!({"nodes": [{"id": "d", "type": "merge"}, {"id": "d", "type": "merge"}]}),
            "definition.nodes[1].id",
            "d",
        ),
        (
            json!({"nodes": [{"id": "a", "type": "merge"}], "edges": [{"from": "a", "to": "ghost"}]}),
            "definition.edges[0].to",
            "ghost",
        ),
        (
            json!({"nodes": [{"id": "a", "type": "merge"}, {"id": "b", "type": "merge"}],
                   "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]}),
            "definition.edges",
            "a",
        ),
    ];
    for (definition, field, node) in cases {
        let (status, body) = app
            .post("/api/v1/flows", key, json!({"name": "bad", "definition": definition}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
        assert_eq!(body["error"]["details"][0]["node"], node, "{body}");
        assert!(body["error"]["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    }
    assert_eq!(flow_count(&app).await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn malformed_oversized_and_misshapen_bodies_get_structured_errors() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let key = &app.admin.api_key;
    let url = format!("{}/api/v1/flows", app.base);

    let resp = app
        .client
        .post(&url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("x-request-id", "req-123")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "malformed_json", "message": "the request body is not valid JSON", "details": null, "request_id": "req-123"}})
    );

    let huge = json!({"name": "big", "definition": {"nodes": [{"id": "a", "type": "set", "params": {"values": {"blob": "x".repeat(2 << 20)}}}]}});
    let (status, body) = app.post("/api/v1/flows", key, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = app.post("/api/v1/flows", key, json!({"definition": one_node()})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `name`"),
        "{body}"
    );

    let (status, body) = app
        .post("/api/v1/flows", key, json!({"name": "", "definition": one_node()}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["field"], "name");

    let (status, body) = app.get("/api/v1/nowhere", key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(flow_count(&app).await, 0);
    app.teardown().await;
}
