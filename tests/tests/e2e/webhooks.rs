//! Webhook triggers: the token is the credential, signatures guard against
//! forgery and replay, and the request becomes the run's `$input`.

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use floq_tests::TestApp;

fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_webhook_turns_a_request_into_a_run_and_its_token_rotates() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &admin,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let path = hook["path"].as_str().unwrap().to_string();
    let (_, shown) = app.get(&format!("/api/v1/flows/{flow}/webhook"), &admin).await;
    assert_eq!(shown["enabled"], true);
    assert!(
        !shown.to_string().contains(hook["token"].as_str().unwrap()),
        "the token is shown once"
    );

    let resp = app
        .client
        .post(format!("{}{path}?order=42&note=a%20b", app.base))
        .header("authorization", "Bearer not-for-the-flow")
        .header("cookie", "floq_session=nope")
        .header("x-source", "shop")
        .json(&json!({"total": 12.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let run = app.wait_run(body["run_id"].as_str().unwrap()).await;
    assert_eq!(run["trigger"], "webhook");
    let input = &run["input"];
    assert_eq!(input["method"], "POST");
    assert_eq!(input["body"], json!({"total": 12.5}));
    assert_eq!(input["query"], json!({"order": "42", "note": "a b"}));
    assert_eq!(input["headers"]["x-source"], "shop");
    assert!(input["headers"].get("authorization").is_none() && input["headers"].get("cookie").is_none());

    let get = app.client.get(format!("{}{path}", app.base)).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.client
            .post(format!("{}/hooks/unknown", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let (_, rotated) = app
        .post(&format!("/api/v1/flows/{flow}/webhook/rotate"), &admin, json!({}))
        .await;
    let new_path = rotated["path"].as_str().unwrap();
    assert_eq!(
        app.client
            .post(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.client
            .post(format!("{}{new_path}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );

    assert_eq!(
        app.request(Method::DELETE, &format!("/api/v1/flows/{flow}/webhook"), &admin, None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.client
            .post(format!("{}{new_path}", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let (_, audit) = app.get("/api/v1/audit?action=webhook.*", &admin).await;
    assert!(audit["items"].as_array().unwrap().len() >= 3, "{audit}");
    assert!(!audit.to_string().contains(rotated["token"].as_str().unwrap()));
    app.teardown().await;
}

#[tokio::test]
async fn signed_webhooks_refuse_forged_and_replayed_calls() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/webhook"),
            &admin,
            Some(json!({"signed": true, "tolerance_seconds": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let url = format!("{}{}", app.base, hook["path"].as_str().unwrap());
    let secret = hook["secret"].as_str().unwrap().to_string();
    let body = r#"{"event":"paid"}"#;
    let now = chrono::Utc::now().timestamp();
    let call = |signature: Option<String>| {
        let mut req = app
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            req = req.header("x-floq-signature", s);
        }
        req.send()
    };
    assert_eq!(call(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(Some(sign("whsec_wrong", now, body))).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(Some(sign(&secret, now - 600, body))).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "a replay"
    );
    assert_eq!(
        call(Some(sign(&secret, now, r#"{"event":"refunded"}"#)))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED,
        "a tampered body"
    );
    let ok = call(Some(sign(&secret, now, body))).await.unwrap();
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let run: Value = ok.json().await.unwrap();
    let run = app.wait_run(run["run_id"].as_str().unwrap()).await;
    assert_eq!(run["input"]["body"], json!({"event": "paid"}));
    assert!(run["input"]["headers"].get("x-floq-signature").is_none());

    // Rotation changes the secret too.
    let (_, rotated) = app
        .post(&format!("/api/v1/flows/{flow}/webhook/rotate"), &admin, json!({}))
        .await;
    assert_ne!(rotated["secret"], hook["secret"]);
    app.teardown().await;
}
