use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use floq_shared::db;
use floq_tests::{Options, TestApp};

fn definition() -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"x": 1}}}]})
}

/// Every endpoint that takes an id, with a body where it needs one.
fn id_endpoints(flow: &str, run: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/api/v1/flows/{flow}"), None),
        (
            Method::PUT,
            format!("/api/v1/flows/{flow}"),
            Some(json!({"name": "stolen"})),
        ),
        (Method::POST, format!("/api/v1/flows/{flow}/deploy"), Some(json!({}))),
        (
            Method::POST,
            format!("/api/v1/flows/{flow}/runs"),
            Some(json!({"input": {}})),
        ),
        (Method::GET, format!("/api/v1/runs/{run}"), None),
        (Method::DELETE, format!("/api/v1/flows/{flow}"), None),
    ]
}

#[tokio::test]
async fn another_company_gets_404_for_every_id_and_sees_nothing_in_lists() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(definition()).await;
    let run = app.start_run(&flow, json!({})).await;
    app.wait_run(&run).await;
    let globex = app.other_company().await;

    for (method, path, body) in id_endpoints(&flow, &run) {
        let (status, resp) = app.request(method.clone(), &path, &globex.api_key, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {resp}");
        assert_eq!(resp["error"]["code"], "not_found");
    }
    for path in ["/api/v1/flows", "/api/v1/runs"] {
        let (status, list) = app.get(path, &globex.api_key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["items"], json!([]), "{path}");
    }
    // Nothing changed for the owner.
    let (_, mine) = app.get(&format!("/api/v1/flows/{flow}"), &app.admin.api_key).await;
    assert_eq!(mine["name"], "test flow");
    assert_eq!(mine["latest_version"], 1);
    app.teardown().await;
}

#[tokio::test]
async fn roles_without_the_capability_get_403_on_every_endpoint() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let flow = app.deployed_flow(definition()).await;
    let run = app.start_run(&flow, json!({})).await;
    let nobody = app.member(&["none"]).await;
    let viewer = app.member(&["viewer"]).await;
    let executor = app.member(&["flow_executor"]).await;
    // Grants open the entity; the role still decides what may be done with it.
    for who in [&nobody, &viewer, &executor] {
        app.grant("user", who.user_id, "flow", &flow, "edit").await;
    }
    let create = (
        Method::POST,
        "/api/v1/flows".to_string(),
        Some(json!({"name": "x", "definition": definition()})),
    );

    // `none` may do nothing at all.
    let mut all = id_endpoints(&flow, &run);
    all.push(create.clone());
    all.push((Method::GET, "/api/v1/flows".into(), None));
    all.push((Method::GET, "/api/v1/runs".into(), None));
    for (method, path, body) in all {
        let (status, resp) = app.request(method.clone(), &path, &nobody.api_key, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {resp}");
        assert_eq!(resp["error"]["code"], "forbidden");
    }
    // A viewer reads but cannot edit, deploy or run.
    let edits = [
        create.clone(),
        (Method::PUT, format!("/api/v1/flows/{flow}"), Some(json!({"name": "y"}))),
        (Method::POST, format!("/api/v1/flows/{flow}/deploy"), Some(json!({}))),
        (Method::DELETE, format!("/api/v1/flows/{flow}"), None),
    ];
    for (method, path, body) in edits.iter().cloned() {
        let (status, _) = app.request(method.clone(), &path, &viewer.api_key, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "viewer {method} {path}");
    }
    let (status, _) = app
        .post(&format!("/api/v1/flows/{flow}/runs"), &viewer.api_key, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get(&format!("/api/v1/flows/{flow}"), &viewer.api_key).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&format!("/api/v1/runs/{run}"), &viewer.api_key).await.0,
        StatusCode::OK
    );
    // An executor runs but cannot edit.
    for (method, path, body) in edits {
        let (status, _) = app.request(method.clone(), &path, &executor.api_key, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "executor {method} {path}");
    }
    let (status, _) = app
        .post(&format!("/api/v1/flows/{flow}/runs"), &executor.api_key, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.teardown().await;
}

