use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use floq_api::authz::{Capability, Role};
use floq_tests::openapi::{Guard, operations};
use floq_tests::{Options, TestApp};

pub const PASSWORD: &str = "correct horse battery";

/// What each role may do, copied by hand from the table in
/// docs/authorization.md ("What a role may do"), not computed from the
/// server's code: the sweeps below hold the server to the document.
pub const MATRIX: &[(&str, &[&str])] = &[
    (
        "admin",
        &[
            "flow:read",
            "flow:edit",
            "flow:execute",
            "run:read",
            "user:manage",
            "access:manage",
            "audit:read",
            "settings:manage",
            "integration:read",
            "integration:manage",
            "kv:read",
            "kv:write",
        ],
    ),
    (
        "flow_editor",
        &[
            "flow:read",
            "flow:edit",
            "flow:execute",
            "run:read",
            "integration:read",
            "kv:read",
            "kv:write",
        ],
    ),
    (
        "flow_executor",
        &["flow:read", "flow:execute", "run:read", "integration:read", "kv:read"],
    ),
    ("viewer", &["flow:read", "run:read", "integration:read", "kv:read"]),
    (
        "analytics_viewer",
        &["flow:read", "run:read", "integration:read", "kv:read"],
    ),
    ("audit_viewer", &["audit:read"]),
    (
        "integration_manager",
        &["integration:read", "integration:manage", "kv:read", "kv:write"],
    ),
    ("none", &[]),
];

/// Whether docs/authorization.md gives `role` the capability named `capability`.
pub fn may(role: &str, capability: &str) -> bool {
    let (_, granted) = MATRIX
        .iter()
        .find(|(r, _)| *r == role)
        .unwrap_or_else(|| panic!("role {role} is not in the documented matrix"));
    granted.contains(&capability)
}
pub const ORIGIN: &str = "https://app.floq.test";

fn no_services() -> Options {
    Options {
        worker: false,
        scheduler: false,
    }
}

async fn spawn() -> TestApp {
    TestApp::spawn_configured(no_services(), |c| c.cors_origins = vec![ORIGIN.into()]).await
}

