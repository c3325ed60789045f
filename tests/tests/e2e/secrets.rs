//! Credentials, the KV store, just-in-time decryption in the worker,
//! scrubbing, grants on integrations, and key rotation under load.

use axum::http::HeaderMap;
use axum::routing::get;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::runs::serve;
use floq_shared::crypto::{Key, Keyring, generate};
use floq_shared::secrets;
use floq_tests::openapi::{Guard, operations};
use floq_tests::{Options, TestApp};

const TOKEN: &str = "sk_live_51HtokenSecretValue0042";

async fn credential(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    app.post("/api/v1/credentials", key, body).await
}

async fn bearer(app: &TestApp) -> String {
    let (status, body) = credential(
        app,
        &app.admin.api_key,
        json!({"name": "stripe", "type": "http_bearer", "data": {"token": TOKEN}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// A server that answers with everything it was sent, secrets included.
async fn echo_server() -> String {
    serve(axum::Router::new().route(
        "/echo",
        get(|headers: HeaderMap, query: axum::extract::RawQuery| async move {
            axum::Json(json!({
                "authorization": headers.get("authorization").and_then(|v| v.to_str().ok()),
                "x_api_key": headers.get("x-api-key").and_then(|v| v.to_str().ok()),
                "query": query.0,
            }))
        }),
    ))
    .await
}

fn call_echo(base: &str, extra: Value) -> Value {
    let mut params = json!({"method": "GET", "url": format!("{base}/echo")});
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"nodes": [{"id": "call", "type": "http_request", "params": params}]})
}

#[tokio::test]
async fn credential_data_is_checked_encrypted_and_never_returned() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let admin = app.admin.api_key.clone();
    let id = bearer(&app).await;
    let (_, shown) = app.get(&format!("/api/v1/credentials/{id}"), &admin).await;
    assert_eq!(shown["type"], "http_bearer");
    assert_eq!(shown["fields"], json!(["token"]));
    assert_eq!(shown["hint"], "token …0042");
    let (_, listed) = app.get("/api/v1/credentials", &admin).await;
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert!(!format!("{shown}{listed}").contains(TOKEN));

    let raw: Vec<u8> = sqlx::query_scalar("SELECT data FROM credentials WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains(TOKEN), "stored encrypted");
    // A ciphertext moved to another row does not open there.
    let keyring = Keyring::from_config(&app.config).unwrap();
    let here = keyring.decrypt(&raw, secrets::credential_binding(app.admin.company_id, &id));
    assert_eq!(
        serde_json::from_slice::<Value>(&here.unwrap()).unwrap(),
        json!({"token": TOKEN})
    );
    let elsewhere = keyring.decrypt(&raw, secrets::credential_binding(app.admin.company_id, "another-row"));
    assert!(elsewhere.is_err());

    for (bad, field) in [
        (
            json!({"name": "x", "type": "http_basic", "data": {"username": "u"}}),
            "data",
        ),
        (
            json!({"name": "x", "type": "postgres", "data": {"uri": "mysql://nope"}}),
            "data.uri",
        ),
        (json!({"name": "x", "type": "telepathy", "data": {}}), "type"),
    ] {
        let (status, body) = credential(&app, &admin, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
    }
    let (status, _) = credential(
        &app,
        &admin,
        json!({"name": "stripe", "type": "http_bearer", "data": {"token": "another-token"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, updated) = app
        .request(
            Method::PUT,
            &format!("/api/v1/credentials/{id}"),
            &admin,
            Some(json!({"data": {"token": "sk_live_rotatedRotatedRotated9999"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["hint"], "token …9999");
    assert_eq!(
        app.request(Method::DELETE, &format!("/api/v1/credentials/{id}"), &admin, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/api/v1/credentials/{id}"), &admin).await.0,
        StatusCode::NOT_FOUND
    );
    app.teardown().await;
}

/// Every GET endpoint, as an admin who can see everything, with secrets
/// stored in credentials and the KV store: none answers with one.
#[tokio::test]
async fn no_endpoint_ever_returns_secret_material() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let id = bearer(&app).await;
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/v1/kv/webhook-secret",
            &admin,
            Some(json!({"value": "secret:whsec_TopSecretValue77"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    app.wait_run(&run).await;
    let (user, key) = (app.admin.user_id.to_string(), app.admin.key_id.to_string());
    let (status, connection) = app
        .post(
            "/api/v1/sso/connections",
            &admin,
            json!({"name": "idp", "issuer": "https://idp.example.test", "client_id": "c",
                   "client_secret": "sso_TopSecretClientValue", "email_domains": ["acme.test"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{connection}");
    assert!(!connection.to_string().contains("sso_TopSecretClientValue"));
    let connection = connection["id"].as_str().unwrap().to_string();
    let schedule = uuid::Uuid::now_v7().to_string();
    let fixtures = [
        ("flow_id", flow.as_str()),
        ("run_id", run.as_str()),
        ("credential_id", id.as_str()),
        ("key", "webhook-secret"),
        ("user_id", user.as_str()),
        ("api_key_id", key.as_str()),
        ("connection_id", connection.as_str()),
        ("schedule_id", schedule.as_str()),
        ("version", "1"),
    ];
    let mut checked = 0;
    for op in operations(&app).await {
        let names = op.placeholders();
        if op.method != Method::GET
            || op.guard == Guard::Public
            || ["group_id", "flow_group_id", "grant_id"]
                .iter()
                .any(|f| names.iter().any(|n| n == f))
        {
            continue;
        }
        let path = op.path(&fixtures);
        let resp = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let text = if path.ends_with("/runs/events") {
            // A stream that never ends: what it sends in its first seconds.
            let mut resp = resp;
            let mut text = String::new();
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout(std::time::Duration::from_secs(2), resp.chunk()).await
            {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        } else {
            resp.text().await.unwrap()
        };
        for secret in [TOKEN, "whsec_TopSecretValue77", "sso_TopSecretClientValue"] {
            assert!(!text.contains(secret), "GET {path} returned a secret: {text}");
        }
        checked += 1;
    }
    assert!(checked >= 15, "walked only {checked} endpoints");
    let (_, kv) = app.get("/api/v1/kv/webhook-secret", &admin).await;
    assert_eq!(
        kv,
        json!({"id": kv["id"], "key": "webhook-secret", "secret": true, "allowed_origins": [], "updated_at": kv["updated_at"]})
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_worker_decrypts_for_the_node_and_scrubs_what_comes_back() {
    let app = TestApp::spawn().await;
    let base = echo_server().await;
    let id = bearer(&app).await;
    let run = app
        .run_flow(call_echo(&base, json!({"credential_id": id})), json!({}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // The server saw the real token; the stored run shows it masked.
    assert_eq!(run["output"]["body"]["authorization"], "Bearer [masked]");
    assert!(!run.to_string().contains(TOKEN), "{run}");

    let (_, query_key) = credential(
        &app,
        &app.admin.api_key,
        json!({"name": "maps", "type": "api_key_query", "data": {"name": "key", "value": "AIzaQueryKey123456"}}),
    )
    .await;
    let run = app
        .run_flow(call_echo(&base, json!({"credential_id": query_key["id"]})), json!({}))
        .await;
    assert_eq!(run["output"]["body"]["query"], "key=[masked]");
    assert!(!run.to_string().contains("AIzaQueryKey123456"));

    // Secret KV values reach a node only by reference, and come back masked too.
    app.request(
        Method::PUT,
        "/api/v1/kv/partner-key",
        &app.admin.api_key,
        Some(json!({"value": "secret:partner-SECRET-9911"})),
    )
    .await;
    let run = app
        .run_flow(
            call_echo(&base, json!({"headers": {"x-api-key": {"$secret": "partner-key"}}})),
            json!({}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["body"]["x_api_key"], "[masked]");

    // Each decryption is audited with the credential, node and run.
    let (_, entries) = app
        .get(
            &format!("/api/v1/audit?action=credential.decrypt&resource_id={id}"),
            &app.admin.api_key,
        )
        .await;
    let entry = &entries["items"][0];
    assert_eq!(entry["resource"]["id"], id.as_str());
    assert_eq!(entry["details"]["node_id"], "call");
    assert!(entry["details"]["run_id"].is_string());
    let (_, kv_entries) = app.get("/api/v1/audit?action=kv.decrypt", &app.admin.api_key).await;
    assert_eq!(kv_entries["items"][0]["resource"]["id"], "partner-key");
    assert!(
        floq_shared::telemetry::METRICS
            .secret_decryptions
            .with_label_values(&["credential"])
            .get()
            >= 2
    );
    app.teardown().await;
}

#[tokio::test]
async fn kv_values_feed_templates_and_nodes_but_secrets_stay_hidden() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    for (key, value) in [
        ("region", json!("eu-west")),
        ("limits", json!({"max": 5})),
        ("token", json!("secret:hidden-value-123")),
    ] {
        let (status, body) = app
            .request(
                Method::PUT,
                &format!("/api/v1/kv/{key}"),
                &admin,
                Some(json!({"value": value})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = app
        .request(Method::PUT, "/api/v1/kv/bad key!", &admin, Some(json!({"value": 1})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, listed) = app.get("/api/v1/kv", &admin).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    assert!(!listed.to_string().contains("hidden-value-123"));

    let run = app
        .run_flow(
            json!({"nodes": [
                {"id": "show", "type": "set", "params": {"values": {"region": "{{ $vars.region }}", "max": "{{ $vars.limits.max }}", "token": "{{ $vars.token }}"}}},
                {"id": "save", "type": "kv_set", "params": {"key": "last-region", "value": "{{ $node.show.output.region }}"}},
                {"id": "read", "type": "kv_get", "params": {"key": "last-region"}}
            ], "edges": [{"from": "show", "to": "save"}, {"from": "save", "to": "read"}]}),
            json!({}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let show = &run["steps"][0]["output"];
    assert_eq!(
        show,
        &json!({"region": "eu-west", "max": 5, "token": null}),
        "secrets are not $vars"
    );
    assert_eq!(
        run["output"],
        json!({"key": "last-region", "found": true, "value": "eu-west"})
    );
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "peek", "type": "kv_get", "params": {"key": "token"}}]}),
            json!({}),
        )
        .await;
    assert_eq!(run["steps"][0]["error"]["code"], "kv_secret");

    // Another company sees none of it.
    let globex = app.other_company().await;
    assert_eq!(
        app.get("/api/v1/kv/region", &globex.api_key).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/api/v1/kv", &globex.api_key).await.1["items"], json!([]));
    let viewer = app.member(&["viewer"]).await;
    assert_eq!(app.get("/api/v1/kv/region", &viewer.api_key).await.0, StatusCode::OK);
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/v1/kv/region",
            &viewer.api_key,
            Some(json!({"value": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.teardown().await;
}

#[tokio::test]
async fn credentials_need_a_grant_to_be_seen_or_used_and_stay_in_their_company() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let id = bearer(&app).await;
    let using = |credential: &str| {
        json!({"name": "uses it", "definition": {"nodes": [{"id": "call", "type": "http_request",
            "params": {"method": "GET", "url": "http://127.0.0.1:9/x", "credential_id": credential}}]}})
    };
    let viewer = app.member(&["viewer"]).await;
    assert_eq!(
        app.get(&format!("/api/v1/credentials/{id}"), &viewer.api_key).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/credentials", &viewer.api_key).await.1["items"],
        json!([])
    );
    app.grant("user", viewer.user_id, "integration", &id, "view").await;
    assert_eq!(
        app.get(&format!("/api/v1/credentials/{id}"), &viewer.api_key).await.0,
        StatusCode::OK
    );
    let (status, _) = app
        .request(
            Method::PUT,
            &format!("/api/v1/credentials/{id}"),
            &viewer.api_key,
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewing is not managing");

    let editor = app.member(&["flow_editor"]).await;
    let (status, body) = app.post("/api/v1/flows", &editor.api_key, using(&id)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"][0]["field"],
        "definition.nodes[0].params.credential_id"
    );
    app.grant("user", editor.user_id, "integration", &id, "view").await;
    assert_eq!(
        app.post("/api/v1/flows", &editor.api_key, using(&id)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    app.grant("user", editor.user_id, "integration", &id, "execute").await;
    assert_eq!(
        app.post("/api/v1/flows", &editor.api_key, using(&id)).await.0,
        StatusCode::CREATED
    );

    // An integration manager manages what they made, not what they were not granted.
    let manager = app.member(&["integration_manager"]).await;
    let (status, theirs) = credential(
        &app,
        &manager.api_key,
        json!({"name": "their smtp", "type": "smtp", "data": {"uri": "smtp://u:p4ssw0rd@mail.test"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    assert_eq!(theirs["hint"], "smtp://u@mail.test");
    assert_eq!(
        app.get(&format!("/api/v1/credentials/{id}"), &manager.api_key).await.0,
        StatusCode::NOT_FOUND
    );

    let globex = app.other_company().await;
    assert_eq!(
        app.get(&format!("/api/v1/credentials/{id}"), &globex.api_key).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("/api/v1/credentials/{id}"),
            &globex.api_key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.post("/api/v1/flows", &globex.api_key, using(&id)).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another company's credential cannot be referenced: {body}"
    );
    app.teardown().await;
}

/// Values sealed by an old key are moved to the new primary while runs keep
/// using them; afterwards the old key can go and nothing is lost.
#[tokio::test]
async fn key_rotation_under_load_loses_nothing() {
    let old = generate();
    let app = TestApp::spawn_configured(Options::default(), |c| {
        c.enc_old_keys = vec![(
            floq_shared::Secret::new(old.0.clone()),
            floq_shared::Secret::new(old.1.clone()),
        )];
    })
    .await;
    let base = echo_server().await;
    let old_ring = Keyring::new(Key::derive(&old.0, &old.1).unwrap(), vec![]);
    let company = app.admin.company_id;
    // 60 credentials and 60 secrets as an older deployment left them: sealed by the old key.
    let mut ids = Vec::new();
    for n in 0..60 {
        let id = uuid::Uuid::now_v7();
        let token = format!("old-token-{n:04}-abcdefgh");
        let sealed = old_ring.encrypt(
            json!({"token": token}).to_string().as_bytes(),
            secrets::credential_binding(company, &id.to_string()),
        );
        sqlx::query(
            "INSERT INTO credentials (id, company_id, name, type, data, key_id, fields, hint)
             VALUES ($1, $2, $3, 'http_bearer', $4, $5, '{token}', 'token …')",
        )
        .bind(id)
        .bind(company)
        .bind(format!("legacy-{n}"))
        .bind(sealed)
        .bind(old_ring.primary_id())
        .execute(&app.pool)
        .await
        .unwrap();
        let key = format!("legacy-{n}");
        let sealed = old_ring.encrypt(
            format!("kv-secret-{n:04}").as_bytes(),
            secrets::kv_binding(company, &key),
        );
        sqlx::query("INSERT INTO kv (company_id, key, secret, key_id) VALUES ($1, $2, $3, $4)")
            .bind(company)
            .bind(&key)
            .bind(sealed)
            .bind(old_ring.primary_id())
            .execute(&app.pool)
            .await
            .unwrap();
        ids.push(id);
    }
    let mut flows = Vec::new();
    for id in ids.iter().take(10) {
        flows.push(app.deployed_flow(call_echo(&base, json!({"credential_id": id}))).await);
    }
    // Start the load, then rotate under it.
    let mut runs = Vec::new();
    for flow in flows.iter().cycle().take(120) {
        runs.push(app.start_run(flow, json!({})).await);
    }
    let keyring = Keyring::from_config(&app.config).unwrap();
    let rotated = floq_api::rotate::rotate(&app.pool, &keyring, 7).await.unwrap();
    assert_eq!(rotated.credentials, 60);
    assert_eq!(rotated.kv_secrets, 60);
    assert!(rotated.undecryptable.is_empty());
    for run in &runs {
        let done = app.wait_run(run).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["output"]["body"]["authorization"], "Bearer [masked]");
    }
    // With the old key gone, every value still opens.
    let new_only = Keyring::new(
        Key::derive(app.config.enc_key.0.expose(), app.config.enc_key.1.expose()).unwrap(),
        vec![],
    );
    let rows: Vec<(uuid::Uuid, Vec<u8>, String)> = sqlx::query_as("SELECT id, data, key_id FROM credentials")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for (id, data, key_id) in rows {
        assert_eq!(key_id, new_only.primary_id());
        new_only
            .decrypt(&data, secrets::credential_binding(company, &id.to_string()))
            .unwrap();
    }
    let again = floq_api::rotate::rotate(&app.pool, &keyring, 7).await.unwrap();
    assert_eq!(
        (again.credentials, again.kv_secrets),
        (0, 0),
        "a second pass has nothing left to do"
    );
    app.teardown().await;
}
