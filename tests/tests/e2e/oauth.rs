//! OAuth2 integration links (issue 16): the provider registry, connecting a
//! credential through a mock provider on 127.0.0.1, the worker's
//! just-in-time refresh (expiry, a `401`, `invalid_grant`), and where the
//! bearer may go. The two-worker-process single-flight test is in
//! `tests/faults/oauth_refresh.rs`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::runs::serve;
use floq_tests::oauth_server::{self, CLIENT_ID, CLIENT_SECRET, OAuthServer};
use floq_tests::{Options, TestApp, assert_error, failed_step};

/// An app whose registry holds the mock provider as `mock`.
async fn app_with(server: &OAuthServer, worker: bool) -> TestApp {
    let providers = floq_shared::oauth::providers::parse(&json!([server.provider("mock", "basic")]).to_string())
        .expect("the mock provider is a valid entry");
    TestApp::spawn_configured(
        Options {
            worker,
            scheduler: false,
        },
        move |c| c.oauth_providers = providers,
    )
    .await
}

async fn oauth_credential(app: &TestApp) -> String {
    app.credential(
        &app.admin.api_key,
        "oauth2",
        json!({"provider": "mock", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}),
    )
    .await
}

async fn connected(app: &TestApp, id: &str) -> Value {
    let (status, location, body) = oauth_server::connect(&app.base, &app.admin.api_key, id, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(location, None);
    body
}

fn call(server: &OAuthServer, credential: &str) -> Value {
    json!({"nodes": [{"id": "call", "type": "http_request",
                      "params": {"method": "GET", "url": server.api_url(), "credential_id": credential}}]})
}

async fn expire(app: &TestApp, credential: &str) {
    sqlx::query("UPDATE oauth_links SET expires_at = now() - interval '1 minute' WHERE credential_id = $1::uuid")
        .bind(credential)
        .execute(&app.pool)
        .await
        .unwrap();
}

async fn audited(app: &TestApp, action: &str) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT outcome, details FROM audit_log WHERE action = $1 ORDER BY id")
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_connect_stores_tokens_encrypted_and_reads_show_only_the_link_state() {
    let server = OAuthServer::start().await;
    let app = app_with(&server, true).await;
    let admin = app.admin.api_key.clone();

    let (status, providers) = app.get("/api/v1/oauth/providers", &admin).await;
    assert_eq!(status, StatusCode::OK, "{providers}");
    let ids: Vec<&str> = providers["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["microsoft", "google", "github", "slack", "salesforce", "mock"]);
    assert_eq!(providers["items"][5]["source"], "operator");
    assert_eq!(
        providers["items"][0]["api_origins"],
        json!(["https://graph.microsoft.com"])
    );

    // Only registered providers, and no endpoint of the credential's own.
    for (data, field) in [
        (
            json!({"provider": "evil", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}),
            "data.provider",
        ),
        (
            json!({"provider": "mock", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "token_url": "https://evil.example/token"}),
            "data",
        ),
    ] {
        let (status, body) = app
            .post(
                "/api/v1/credentials",
                &admin,
                json!({"name": "x", "type": "oauth2", "data": data}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
    }

    let id = oauth_credential(&app).await;
    let (_, before) = app.get(&format!("/api/v1/credentials/{id}"), &admin).await;
    assert_eq!(
        before["oauth"],
        json!({"connected": false, "expires_at": null, "scopes": [], "needs_reconnect": false})
    );
    assert_eq!(before["hint"], format!("mock client {CLIENT_ID}"));

    let (status, location, _) = oauth_server::connect(
        &app.base,
        &admin,
        &id,
        json!({"return_to": "/settings/credentials?tab=oauth"}),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/settings/credentials?tab=oauth"));
    let access = server.current_access().unwrap();
    let refresh = server.current_refresh().unwrap();

    let (_, shown) = app.get(&format!("/api/v1/credentials/{id}"), &admin).await;
    assert_eq!(shown["oauth"]["connected"], true, "{shown}");
    assert_eq!(shown["oauth"]["needs_reconnect"], false);
    assert_eq!(shown["oauth"]["scopes"], json!(["read", "write"]));
    assert!(shown["oauth"]["expires_at"].is_string());
    let (_, listed) = app.get("/api/v1/credentials", &admin).await;
    assert_eq!(listed["items"][0]["oauth"], shown["oauth"]);
    let raw: (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT access_token, refresh_token FROM oauth_links WHERE credential_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    for text in [
        format!("{shown}{listed}"),
        String::from_utf8_lossy(&raw.0).into(),
        String::from_utf8_lossy(&raw.1).into(),
    ] {
        assert!(!text.contains(&access) && !text.contains(&refresh) && !text.contains(CLIENT_SECRET));
    }

    // A node gets the token as a bearer, and its output never shows it.
    let run = app.run_flow(call(&server, &id), json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["status"], 200, "{run}");
    assert_eq!(server.bearers(), vec![access.clone()]);
    assert!(!run.to_string().contains(&access));
    assert_eq!(server.refreshes(), 0, "a fresh token is used as it is");

    let started = audited(&app, "credential.oauth_authorize").await;
    let done = audited(&app, "credential.oauth_connect").await;
    assert_eq!((started.len(), done.len()), (1, 1));
    assert_eq!(done[0].0, "success");
    assert_eq!(done[0].1["provider"], "mock");
    app.teardown().await;
}

#[tokio::test]
async fn replayed_expired_forged_and_foreign_states_are_refused() {
    let server = OAuthServer::start().await;
    let app = app_with(&server, false).await;
    let admin = app.admin.api_key.clone();
    let id = oauth_credential(&app).await;
    let browser = oauth_server::Browser::default();
    let authorize = |body: Value| {
        let (browser, base, admin, id) = (browser.clone(), app.base.clone(), admin.clone(), id.clone());
        async move { browser.authorize(&base, &admin, &id, body).await }
    };
    let back = |url: String| {
        let (browser, base) = (browser.clone(), app.base.clone());
        async move { browser.consent(&url, &base).await }
    };

    let (status, started) = authorize(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let url = url::Url::parse(started["authorize_url"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["redirect_uri"],
        format!("{}/api/v1/oauth/callback", app.config.public_url)
    );
    assert_eq!(q["scope"], "read write");
    let callback = back(started["authorize_url"].as_str().unwrap().to_string()).await;
    let (status, _, body) = browser.callback(&callback).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["oauth"]["connected"], true);
    // Single use.
    let (status, _, body) = browser.callback(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(
        &body,
        "oauth_state_invalid",
        "this connect request is unknown, used already or expired: start connecting again",
        Value::Null,
    );

    // Finished in another browser (no binding cookie, or another one): refused, and spent.
    let (_, started) = authorize(json!({})).await;
    let callback = back(started["authorize_url"].as_str().unwrap().to_string()).await;
    let elsewhere = oauth_server::Browser::default();
    let (status, _, body) = elsewhere.callback(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "oauth_browser_mismatch", "{body}");
    let (status, _, body) = browser.callback(&callback).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("oauth_state_invalid"))
    );
    let failures = audited(&app, "credential.oauth_connect").await;
    assert!(
        failures
            .iter()
            .any(|(o, d)| o == "failure" && d["reason"] == "browser_mismatch")
    );

    // Expired before the browser came back.
    let (_, started) = authorize(json!({})).await;
    let callback = back(started["authorize_url"].as_str().unwrap().to_string()).await;
    sqlx::query("UPDATE oauth_states SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, _, body) = browser.callback(&callback).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("oauth_state_invalid"))
    );

    // Forged: another company's id on a real state, a made-up one, none at all.
    let globex = app.other_company().await;
    let (_, started) = authorize(json!({})).await;
    let callback = back(started["authorize_url"].as_str().unwrap().to_string()).await;
    let forged = callback.replace(&app.admin.company_id.to_string(), &globex.company_id.to_string());
    assert_ne!(forged, callback);
    for url in [
        forged,
        format!(
            "{}/api/v1/oauth/callback?code=x&state={}.{}",
            app.base,
            app.admin.company_id,
            "A".repeat(43)
        ),
        format!("{}/api/v1/oauth/callback?code=x", app.base),
    ] {
        let (status, _, body) = browser.callback(&url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["error"]["code"], "oauth_state_invalid");
    }
    // The real one still works after the forgeries (it was not spent by them).
    let (status, _, _) = browser.callback(&callback).await;
    assert_eq!(status, StatusCode::OK);

    // The user refused at the provider: audited, nothing stored.
    let (_, started) = authorize(json!({})).await;
    let state = url::Url::parse(started["authorize_url"].as_str().unwrap())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let denied = format!("{}/api/v1/oauth/callback?error=access_denied&state={state}", app.base);
    let (status, _, body) = browser.callback(&denied).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "oauth_denied");
    let failures = audited(&app, "credential.oauth_connect").await;
    assert!(
        failures
            .iter()
            .any(|(o, d)| o == "failure" && d["reason"] == "access_denied"),
        "{failures:?}"
    );

    // Only a path of this site to return to.
    for bad in [
        "https://evil.example/x",
        "//evil.example",
        "/\\evil.example",
        "settings",
    ] {
        let (status, body) = authorize(json!({"return_to": bad})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(body["error"]["details"][0]["field"], "return_to");
    }
    // Only an oauth2 credential connects.
    let bearer = app
        .credential(&admin, "http_bearer", json!({"token": "t0k3n-t0k3n-t0k3n"}))
        .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/credentials/{bearer}/oauth/authorize"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("not_oauth2"))
    );

    // Tenancy and roles on every new endpoint.
    let path = format!("/api/v1/credentials/{id}/oauth/authorize");
    let (status, _) = app.post(&path, &globex.api_key, json!({})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another company's credential does not exist for it"
    );
    let editor = app.member(&["flow_editor"]).await;
    let (status, _) = app.post(&path, &editor.api_key, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "integration:manage is needed to connect");
    let (status, _) = app.get("/api/v1/oauth/providers", &editor.api_key).await;
    assert_eq!(status, StatusCode::OK, "integration:read lists providers");
    let nobody = app.member(&["none"]).await;
    let (status, _) = app.get("/api/v1/oauth/providers", &nobody.api_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An integration manager without a grant on the credential cannot see it to connect it.
    let manager = app.member(&["integration_manager"]).await;
    let (status, _) = app.post(&path, &manager.api_key, json!({})).await;
    assert!(
        matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
        "{status}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_for_concurrent_runs_and_rotated() {
    let server = OAuthServer::start().await;
    server.slow_refreshes(Duration::from_millis(300));
    let app = app_with(&server, true).await;
    let id = oauth_credential(&app).await;
    connected(&app, &id).await;
    let (old_access, old_refresh) = (server.current_access().unwrap(), server.current_refresh().unwrap());
    expire(&app, &id).await;
    let flow = app.deployed_flow(call(&server, &id)).await;
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(app.start_run(&flow, json!({})).await);
    }
    for run in &runs {
        let run = app.wait_run(run).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["output"]["status"], 200, "{run}");
    }
    assert_eq!(server.refreshes(), 1, "one refresh for all concurrent runs");
    let new_access = server.current_access().unwrap();
    assert_ne!(new_access, old_access);
    assert!(
        server.bearers().iter().all(|b| *b == new_access),
        "every run used the new token"
    );
    assert_ne!(
        server.current_refresh().unwrap(),
        old_refresh,
        "the refresh token rotated"
    );
    let (_, shown) = app.get(&format!("/api/v1/credentials/{id}"), &app.admin.api_key).await;
    let expires: chrono::DateTime<chrono::Utc> = shown["oauth"]["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires > chrono::Utc::now() + chrono::Duration::minutes(50), "{shown}");
    let refreshed = audited(&app, "credential.oauth_refresh").await;
    assert_eq!(refreshed.len(), 1);
    assert_eq!(refreshed[0].0, "success");
    assert_eq!(refreshed[0].1["rotated"], true);
    app.teardown().await;
}

#[tokio::test]
async fn a_401_triggers_one_refresh_and_one_retry() {
    let server = OAuthServer::start().await;
    let app = app_with(&server, true).await;
    let id = oauth_credential(&app).await;
    connected(&app, &id).await;
    let old = server.current_access().unwrap();
    server.revoke_access();
    let run = app.run_flow(call(&server, &id), json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["status"], 200, "{run}");
    let new = server.current_access().unwrap();
    assert_eq!(
        server.bearers(),
        vec![old, new.clone()],
        "refused once, then retried with the new token"
    );
    assert_eq!(server.refreshes(), 1);
    assert!(!run.to_string().contains(&new), "the refreshed token is scrubbed too");

    // An API that refuses every token gets one retry, after one refresh; its 401 is then the node's output.
    let before = server.refreshes();
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "call", "type": "http_request",
                              "params": {"method": "GET", "url": format!("{}/api/reject", server.base),
                                         "credential_id": id}}]}),
            json!({}),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["status"], 401, "{run}");
    assert_eq!(server.refreshes(), before + 1);
    assert_eq!(server.rejected(), 2, "one call and one retry");
    app.teardown().await;
}

#[tokio::test]
async fn invalid_grant_marks_the_credential_and_fails_the_node_until_it_is_connected_again() {
    let server = OAuthServer::start().await;
    let app = app_with(&server, true).await;
    let id = oauth_credential(&app).await;
    connected(&app, &id).await;
    server.refuse_refreshes();
    expire(&app, &id).await;
    let run = app.run_flow(call(&server, &id), json!({})).await;
    let (code, message) = failed_step(&run);
    assert_eq!(code, "credential_refresh_failed");
    assert!(message.contains("invalid_grant"), "{message}");
    let (_, shown) = app.get(&format!("/api/v1/credentials/{id}"), &app.admin.api_key).await;
    assert_eq!(shown["oauth"]["needs_reconnect"], true, "{shown}");
    let failures = audited(&app, "credential.oauth_refresh").await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, "failure");
    assert_eq!(failures[0].1["reason"], "invalid_grant");
    assert!(server.bearers().is_empty(), "the API never got the expired token");

    // Until reconnected, runs fail at once without asking the provider again.
    let asked = server.token_requests();
    let run = app.run_flow(call(&server, &id), json!({})).await;
    assert_eq!(failed_step(&run).0, "credential_refresh_failed");
    assert_eq!(server.token_requests(), asked);

    connected(&app, &id).await;
    let (_, shown) = app.get(&format!("/api/v1/credentials/{id}"), &app.admin.api_key).await;
    assert_eq!(shown["oauth"]["needs_reconnect"], false);
    let run = app.run_flow(call(&server, &id), json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    app.teardown().await;
}

#[tokio::test]
async fn the_bearer_goes_only_to_the_providers_api_origins() {
    let server = OAuthServer::start().await;
    let app = app_with(&server, true).await;
    let id = oauth_credential(&app).await;
    connected(&app, &id).await;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let elsewhere = serve(axum::Router::new().route(
        "/collect",
        axum::routing::get(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { "thanks" }
        }),
    ))
    .await;
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "call", "type": "http_request",
                              "params": {"method": "GET", "url": format!("{elsewhere}/collect"), "credential_id": id}}]}),
            json!({}),
        )
        .await;
    let (code, message) = failed_step(&run);
    assert_eq!(code, "destination_not_allowed", "{message}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing left for another origin"
    );

    // Allowed origins that name none of the provider's: the token may go nowhere (not "anywhere"), and the node
    // fails before anything is sent.
    let resp = app
        .client
        .put(format!("{}/api/v1/credentials/{id}", app.base))
        .bearer_auth(&app.admin.api_key)
        .json(&json!({"allowed_origins": [elsewhere.clone()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "call", "type": "http_request",
                              "params": {"method": "GET", "url": format!("{elsewhere}/collect"), "credential_id": id}}]}),
            json!({}),
        )
        .await;
    let (code, message) = failed_step(&run);
    assert_eq!(code, "credential_invalid", "{message}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the token went nowhere"
    );

    // An oauth2 credential not yet connected fails its node plainly.
    let fresh = oauth_credential(&app).await;
    let run = app.run_flow(call(&server, &fresh), json!({})).await;
    assert_eq!(failed_step(&run).0, "credential_not_connected");
    app.teardown().await;
}