/// Creates a member with a password through the API; returns their id.
pub async fn user_with_password(app: &TestApp, email: &str, roles: &[&str]) -> String {
    let (status, body) = app
        .post(
            "/api/v1/users",
            &app.admin.api_key,
            json!({"email": email, "name": "Ada", "password": PASSWORD, "roles": roles}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

pub async fn login(app: &TestApp, email: &str, password: &str) -> (StatusCode, Option<String>, Value) {
    let resp = app
        .client
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, cookie, body)
}

/// Status of a GET carrying a session cookie.
async fn get_with_cookie(app: &TestApp, path: &str, cookie: &str) -> StatusCode {
    with_cookie(app, Method::GET, path, cookie, None, None).await.0
}

/// Signs in and returns the `floq_session=…` cookie pair.
pub async fn signed_in(app: &TestApp, email: &str) -> String {
    session_of(&login(app, email, PASSWORD).await.1.expect("a session cookie"))
}

pub fn session_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

pub async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.base))
        .header("cookie", cookie);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_session_signs_in_with_a_hardened_cookie_and_ends_server_side_on_logout() {
    let app = spawn().await;
    user_with_password(&app, "ada@acme.test", &["viewer"]).await;

    let (status, set_cookie, _) = login(&app, "ADA@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let set_cookie = set_cookie.expect("a session cookie");
    for attr in [
        "floq_session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Max-Age=3600",
        "Path=/",
    ] {
        assert!(set_cookie.contains(attr), "{set_cookie} lacks {attr}");
    }
    let cookie = session_of(&set_cookie);

    let (status, me) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &cookie, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["email"], "ada@acme.test");
    assert_eq!(me["company"]["id"], app.admin.company_id.to_string());
    assert_eq!(me["roles"], json!(["viewer"]));
    // The cookie authorizes like a key with the same roles.
    assert_eq!(get_with_cookie(&app, "/api/v1/flows", &cookie).await, StatusCode::OK);

    let (status, _) = with_cookie(&app, Method::POST, "/api/v1/auth/logout", &cookie, Some(ORIGIN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get_with_cookie(&app, "/api/v1/auth/me", &cookie).await,
        StatusCode::UNAUTHORIZED
    );
    app.teardown().await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_answer_the_same() {
    let app = spawn().await;
    user_with_password(&app, "ada@acme.test", &["viewer"]).await;

    let (s1, c1, b1) = login(&app, "nobody@acme.test", PASSWORD).await;
    let (s2, c2, b2) = login(&app, "ada@acme.test", "wrong password!!").await;

    assert_eq!((s1, s2), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!((c1, c2), (None, None));
    assert_eq!(b1["error"]["code"], b2["error"]["code"]);
    assert_eq!(b1["error"]["message"], b2["error"]["message"]);
    app.teardown().await;
}

#[tokio::test]
async fn repeated_failures_lock_the_account_with_retry_after() {
    let app = spawn().await;
    user_with_password(&app, "ada@acme.test", &["viewer"]).await;
    for _ in 0..5 {
        assert_eq!(
            login(&app, "ada@acme.test", "wrong password!!").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let resp = app
        .client
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&json!({"email": "ada@acme.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    // Once the lock has passed, the right password works and clears the count.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login(&app, "ada@acme.test", PASSWORD).await.0, StatusCode::OK);
    app.teardown().await;
}

#[tokio::test]
async fn sessions_expire() {
    let app = TestApp::spawn_configured(no_services(), |c| c.session_ttl = Duration::from_secs(1)).await;
    user_with_password(&app, "ada@acme.test", &["viewer"]).await;
    let cookie = signed_in(&app, "ada@acme.test").await;
    assert_eq!(get_with_cookie(&app, "/api/v1/auth/me", &cookie).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get_with_cookie(&app, "/api/v1/auth/me", &cookie).await,
        StatusCode::UNAUTHORIZED
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_session_switches_only_to_companies_the_user_belongs_to() {
    let app = spawn().await;
    let ada = user_with_password(&app, "ada@acme.test", &["viewer"]).await;
    let globex = app.other_company().await;
    let initech = floq_api::admin::bootstrap(&app.pool, &app.config, "Initech", "boss@initech.test")
        .await
        .unwrap();
    // Ada is an editor at Globex too. A company adds an existing identity only
    // by an invitation she accepts (see `accounts.rs`); here the membership is
    // written directly, as accepting would.
    let mut tx = floq_shared::db::tenant_tx(&app.pool, globex.company_id).await.unwrap();
    sqlx::query("INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2::uuid, ARRAY['flow_editor'])")
        .bind(globex.company_id)
        .bind(&ada)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let cookie = signed_in(&app, "ada@acme.test").await;

    let (status, _) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/auth/switch-company",
        &cookie,
        Some(ORIGIN),
        Some(json!({"company_id": globex.company_id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, me) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &cookie, None, None).await;
    assert_eq!(me["company"]["id"], globex.company_id.to_string());
    assert_eq!(me["roles"], json!(["flow_editor"]));
    assert_eq!(me["companies"].as_array().unwrap().len(), 2);

    let (status, _) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/auth/switch-company",
        &cookie,
        Some(ORIGIN),
        Some(json!({"company_id": initech.company_id})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.teardown().await;
}

#[tokio::test]
async fn cookie_requests_that_change_state_need_an_allowed_origin_and_cors_follows_the_allow_list() {
    let app = spawn().await;
    user_with_password(&app, "ed@acme.test", &["flow_editor"]).await;
    let cookie = signed_in(&app, "ed@acme.test").await;
    let flow = json!({"name": "x", "definition": {"nodes": [{"id": "a", "type": "merge"}]}});

    for origin in [None, Some("https://evil.test")] {
        let (status, body) =
            with_cookie(&app, Method::POST, "/api/v1/flows", &cookie, origin, Some(flow.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?}");
        assert_eq!(body["error"]["code"], "origin_not_allowed");
    }
    let (status, _) = with_cookie(&app, Method::POST, "/api/v1/flows", &cookie, Some(ORIGIN), Some(flow)).await;
    assert_eq!(status, StatusCode::CREATED);

    for (origin, allowed) in [(ORIGIN, true), ("https://evil.test", false)] {
        let resp = app
            .client
            .request(Method::OPTIONS, format!("{}/api/v1/flows", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        let acao = resp
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(acao.as_deref(), allowed.then_some(origin), "{origin}");
        if allowed {
            assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
        }
    }
    let resp = app.client.get(format!("{}/healthz", app.base)).send().await.unwrap();
    let resp_api = app
        .client
        .get(format!("{}/api/v1/flows", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp_api.headers()["x-frame-options"], "DENY");
    assert_eq!(resp_api.headers()["x-content-type-options"], "nosniff");
    drop(resp);
    app.teardown().await;
}

#[tokio::test]
async fn api_keys_are_shown_once_listed_without_tokens_and_revoked_at_once() {
    let app = spawn().await;
    let member = app.member(&["flow_executor"]).await;
    let (status, created) = app
        .post(
            "/api/v1/api-keys",
            &member.api_key,
            json!({"name": "ci", "scopes": ["api"], "ttl_seconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap();
    assert_eq!(app.get("/api/v1/flows", token).await.0, StatusCode::OK);

    let (_, list) = app.get("/api/v1/api-keys", &member.api_key).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(token));
    // Someone else's key is not found; an admin may revoke it.
    let path = format!("/api/v1/api-keys/{}", created["id"].as_str().unwrap());
    let other = app.member(&["flow_executor"]).await;
    assert_eq!(
        app.request(Method::DELETE, &path, &other.api_key, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.request(Method::DELETE, &path, &app.admin.api_key, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get("/api/v1/flows", token).await.0, StatusCode::UNAUTHORIZED);

    let (_, mcp) = app
        .post(
            "/api/v1/api-keys",
            &member.api_key,
            json!({"name": "agent", "scopes": ["mcp"]}),
        )
        .await;
    // A live key without the `api` scope authenticates but reaches nothing here.
    assert_eq!(
        app.get("/api/v1/flows", mcp["token"].as_str().unwrap()).await.0,
        StatusCode::FORBIDDEN
    );

    let (status, body) = app
        .post(
            "/api/v1/api-keys",
            &member.api_key,
            json!({"name": "", "scopes": ["root"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"name") && fields.contains(&"scopes"), "{body}");
    app.teardown().await;
}

#[tokio::test]
async fn only_admins_manage_users_and_the_last_admin_stays() {
    let app = spawn().await;
    let key = &app.admin.api_key;
    let (status, body) = app
        .post(
            "/api/v1/users",
            key,
            json!({"email": "short@acme.test", "password": "too-short", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["field"], "password");
    let (status, _) = app
        .post(
            "/api/v1/users",
            key,
            json!({"email": "x@acme.test", "password": PASSWORD, "roles": ["wizard"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Whether an e-mail exists elsewhere does not change the answer: no password is needed.
    let (status, _) = app
        .post(
            "/api/v1/users",
            key,
            json!({"email": "new@acme.test", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        login(&app, "new@acme.test", "").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(login(&app, "new@acme.test", PASSWORD).await.0, StatusCode::UNAUTHORIZED);

    let id = user_with_password(&app, "ed@acme.test", &["flow_editor"]).await;
    let (_, list) = app.get("/api/v1/users", key).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert!(
        !list.to_string().contains("argon2"),
        "password hashes must never leave the database"
    );

    let editor = app.member(&["flow_editor"]).await;
    assert_eq!(app.get("/api/v1/users", &editor.api_key).await.0, StatusCode::FORBIDDEN);
    let globex = app.other_company().await;
    assert_eq!(
        app.get(&format!("/api/v1/users/{id}"), &globex.api_key).await.0,
        StatusCode::NOT_FOUND
    );

    let me = format!("/api/v1/users/{}", app.admin.user_id);
    let (status, body) = app
        .request(Method::PATCH, &me, key, Some(json!({"roles": ["viewer"]})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "last_admin");
    assert_eq!(
        app.request(Method::DELETE, &me, key, None).await.0,
        StatusCode::CONFLICT
    );

    let (status, body) = app
        .request(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            key,
            Some(json!({"roles": ["admin"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        app.request(Method::DELETE, &me, key, None).await.0,
        StatusCode::NO_CONTENT
    );
    app.teardown().await;
}

#[tokio::test]
async fn groups_hold_only_members_of_their_company() {
    let app = spawn().await;
    let key = &app.admin.api_key;
    let member = user_with_password(&app, "ed@acme.test", &["viewer"]).await;
    let (status, group) = app.post("/api/v1/groups", key, json!({"name": "ops"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let gid = group["id"].as_str().unwrap();
    assert_eq!(
        app.post("/api/v1/groups", key, json!({"name": "ops"})).await.0,
        StatusCode::CONFLICT
    );

    assert_eq!(
        app.post(&format!("/api/v1/groups/{gid}/members/{member}"), key, json!({}))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let globex = app.other_company().await;
    let outsider = globex.user_id;
    assert_eq!(
        app.post(&format!("/api/v1/groups/{gid}/members/{outsider}"), key, json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            &format!("/api/v1/groups/{gid}/members/{member}"),
            &globex.api_key,
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, list) = app.get("/api/v1/groups", key).await;
    assert_eq!(list["items"][0]["members"], json!([member]));
    assert_eq!(
        app.request(
            Method::DELETE,
            &format!("/api/v1/groups/{gid}/members/{member}"),
            key,
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    app.teardown().await;
}

/// Every capability-guarded endpoint, for every role: allowed roles never get
/// 403, the others always do. Expectations come from the capability table.
#[tokio::test]
async fn the_permission_matrix_follows_the_capability_table() {
    let app = spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    let endpoints: Vec<(Method, String, Capability, Option<Value>)> = vec![
        (Method::GET, "/api/v1/flows".into(), Capability::FlowRead, None),
        (Method::GET, format!("/api/v1/flows/{flow}"), Capability::FlowRead, None),
        (
            Method::POST,
            "/api/v1/flows".into(),
            Capability::FlowEdit,
            Some(json!({"name": "m", "definition": {"nodes": [{"id": "a", "type": "merge"}]}})),
        ),
        (
            Method::PUT,
            format!("/api/v1/flows/{flow}"),
            Capability::FlowEdit,
            Some(json!({"name": "renamed"})),
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{flow}/deploy"),
            Capability::FlowEdit,
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/flows/{flow}/runs"),
            Capability::FlowExecute,
            Some(json!({})),
        ),
        (Method::GET, "/api/v1/runs".into(), Capability::RunRead, None),
        (Method::GET, format!("/api/v1/runs/{run}"), Capability::RunRead, None),
        (Method::GET, "/api/v1/users".into(), Capability::UserManage, None),
        (Method::GET, "/api/v1/groups".into(), Capability::UserManage, None),
        (Method::GET, "/api/v1/grants".into(), Capability::AccessManage, None),
        (Method::GET, "/api/v1/flow-groups".into(), Capability::FlowRead, None),
        (Method::POST, "/api/v1/flow-groups".into(), Capability::FlowEdit, None),
        (Method::GET, "/api/v1/audit".into(), Capability::AuditRead, None),
        (Method::GET, "/api/v1/audit/verify".into(), Capability::AuditRead, None),
        (Method::GET, "/api/v1/audit/export".into(), Capability::AuditRead, None),
        (
            Method::GET,
            "/api/v1/settings/retention".into(),
            Capability::SettingsManage,
            None,
        ),
        (
            Method::PUT,
            "/api/v1/settings/retention".into(),
            Capability::SettingsManage,
            Some(json!({"audit_max_age_days": 400, "audit_max_entries": 20000, "runs_max_age_days": 30})),
        ),
    ];
    for (role, _) in MATRIX {
        let caller = app.member(&[role]).await;
        app.grant("user", caller.user_id, "flow", &flow, "edit").await;
        for (method, path, cap, body) in &endpoints {
            let body = match (path.as_str(), method) {
                ("/api/v1/flow-groups", &Method::POST) => Some(json!({"name": format!("g-{role}")})),
                _ => body.clone(),
            };
            let (status, resp) = app.request(method.clone(), path, &caller.api_key, body).await;
            if may(role, cap.name()) {
                assert!(status.is_success(), "{role} {method} {path}: {status} {resp}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {method} {path}: {resp}");
            }
        }
    }
    app.teardown().await;
}

/// Every endpoint, with credentials that must never work: none, revoked,
/// expired key, expired session (401); and another company's admin, who gets
/// 404 for anything that names an id of ours.
#[tokio::test]
async fn every_endpoint_refuses_missing_revoked_expired_and_foreign_credentials() {
    let app = spawn().await;
    let admin = &app.admin.api_key;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    let member = user_with_password(&app, "ada@acme.test", &["viewer"]).await;
    let (_, group) = app.post("/api/v1/groups", admin, json!({"name": "team"})).await;
    let group = group["id"].as_str().unwrap().to_string();
    let (_, folder) = app.post("/api/v1/flow-groups", admin, json!({"name": "folder"})).await;
    let folder = folder["id"].as_str().unwrap().to_string();
    let (_, grant) = app
        .post("/api/v1/grants", admin, json!({"subject_type": "user", "subject_id": member, "entity_type": "flow", "entity_id": flow, "level": "view"}))
        .await;
    let grant = grant["id"].as_str().unwrap().to_string();
    let (_, key) = app
        .post("/api/v1/api-keys", admin, json!({"name": "k", "scopes": ["api"]}))
        .await;
    let key_id = key["id"].as_str().unwrap().to_string();
    let (_, credential) = app
        .post(
            "/api/v1/credentials",
            admin,
            json!({"name": "stripe", "type": "http_bearer", "data": {"token": "sk_test_abcdefghijklmnop"}}),
        )
        .await;
    let credential = credential["id"].as_str().unwrap().to_string();

    let (_, connection) = app
        .post(
            "/api/v1/sso/connections",
            admin,
            json!({"name": "idp", "issuer": "https://idp.example.test", "client_id": "c", "client_secret": "s"}),
        )
        .await;
    let connection = connection["id"].as_str().unwrap().to_string();

    let (schedule, invitation) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    let fixtures = [
        ("flow_id", flow.as_str()),
        ("run_id", run.as_str()),
        ("user_id", member.as_str()),
        ("group_id", group.as_str()),
        ("flow_group_id", folder.as_str()),
        ("grant_id", grant.as_str()),
        ("api_key_id", key_id.as_str()),
        ("credential_id", credential.as_str()),
        ("key", "greeting"),
        ("schedule_id", schedule.as_str()),
        ("invitation_id", invitation.as_str()),
        ("connection_id", connection.as_str()),
        ("version", "1"),
    ];
    // (method, path, names one of our ids) of every operation the API documents but the public ones.
    let endpoints: Vec<(Method, String, bool)> = operations(&app)
        .await
        .into_iter()
        .filter(|op| op.guard != Guard::Public)
        .map(|op| {
            let names = op.placeholders();
            // KV keys are names within each company, not ids: another company's `PUT` writes its own.
            let names_our_id = !names.is_empty() && !names.iter().any(|n| n == "key");
            let mut path = op.path(&fixtures);
            // Its query is required: a valid one, so only the credential decides.
            if path.ends_with("/versions/diff") {
                path.push_str("?from=1&to=draft");
            }
            (op.method.clone(), path, names_our_id)
        })
        .collect();
    assert!(endpoints.len() > 50, "only {} guarded operations", endpoints.len());

    let revoked = app.member(&["admin"]).await;
    let mut tx = floq_shared::db::tenant_tx(&app.pool, app.admin.company_id)
        .await
        .unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(revoked.key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let expired_key = floq_api::auth::Keys::new(app.config.jwt_secret.expose()).sign(&floq_api::auth::Claims {
        sub: app.admin.user_id,
        cid: app.admin.company_id,
        kid: app.admin.key_id,
        scopes: vec!["api".into()],
        iat: 0,
        exp: 1,
    });
    let expired_session = signed_in(&app, "ada@acme.test").await;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let globex = app.other_company().await;

    for (method, path, names_our_id) in &endpoints {
        let send = |auth: Option<(&str, String)>| {
            // A body valid for the endpoint, so only the credential decides.
            let body = match *method {
                Method::PATCH if path.contains("/schedules/") => json!({"paused": true}),
                Method::PATCH => json!({"roles": ["viewer"]}),
                Method::PUT if path.contains("flow-groups") => json!({"name": "renamed"}),
                Method::PUT if path.contains("/sso/connections/") => {
                    json!({"name": "renamed", "issuer": "https://idp.example.test", "client_id": "c"})
                }
                Method::POST if path.ends_with("/verify-domain") => json!({"domain": "acme.test"}),
                Method::PUT if path.ends_with("/mcp") => {
                    json!({"tool_name": "t", "description": "d", "input_schema": {"type": "object"}})
                }
                Method::POST if path.ends_with("/schedules") => json!({"cron": "*/5 * * * *"}),
                _ => json!({}),
            };
            let mut req = app
                .client
                .request(method.clone(), format!("{}{path}", app.base))
                .json(&body);
            if let Some((name, value)) = auth {
                req = req.header(name, value).header("origin", ORIGIN);
            }
            async move { req.send().await.unwrap().status() }
        };
        for (who, auth) in [
            ("nobody", None),
            (
                "revoked key",
                Some(("authorization", format!("Bearer {}", revoked.api_key))),
            ),
            ("expired key", Some(("authorization", format!("Bearer {expired_key}")))),
            ("expired session", Some(("cookie", expired_session.clone()))),
        ] {
            assert_eq!(send(auth).await, StatusCode::UNAUTHORIZED, "{who}: {method} {path}");
        }
        if *names_our_id {
            let status = send(Some(("authorization", format!("Bearer {}", globex.api_key)))).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "another company: {method} {path}");
        }
    }
    app.teardown().await;
}

fn refs(fixtures: &[(String, String)]) -> Vec<(&str, &str)> {
    fixtures.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The matrix above covers exactly the server's roles and capabilities
/// (their names only: what each role may do is what the sweeps check).
#[test]
fn the_documented_matrix_names_every_role_and_capability() {
    let mut documented: Vec<&str> = MATRIX.iter().map(|(role, _)| *role).collect();
    let mut served: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served, "add the role to docs/authorization.md and MATRIX");
    let (_, all) = MATRIX[0];
    let mut documented = all.to_vec();
    let mut served: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served, "admin holds every capability, as documented");
    for (role, granted) in MATRIX {
        for cap in *granted {
            assert!(served.contains(cap), "{role}: unknown capability {cap}");
        }
    }
}

/// Every operation of the OpenAPI document, for every role: one guarded by
/// a capability the documented matrix withholds from the role answers 403,
/// before touching anything (so it is safe to try all), even with an `edit`
/// grant on the flow; where the matrix gives the capability (and for
/// operations open to any authenticated caller) the answer is never 401 or
/// 403 (ids are unknown ones, so nothing changes).
#[tokio::test]
async fn every_role_without_the_capability_gets_403_on_every_guarded_endpoint() {
    let app = spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let id = uuid::Uuid::now_v7().to_string();
    let ops = operations(&app).await;
    // Every placeholder an unknown id but `{flow_id}`, which names the flow the caller may edit.
    let names: Vec<String> = ops.iter().flat_map(|op| op.placeholders()).collect();
    let fill = |flow: &str| -> Vec<(String, String)> {
        names
            .iter()
            .map(|name| (name.clone(), if name == "flow_id" { flow } else { &id }.to_string()))
            .collect()
    };
    let (granted_flow, unknown) = (fill(&flow), fill(&id));
    let (granted_flow, unknown) = (refs(&granted_flow), refs(&unknown));
    let mut checked = 0;
    for (role, _) in MATRIX {
        let caller = app.member(&[role]).await;
        app.grant("user", caller.user_id, "flow", &flow, "edit").await;
        for op in &ops {
            let (expect_403, path) = match &op.guard {
                // Reached by a key's scope, not a role: tests/tests/e2e/mcp.rs.
                Guard::Public | Guard::KeyScope(_) => continue,
                Guard::Authenticated => (false, op.path(&unknown)),
                Guard::Capability(cap) if may(role, cap) => (false, op.path(&unknown)),
                Guard::Capability(_) => (true, op.path(&granted_flow)),
            };
            let (status, body) = if path.ends_with("/runs/events") && !expect_403 {
                // An event stream answers at once and never ends: its status is the answer.
                let resp = app
                    .client
                    .get(format!("{}{path}", app.base))
                    .bearer_auth(&caller.api_key)
                    .send()
                    .await
                    .unwrap();
                (resp.status(), Value::Null)
            } else {
                app.request(op.method.clone(), &path, &caller.api_key, Some(json!({})))
                    .await
            };
            let method = &op.method;
            if expect_403 {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {method} {path}: {body}");
            } else {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role} {method} {path}: {status} {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 8 * 50, "checked only {checked}");
    app.teardown().await;
}
