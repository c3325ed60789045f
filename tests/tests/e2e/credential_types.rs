//! `GET /api/v1/credential-types`: the schemas credentials are checked with, secret fields write-only.

use reqwest::StatusCode;
use serde_json::{Value, json};

use floq_tests::{Options, TestApp, assert_error};

#[tokio::test]
async fn every_credential_type_is_served_with_the_schema_that_validates_it() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let (status, body) = app.get("/api/v1/credential-types", &app.admin.api_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(names, floq_shared::secrets::CREDENTIAL_TYPES);
    let basic = items.iter().find(|t| t["type"] == "http_basic").unwrap();
    assert_eq!(
        basic["schema"],
        json!({"type": "object", "additionalProperties": false, "required": ["username", "password"],
               "properties": {
                   "username": {"type": "string", "minLength": 1, "maxLength": 10000},
                   "password": {"type": "string", "minLength": 1, "maxLength": 10000, "writeOnly": true}}})
    );
    let postgres = items.iter().find(|t| t["type"] == "postgres").unwrap();
    assert_eq!(postgres["schema"]["properties"]["uri"]["writeOnly"], true);
    // What the schema requires is what creating one requires.
    let (status, refused) = app
        .post(
            "/api/v1/credentials",
            &app.admin.api_key,
            json!({"name": "b", "type": "http_basic", "data": {"username": "u"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains("`password` is required"), "{refused}");

    // Every role that reads integrations may read the types; one that does not is refused.
    let viewer = app.member(&["viewer"]).await;
    let (status, _) = app.get("/api/v1/credential-types", &viewer.api_key).await;
    assert_eq!(status, StatusCode::OK);
    let auditor = app.member(&["audit_viewer"]).await;
    let (status, body) = app.get("/api/v1/credential-types", &auditor.api_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(
        &body,
        "forbidden",
        "your role does not allow `integration:read`",
        Value::Null,
    );
    app.teardown().await;
}
