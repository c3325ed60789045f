//! What a flow may reach beyond itself (sub-flows, credentials, secret KV
//! values) is what its author may use when saved and what its deployer may
//! use when deployed and when it runs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::runs::serve;
use floq_tests::{TestApp, failed_step};

async fn create_flow(app: &TestApp, key: &str, definition: Value) -> (StatusCode, Value) {
    app.post("/api/v1/flows", key, json!({"name": "reach", "definition": definition}))
        .await
}

async fn grant_id(app: &TestApp, user: impl ToString, entity_type: &str, entity: &str) -> String {
    let (status, body) = app
        .post(
            "/api/v1/grants",
            &app.admin.api_key,
            json!({"subject_type": "user", "subject_id": user.to_string(),
                   "entity_type": entity_type, "entity_id": entity, "level": "execute"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn refused(status: StatusCode, body: &Value, field: &str, message: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    floq_tests::assert_error(
        body,
        "validation_failed",
        "the flow reaches what it may not use",
        json!([{"field": field, "message": message}]),
    );
}

#[tokio::test]
async fn a_flow_editor_cannot_run_a_flow_hidden_from_them_through_sub_flow() {
    let app = TestApp::spawn().await;
    let payroll = app
        .deployed_flow(json!({"nodes": [{"id": "p", "type": "set", "params": {"values": {"salary": 250000}}}]}))
        .await;
    let editor = app.member(&["flow_editor"]).await;
    let (status, _) = app.get(&format!("/api/v1/flows/{payroll}"), &editor.api_key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let calls = |flow_id: &str| json!({"nodes": [{"id": "call", "type": "sub_flow", "params": {"flow_id": flow_id}}]});
    let (status, body) = create_flow(&app, &editor.api_key, calls(&payroll)).await;
    refused(
        status,
        &body,
        "definition.nodes[0].params.flow_id",
        "no flow you may run has this id",
    );
    // Nor through a template, nor inside a loop body.
    let (status, body) = create_flow(
        &app,
        &editor.api_key,
        json!({"nodes": [{"id": "call", "type": "sub_flow", "params": {"flow_id": "{{ $input.f }}"}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = create_flow(
        &app,
        &editor.api_key,
        json!({"nodes": [{"id": "each", "type": "loop", "params": {"items": "{{ [1] }}", "flow": calls(&payroll)}}]}),
    )
    .await;
    refused(
        status,
        &body,
        "definition.nodes[0].params.flow.nodes[0].params.flow_id",
        "no flow you may run has this id",
    );

    // With a grant it works; once the grant is revoked the deployed version fails at run time.
    let grant = grant_id(&app, editor.user_id, "flow", &payroll).await;
    let caller = app.deployed_flow_as(&editor.api_key, calls(&payroll)).await;
    let run = app.start_run_as(&editor.api_key, &caller, json!({})).await;
    let run = app.wait_run_as(&editor.api_key, &run).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("/api/v1/grants/{grant}"),
            &app.admin.api_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let run = app.start_run_as(&editor.api_key, &caller, json!({})).await;
    let run = app.wait_run_as(&editor.api_key, &run).await;
    let (code, message) = failed_step(&run);
    assert_eq!(code, "author_lacks_access", "{run}");
    assert!(message.contains(&payroll), "{message}");
    assert!(!run.to_string().contains("250000"), "{run}");
    // Deploying again needs access again.
    let (status, body) = app
        .post(&format!("/api/v1/flows/{caller}/deploy"), &editor.api_key, json!({}))
        .await;
    refused(
        status,
        &body,
        "definition.nodes[0].params.flow_id",
        "no flow you may run has this id",
    );
    app.teardown().await;
}

#[tokio::test]
async fn secret_values_need_a_grant_and_never_feed_a_script() {
    let app = TestApp::spawn().await;
    let server = serve(axum::Router::new().route(
        "/echo",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            axum::Json(json!({"auth": headers.get("x-token").map(|v| v.to_str().unwrap_or("").to_string())}))
        }),
    ))
    .await;
    let (status, secret) = app
        .request(
            Method::PUT,
            "/api/v1/kv/bank-token",
            &app.admin.api_key,
            Some(json!({"value": "secret:bank-SECRET-123456"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{secret}");
    let secret_id = secret["id"].as_str().expect("secret values have an id").to_string();
    let sends = json!({"nodes": [{"id": "send", "type": "http_request", "params": {
        "method": "GET", "url": format!("{server}/echo"), "headers": {"x-token": {"$secret": "bank-token"}}}}]});

    let editor = app.member(&["flow_editor"]).await;
    let (status, body) = create_flow(&app, &editor.api_key, sends.clone()).await;
    refused(
        status,
        &body,
        "definition.nodes[0].params.headers.x-token.$secret",
        "no secret value you may use has this key",
    );
    // No one, not even an admin, may hand a secret to a script or pick one by template.
    let (status, body) = create_flow(
        &app,
        &app.admin.api_key,
        json!({"nodes": [{"id": "js", "type": "code", "params": {"code": {"$secret": "bank-token"}}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"][0]["field"], "definition.nodes[0].params.code",
        "{body}"
    );
    let (status, body) = create_flow(
        &app,
        &app.admin.api_key,
        json!({"nodes": [{"id": "s", "type": "http_request", "params": {"method": "GET", "url": format!("{server}/echo"),
            "headers": {"x-token": {"$secret": "{{ $input.k }}"}}}}]}),
    )
    .await;
    refused(
        status,
        &body,
        "definition.nodes[0].params.headers.x-token.$secret",
        "which secret a flow reads is fixed: no templates in `$secret`",
    );
    // Nor anywhere a node does not send it: a branch, a loop item, a KV value, a sub-flow's input.
    for (node, field) in [
        (
            json!({"id": "s", "type": "set", "params": {"values": {"x": {"$secret": "bank-token"}}}}),
            "values.x",
        ),
        (
            json!({"id": "s", "type": "kv_set", "params": {"key": "copy", "value": {"$secret": "bank-token"}}}),
            "value",
        ),
        (
            json!({"id": "s", "type": "loop", "params": {"items": [{"$secret": "bank-token"}], "flow": {"nodes": [
                {"id": "x", "type": "set", "params": {"values": {}}}]}}}),
            "items[0]",
        ),
    ] {
        let (status, body) = create_flow(&app, &app.admin.api_key, json!({"nodes": [node]})).await;
        refused(
            status,
            &body,
            &format!("definition.nodes[0].params.{field}"),
            "a secret may only be used where a node sends it: http_request headers, query or body, postgres params, and the params a plugin node type takes secrets in (docs/plugins.md)",
        );
    }
    // Another company has no such secret, whatever its admin tries.
    let globex = app.other_company().await;
    let (status, body) = create_flow(&app, &globex.api_key, sends.clone()).await;
    refused(
        status,
        &body,
        "definition.nodes[0].params.headers.x-token.$secret",
        "no secret value you may use has this key",
    );

    let grant = grant_id(&app, editor.user_id, "secret", &secret_id).await;
    let flow = app.deployed_flow_as(&editor.api_key, sends).await;
    let run = app.start_run_as(&editor.api_key, &flow, json!({})).await;
    let run = app.wait_run_as(&editor.api_key, &run).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["body"]["auth"], "[masked]", "{run}");
    app.request(
        Method::DELETE,
        &format!("/api/v1/grants/{grant}"),
        &app.admin.api_key,
        None,
    )
    .await;
    let run = app.start_run_as(&editor.api_key, &flow, json!({})).await;
    let run = app.wait_run_as(&editor.api_key, &run).await;
    assert_eq!(failed_step(&run).0, "author_lacks_access", "{run}");
    app.teardown().await;
}

#[tokio::test]
async fn a_credential_revoked_after_deploy_fails_the_run_for_lack_of_access() {
    let app = TestApp::spawn().await;
    let server = serve(axum::Router::new().route("/", axum::routing::get(|| async { "ok" }))).await;
    let cred = app
        .credential(&app.admin.api_key, "http_bearer", json!({"token": "tok-SECRET-778899"}))
        .await;
    let editor = app.member(&["flow_editor"]).await;
    let grant = grant_id(&app, editor.user_id, "integration", &cred).await;
    let flow = app
        .deployed_flow_as(
            &editor.api_key,
            json!({"nodes": [{"id": "call", "type": "http_request", "params": {
                "method": "GET", "url": format!("{server}/"), "credential_id": cred}}]}),
        )
        .await;
    let run = app.start_run_as(&editor.api_key, &flow, json!({})).await;
    assert_eq!(app.wait_run_as(&editor.api_key, &run).await["status"], "succeeded");
    app.request(
        Method::DELETE,
        &format!("/api/v1/grants/{grant}"),
        &app.admin.api_key,
        None,
    )
    .await;
    let run = app.start_run_as(&editor.api_key, &flow, json!({})).await;
    let run = app.wait_run_as(&editor.api_key, &run).await;
    let (code, message) = failed_step(&run);
    assert_eq!(code, "author_lacks_access", "{run}");
    assert!(message.contains(&cred), "{message}");
    app.teardown().await;
}

#[tokio::test]
async fn credentials_and_secrets_bound_to_origins_are_never_sent_elsewhere() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let app = TestApp::spawn().await;
    let elsewhere_hits = Arc::new(AtomicUsize::new(0));
    let counter = elsewhere_hits.clone();
    let elsewhere = serve(axum::Router::new().fallback(axum::routing::get(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "got it" }
    })))
    .await;
    let target = elsewhere.clone();
    let partner = serve(
        axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/bounce",
                axum::routing::get(move || async move { axum::response::Redirect::temporary(&format!("{target}/")) }),
            ),
    )
    .await;

    // Bad origins are refused, naming the entry.
    let (status, body) = app
        .post(
            "/api/v1/credentials",
            &app.admin.api_key,
            json!({"name": "bad", "type": "http_bearer", "data": {"token": "tok-SECRET-1"},
                   "allowed_origins": ["https://ok.example", "https://x.example/path"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "allowed_origins[1]", "{body}");
    let (status, body) = app
        .request(
            Method::PUT,
            "/api/v1/kv/plain",
            &app.admin.api_key,
            Some(json!({"value": "eu", "allowed_origins": [partner]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "allowed_origins", "{body}");

    let (status, cred) = app
        .post(
            "/api/v1/credentials",
            &app.admin.api_key,
            json!({"name": "partner", "type": "http_bearer", "data": {"token": "tok-SECRET-2468"},
                   "allowed_origins": [format!("{partner}/")]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cred}");
    assert_eq!(cred["allowed_origins"], json!([partner]), "normalized: {cred}");
    let cred = cred["id"].as_str().unwrap();
    app.request(
        Method::PUT,
        "/api/v1/kv/partner-key",
        &app.admin.api_key,
        Some(json!({"value": "secret:pk-SECRET-13579", "allowed_origins": [partner]})),
    )
    .await;
    let get = |url: String, extra: Value| {
        let mut params = json!({"method": "GET", "url": url});
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"nodes": [{"id": "call", "type": "http_request", "params": params}]})
    };
    let ok = app
        .run_flow(get(format!("{partner}/"), json!({"credential_id": cred})), json!({}))
        .await;
    assert_eq!(ok["status"], "succeeded", "{ok}");
    for flow in [
        get(format!("{elsewhere}/"), json!({"credential_id": cred})),
        get(
            format!("{elsewhere}/"),
            json!({"headers": {"x-key": {"$secret": "partner-key"}}}),
        ),
        // Allowed first hop, then a redirect elsewhere while holding the secret.
        get(
            format!("{partner}/bounce"),
            json!({"headers": {"x-key": {"$secret": "partner-key"}}}),
        ),
    ] {
        let run = app.run_flow(flow, json!({})).await;
        let (code, message) = failed_step(&run);
        assert_eq!(code, "destination_not_allowed", "{run}");
        assert!(message.contains(&elsewhere), "{message}");
    }
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
    // The credential alone is dropped on a cross-origin redirect, as before, so that one is fine.
    let run = app
        .run_flow(
            get(format!("{partner}/bounce"), json!({"credential_id": cred})),
            json!({}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    app.teardown().await;
}

#[tokio::test]
async fn a_member_who_may_write_kv_cannot_swap_or_delete_a_secret_they_were_not_granted() {
    let app = TestApp::spawn().await;
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/v1/kv/bank-token",
            &app.admin.api_key,
            Some(json!({"value": "secret:bank-SECRET-123456"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let editor = app.member(&["flow_editor"]).await;
    for method in [Method::PUT, Method::DELETE] {
        let body = (method == Method::PUT).then(|| json!({"value": "secret:attacker-CHOSEN-999"}));
        let (status, body) = app
            .request(method, "/api/v1/kv/bank-token", &editor.api_key, body)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
    // Their own secret is theirs to replace.
    for value in ["secret:mine-SECRET-1111", "secret:mine-SECRET-2222"] {
        let (status, body) = app
            .request(
                Method::PUT,
                "/api/v1/kv/mine",
                &editor.api_key,
                Some(json!({"value": value})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn data_reaching_a_flow_can_never_name_a_secret() {
    let app = TestApp::spawn().await;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let store = received.clone();
    let server = serve(axum::Router::new().route(
        "/collect",
        axum::routing::post(move |body: String| {
            store.lock().unwrap().push(body);
            async { "ok" }
        }),
    ))
    .await;
    app.request(
        Method::PUT,
        "/api/v1/kv/bank-token",
        &app.admin.api_key,
        Some(json!({"value": "secret:bank-SECRET-123456"})),
    )
    .await;
    app.request(
        Method::PUT,
        "/api/v1/kv/cfg",
        &app.admin.api_key,
        Some(json!({"value": {"$secret": "bank-token"}})),
    )
    .await;
    // An admin's flow that forwards what it is given, as webhook flows do.
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "fwd", "type": "http_request", "params": {
            "method": "POST", "url": format!("{server}/collect"),
            "body": {"input": "{{ $input.payload }}", "vars": "{{ $vars.cfg }}"}}}]}))
        .await;
    let run = app
        .start_run(&flow, json!({"payload": {"$secret": "bank-token"}}))
        .await;
    let run = app.wait_run(&run).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(
        !got[0].contains("bank-SECRET"),
        "a value from data was decrypted: {}",
        got[0]
    );
    assert!(got[0].contains(r#""$secret":"bank-token""#), "{}", got[0]);
    app.teardown().await;
}
