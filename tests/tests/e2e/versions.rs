//! Flow versions: the list, one version's definition, and the diff between
//! two versions or a version and the draft; who may read them.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use floq_tests::{Options, TestApp, assert_error};

fn quiet() -> Options {
    Options {
        worker: false,
        scheduler: false,
    }
}

fn first() -> Value {
    json!({
        "nodes": [
            {"id": "a", "type": "set", "params": {"values": {"x": 1}}},
            {"id": "b", "type": "merge", "params": {}}
        ],
        "edges": [{"from": "a", "to": "b"}]
    })
}

fn second() -> Value {
    json!({
        "nodes": [
            {"id": "a", "type": "set", "params": {"values": {"x": 2}}, "timeout_ms": 500},
            {"id": "c", "type": "merge", "params": {}}
        ],
        "edges": [{"from": "a", "to": "c"}],
        "deadline_ms": 60000
    })
}

/// A flow deployed twice (`first`, then `second`) whose draft is `first` again.
async fn flow_with_two_versions(app: &TestApp) -> String {
    let key = &app.admin.api_key;
    let flow = app.deployed_flow(first()).await;
    let (status, body) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}"),
            key,
            Some(json!({"definition": second()})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post(&format!("/api/v1/flows/{flow}/deploy"), key, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}"),
            key,
            Some(json!({"definition": first()})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    flow
}

#[tokio::test]
async fn versions_are_listed_newest_first_and_each_shows_its_definition() {
    let app = TestApp::spawn_with(quiet()).await;
    let key = app.admin.api_key.clone();
    let flow = flow_with_two_versions(&app).await;

    let (status, page) = app.get(&format!("/api/v1/flows/{flow}/versions?limit=1"), &key).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["version"], 2);
    assert_eq!(page["items"][0]["deployed_by"], app.admin.user_id.to_string());
    assert!(page["items"][0]["deployed_at"].is_string(), "{page}");
    assert!(page["items"][0].get("definition").is_none(), "{page}");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = app
        .get(&format!("/api/v1/flows/{flow}/versions?limit=1&cursor={cursor}"), &key)
        .await;
    assert_eq!(rest["items"][0]["version"], 1, "{rest}");
    let (_, end) = app
        .get(
            &format!(
                "/api/v1/flows/{flow}/versions?cursor={}",
                rest["next_cursor"].as_str().unwrap()
            ),
            &key,
        )
        .await;
    assert_eq!(end, json!({"items": [], "next_cursor": null}));

    let (status, v1) = app.get(&format!("/api/v1/flows/{flow}/versions/1"), &key).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["definition"], first());
    for missing in ["3", "0", "x"] {
        let (status, body) = app.get(&format!("/api/v1/flows/{flow}/versions/{missing}"), &key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}: {body}");
        assert_error(&body, "not_found", "flow version not found", json!(null));
    }
    let (_, bad) = app
        .get(&format!("/api/v1/flows/{flow}/versions?cursor=zero"), &key)
        .await;
    assert_eq!(bad["error"]["details"][0]["field"], "cursor", "{bad}");
    app.teardown().await;
}

#[tokio::test]
async fn a_diff_names_nodes_edges_and_fields_that_changed_between_versions_and_the_draft() {
    let app = TestApp::spawn_with(quiet()).await;
    let key = app.admin.api_key.clone();
    let flow = flow_with_two_versions(&app).await;

    let (status, diff) = app
        .get(&format!("/api/v1/flows/{flow}/versions/diff?from=1&to=2"), &key)
        .await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert_eq!(
        diff,
        json!({
            "from": 1, "to": 2,
            "nodes": {
                "added": [{"id": "c", "type": "merge", "params": {}}],
                "removed": [{"id": "b", "type": "merge", "params": {}}],
                "changed": [{"id": "a", "fields": [
                    {"field": "params", "before": {"values": {"x": 1}}, "after": {"values": {"x": 2}}},
                    {"field": "timeout_ms", "before": null, "after": 500}
                ]}]
            },
            "edges": {"added": [{"from": "a", "to": "c"}], "removed": [{"from": "a", "to": "b"}]},
            "fields": [{"field": "deadline_ms", "before": null, "after": 60000}]
        })
    );
    // The draft is `first` again: version 1 against it is no change, version 2 against it the reverse.
    let (_, same) = app
        .get(&format!("/api/v1/flows/{flow}/versions/diff?from=1&to=draft"), &key)
        .await;
    assert_eq!(
        same,
        json!({"from": 1, "to": "draft", "nodes": {"added": [], "removed": [], "changed": []},
               "edges": {"added": [], "removed": []}, "fields": []})
    );
    let (_, back) = app
        .get(&format!("/api/v1/flows/{flow}/versions/diff?from=draft&to=2"), &key)
        .await;
    assert_eq!(back["nodes"]["added"][0]["id"], "c", "{back}");

    let invalid = "must be a version number (1 or more) or `draft`";
    for (query, summary, field, message) in [
        ("from=one&to=2", "a query parameter is invalid", "from", invalid),
        ("from=1&to=-2", "a query parameter is invalid", "to", invalid),
        (
            "to=2",
            "a query parameter is missing",
            "from",
            "is required: a version number or `draft`",
        ),
    ] {
        let (status, body) = app
            .get(&format!("/api/v1/flows/{flow}/versions/diff?{query}"), &key)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_error(
            &body,
            "validation_failed",
            summary,
            json!([{"field": field, "message": message}]),
        );
    }
    let (status, body) = app
        .get(&format!("/api/v1/flows/{flow}/versions/diff?from=1&to=9"), &key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "not_found", "flow version not found", json!(null));
    app.teardown().await;
}

#[tokio::test]
async fn versions_are_hidden_from_other_companies_and_from_roles_and_grants_without_read() {
    let app = TestApp::spawn_with(quiet()).await;
    let flow = flow_with_two_versions(&app).await;
    let paths = [
        format!("/api/v1/flows/{flow}/versions"),
        format!("/api/v1/flows/{flow}/versions/1"),
        format!("/api/v1/flows/{flow}/versions/diff?from=1&to=draft"),
    ];
    let globex = app.other_company().await;
    let auditor = app.member(&["audit_viewer"]).await;
    let ungranted = app.member(&["viewer"]).await;
    let granted = app.member(&["viewer"]).await;
    app.grant("user", granted.user_id, "flow", &flow, "view").await;
    for path in &paths {
        let (status, body) = app.get(path, &globex.api_key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_error(&body, "not_found", "flow not found", json!(null));
        let (status, body) = app.get(path, &ungranted.api_key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        let (status, body) = app.get(path, &auditor.api_key).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        let (status, body) = app.get(path, &granted.api_key).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    app.teardown().await;
}