#[tokio::test]
async fn missing_forged_unknown_and_revoked_keys_get_401() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let url = format!("{}/api/v1/flows", app.base);

    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    assert_eq!(app.get("/api/v1/flows", "not-a-jwt").await.0, StatusCode::UNAUTHORIZED);
    // Signed with another secret.
    let mut other = app.config.clone();
    other.jwt_secret = floq_shared::Secret::new("x".repeat(48));
    let forged = floq_api::auth::Keys::new(other.jwt_secret.expose()).sign(&floq_api::auth::Claims {
        sub: app.admin.user_id,
        cid: app.admin.company_id,
        kid: app.admin.key_id,
        scopes: vec!["api".into()],
        iat: 0,
        exp: i64::MAX / 2,
    });
    assert_eq!(app.get("/api/v1/flows", &forged).await.0, StatusCode::UNAUTHORIZED);
    // Well signed, but the key id was never issued.
    let unknown = floq_api::auth::Keys::new(app.config.jwt_secret.expose()).sign(&floq_api::auth::Claims {
        sub: app.admin.user_id,
        cid: app.admin.company_id,
        kid: Uuid::now_v7(),
        scopes: vec!["api".into()],
        iat: 0,
        exp: i64::MAX / 2,
    });
    assert_eq!(app.get("/api/v1/flows", &unknown).await.0, StatusCode::UNAUTHORIZED);
    // A real key id, but past its expiry.
    let expired = floq_api::auth::Keys::new(app.config.jwt_secret.expose()).sign(&floq_api::auth::Claims {
        sub: app.admin.user_id,
        cid: app.admin.company_id,
        kid: app.admin.key_id,
        scopes: vec!["api".into()],
        iat: 0,
        exp: chrono_now() - 10,
    });
    assert_eq!(app.get("/api/v1/flows", &expired).await.0, StatusCode::UNAUTHORIZED);

    assert_eq!(app.get("/api/v1/flows", &app.admin.api_key).await.0, StatusCode::OK);
    let mut tx = db::tenant_tx(&app.pool, app.admin.company_id).await.unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(app.admin.key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A cached verification is dropped when the change notification arrives: milliseconds.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while app.get("/api/v1/flows", &app.admin.api_key).await.0 != StatusCode::UNAUTHORIZED {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a revoked key still works after 2 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    app.teardown().await;
}

#[tokio::test]
async fn row_level_security_hides_everything_without_a_tenant_and_other_tenants_rows_with_one() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(definition()).await;
    app.wait_run(&app.start_run(&flow, json!({})).await).await;
    let globex = app.other_company().await;
    let tables = [
        "companies",
        "memberships",
        "api_keys",
        "flows",
        "flow_versions",
        "runs",
        "run_steps",
        "users",
    ];

    // Under the application role with no tenant set: nothing, not everything.
    let mut tx = db::multi_tenant_tx(&app.pool).await.unwrap();
    for table in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} leaks rows without a tenant");
    }
    drop(tx);

    // Globex sees only its own company, user, membership and key; none of Acme's flows or runs.
    let mut tx = db::tenant_tx(&app.pool, globex.company_id).await.unwrap();
    for (table, expected) in [
        ("companies", 1),
        ("memberships", 1),
        ("api_keys", 1),
        ("users", 1),
        ("flows", 0),
        ("flow_versions", 0),
        ("runs", 0),
        ("run_steps", 0),
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, expected, "{table} as Globex");
    }
    // Writing into another tenant is refused by the policy, not just filtered.
    let err = sqlx::query("INSERT INTO flows (id, company_id, name, definition) VALUES ($1, $2, 'x', '{}')")
        .bind(Uuid::now_v7())
        .bind(app.admin.company_id)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);
    app.teardown().await;
}

#[tokio::test]
async fn a_demoted_users_keys_are_demoted_with_them() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let editor = app.member(&["flow_editor"]).await;
    let create = json!({"name": "x", "definition": definition()});
    assert_eq!(
        app.post("/api/v1/flows", &editor.api_key, create.clone()).await.0,
        StatusCode::CREATED
    );

    let mut tx = db::tenant_tx(&app.pool, app.admin.company_id).await.unwrap();
    sqlx::query("UPDATE memberships SET roles = ARRAY['viewer'] WHERE user_id = $1")
        .bind(editor.user_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while app.post("/api/v1/flows", &editor.api_key, create.clone()).await.0 != StatusCode::FORBIDDEN {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a demoted user's key kept its old roles"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(app.get("/api/v1/flows", &editor.api_key).await.0, StatusCode::OK);
    app.teardown().await;
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