#[tokio::test]
async fn key_rotation_reseals_link_tokens_and_a_stale_refresh_stores_nothing() {
    use floq_shared::crypto::{Key, Keyring, generate};
    use floq_shared::ids::{CompanyId, CredentialId};
    use floq_shared::oauth::{self, links};
    let server = OAuthServer::start().await;
    let app = app_with(&server, false).await;
    let id = oauth_credential(&app).await;
    connected(&app, &id).await;
    let (access, refresh) = (server.current_access().unwrap(), server.current_refresh().unwrap());

    // A stale writer (a refresh whose lease lapsed, or from an older generation) changes nothing.
    let (company, credential) = (CompanyId(app.admin.company_id), CredentialId(id.parse().unwrap()));
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let sealed = || links::SealedTokens {
        access_token: b"not-stored".to_vec(),
        refresh_token: None,
        key_id: "x".into(),
        expires_at: None,
        scopes: vec![],
    };
    let mut tx = floq_shared::db::tenant_tx(&app.pool, app.admin.company_id)
        .await
        .unwrap();
    let generation = links::find(&mut tx, company, credential)
        .await
        .unwrap()
        .unwrap()
        .generation;
    assert!(
        links::take_lease(&mut tx, company, credential, a, generation, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !links::take_lease(&mut tx, company, credential, b, generation, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(
        links::store_refreshed(&mut tx, company, credential, b, generation, sealed())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        links::store_refreshed(&mut tx, company, credential, a, generation - 1, sealed())
            .await
            .unwrap(),
        None
    );
    links::release(&mut tx, company, credential, a).await.unwrap();
    tx.commit().await.unwrap();

    let primary = Key::derive(app.config.enc_key.0.expose(), app.config.enc_key.1.expose()).unwrap();
    let next = generate();
    let next_key = || Key::derive(&next.0, &next.1).unwrap();
    let keyring = Keyring::new(next_key(), vec![primary]);
    let rotated = floq_api::rotate::rotate(&app.pool, &keyring, 5).await.unwrap();
    assert_eq!(rotated.oauth_links, 1);
    assert!(rotated.undecryptable.is_empty());
    let (sealed_access, sealed_refresh, key_id): (Vec<u8>, Vec<u8>, String) =
        sqlx::query_as("SELECT access_token, refresh_token, key_id FROM oauth_links WHERE credential_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let new_only = Keyring::new(next_key(), vec![]);
    assert_eq!(key_id, new_only.primary_id());
    let company_id = app.admin.company_id;
    let opened = new_only
        .decrypt(&sealed_access, oauth::access_token_binding(company_id, &id))
        .unwrap();
    assert_eq!(opened.as_slice(), access.as_bytes());
    let opened = new_only
        .decrypt(&sealed_refresh, oauth::refresh_token_binding(company_id, &id))
        .unwrap();
    assert_eq!(opened.as_slice(), refresh.as_bytes());
    assert!(
        new_only
            .decrypt(&sealed_access, oauth::refresh_token_binding(company_id, &id))
            .is_err(),
        "bound to its column"
    );
    assert_eq!(
        floq_api::rotate::rotate(&app.pool, &keyring, 5)
            .await
            .unwrap()
            .oauth_links,
        0
    );
    app.teardown().await;
}

/// With nothing in `FLOQ_EGRESS_ALLOW`, the registered provider's token
/// endpoint on 127.0.0.1 is still reachable for token calls (the operator
/// registered it), while flows still cannot reach that address.
#[tokio::test]
async fn a_registered_token_endpoint_is_trusted_for_token_calls_only() {
    let server = OAuthServer::start().await;
    let providers =
        floq_shared::oauth::providers::parse(&json!([server.provider("mock", "post")]).to_string()).unwrap();
    let app = TestApp::spawn_configured(
        Options {
            worker: true,
            scheduler: false,
        },
        move |c| {
            c.oauth_providers = providers;
            c.egress_allow = vec![];
        },
    )
    .await;
    let id = oauth_credential(&app).await;
    let connected = connected(&app, &id).await;
    assert_eq!(
        connected["oauth"]["connected"], true,
        "the API's code exchange reached the provider"
    );
    expire(&app, &id).await;
    // The worker's refresh reaches the token endpoint too; the flow's own call does not reach 127.0.0.1.
    let run = app.run_flow(call(&server, &id), json!({})).await;
    let (code, message) = failed_step(&run);
    assert_eq!(code, "egress_denied", "{message}");
    assert_eq!(server.refreshes(), 1);
    app.teardown().await;
}
