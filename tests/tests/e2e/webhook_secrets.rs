//! Webhook signing secrets of their own (issue 14 #8): random per webhook,
//! stored sealed and bound to their row, independent of `FLOQ_JWT_SECRET`;
//! webhooks from before migration 0020 keep the secret they had.

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use floq_shared::crypto::{self, Key, Keyring};
use floq_shared::{Secret, db};
use floq_tests::TestApp;

fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The secret a webhook had before migration 0020, written out as the old
/// code computed it (the oracle the backfill must match).
fn pre_0020_secret(jwt_secret: &str, flow_id: Uuid, version: i32) -> String {
    let key = Sha256::digest(format!("floq-webhook-secret:{jwt_secret}").as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{flow_id}:{version}").as_bytes());
    format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends one signed call (a fresh body each time, so no call is a replay) and returns its status.
async fn signed_call(app: &TestApp, path: &str, secret: &str) -> StatusCode {
    let body = json!({"nonce": Uuid::new_v4()}).to_string();
    let t = chrono::Utc::now().timestamp();
    app.client
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/json")
        .header("x-floq-signature", sign(secret, t, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn put_webhook(app: &TestApp, key: &str, flow: &str, settings: Value) -> (StatusCode, Value) {
    app.request(
        Method::PUT,
        &format!("/api/v1/flows/{flow}/webhook"),
        key,
        Some(settings),
    )
    .await
}

async fn rotate(app: &TestApp, key: &str, flow: &str) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/flows/{flow}/webhook/rotate"), key, json!({}))
        .await
}

/// A deployed flow with a signed webhook: `(flow id, path, secret)`.
async fn signed_hook(app: &TestApp) -> (String, String, String) {
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, hook) = put_webhook(app, &app.admin.api_key, &flow, json!({"signed": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    (
        flow,
        hook["path"].as_str().unwrap().to_string(),
        hook["secret"].as_str().unwrap().to_string(),
    )
}

/// A flow's webhook row: the sealed secret, its key id and the whole row as text.
async fn stored(app: &TestApp, flow: Uuid) -> (Option<Vec<u8>>, Option<String>, String) {
    sqlx::query_as(
        "SELECT signing_secret, signing_key_id, row_to_json(w)::text FROM flow_webhooks w WHERE flow_id = $1",
    )
    .bind(flow)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Writes a webhook row's secret columns as the flow's company (RLS is forced, also for the test's pool).
async fn set_sealed(app: &TestApp, company: Uuid, flow: Uuid, sealed: Option<&[u8]>, key_id: Option<&str>) {
    let mut tx = db::tenant_tx(&app.pool, company).await.unwrap();
    sqlx::query("UPDATE flow_webhooks SET signing_secret = $2, signing_key_id = $3 WHERE flow_id = $1")
        .bind(flow)
        .bind(sealed)
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

fn is_secret_format(secret: &str) -> bool {
    secret
        .strip_prefix("whsec_")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn a_signed_webhooks_secret_survives_a_new_jwt_secret_and_rotation_replaces_it() {
    let mut app = TestApp::spawn().await;
    let (flow, path, secret) = signed_hook(&app).await;
    assert!(is_secret_format(&secret), "{secret}");
    assert_eq!(signed_call(&app, &path, &secret).await, StatusCode::ACCEPTED);

    // The operator rotates the API-key secret: the webhook's signers notice nothing.
    app.restart_api(|c| c.jwt_secret = Secret::new(format!("rotated-jwt-secret-{}", Uuid::new_v4().simple())))
        .await;
    assert_eq!(signed_call(&app, &path, &secret).await, StatusCode::ACCEPTED);

    // Rotating the webhook gives a new secret (and token); the old secret is refused.
    let (status, rotated) = rotate(&app, &app.admin.api_key, &flow).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    let new_path = rotated["path"].as_str().unwrap().to_string();
    assert!(is_secret_format(&new_secret) && new_secret != secret, "{rotated}");
    assert_eq!(signed_call(&app, &new_path, &secret).await, StatusCode::UNAUTHORIZED);
    assert_eq!(signed_call(&app, &new_path, &new_secret).await, StatusCode::ACCEPTED);

    // Shown once: neither reads nor the audit trail carry it.
    let (_, shown) = app
        .get(&format!("/api/v1/flows/{flow}/webhook"), &app.admin.api_key)
        .await;
    assert_eq!(shown["enabled"], true, "{shown}");
    let (_, audit) = app.get("/api/v1/audit?action=webhook.*", &app.admin.api_key).await;
    for text in [shown.to_string(), audit.to_string()] {
        assert!(
            !text.contains(&secret[6..]) && !text.contains(&new_secret[6..]),
            "{text}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn signing_can_be_switched_off_and_on_again_with_the_same_secret_and_a_new_webhook_gets_a_new_one() {
    let app = TestApp::spawn().await;
    let admin = app.admin.api_key.clone();
    let (flow, path, secret) = signed_hook(&app).await;
    let (status, off) = put_webhook(&app, &admin, &flow, json!({"signed": false})).await;
    assert_eq!(status, StatusCode::OK, "{off}");
    assert!(off.get("secret").is_none(), "{off}");
    let (_, on) = put_webhook(&app, &admin, &flow, json!({"signed": true})).await;
    assert_eq!(
        on["secret"],
        secret.as_str(),
        "the webhook keeps its secret until rotated"
    );
    assert_eq!(signed_call(&app, &path, &secret).await, StatusCode::ACCEPTED);

    // Disabled and enabled again, it is a new webhook: a new token and a new secret.
    let (status, _) = app
        .request(Method::DELETE, &format!("/api/v1/flows/{flow}/webhook"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, again) = put_webhook(&app, &admin, &flow, json!({"signed": true})).await;
    let fresh = again["secret"].as_str().unwrap();
    assert!(is_secret_format(fresh) && fresh != secret, "{again}");
    app.teardown().await;
}

#[tokio::test]
async fn a_webhook_from_before_the_upgrade_keeps_its_secret_once_migrations_run() {
    let mut app = TestApp::spawn().await;
    let other = app.other_company().await;
    let jwt = app.config.jwt_secret.expose().to_string();
    // Webhooks as an install from before migration 0020 left them: no stored
    // secret, one rotated twice before (version 3), one unsigned, one another company's.
    let mut legacy = Vec::new();
    for (company, key, signed, version) in [
        (app.admin.company_id, app.admin.api_key.clone(), true, 3),
        (app.admin.company_id, app.admin.api_key.clone(), false, 1),
        (other.company_id, other.api_key.clone(), true, 1),
    ] {
        let flow: Uuid = app
            .deployed_flow_as(&key, json!({"nodes": [{"id": "a", "type": "merge"}]}))
            .await
            .parse()
            .unwrap();
        let token = hex::encode(Uuid::new_v4().as_bytes());
        let mut tx = db::tenant_tx(&app.pool, company).await.unwrap();
        sqlx::query(
            "INSERT INTO flow_webhooks (flow_id, company_id, token_hash, signed, secret_version)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(flow)
        .bind(company)
        .bind(Sha256::digest(token.as_bytes()).to_vec())
        .bind(signed)
        .bind(version)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        legacy.push((flow, format!("/hooks/{token}"), pre_0020_secret(&jwt, flow, version)));
    }
    let (_, signed_path, signed_secret) = legacy[0].clone();
    let (_, other_path, other_secret) = legacy[2].clone();

    // Nothing on the request path derives the old value any more: until the
    // backfill has stored it, the old signer is refused.
    assert_eq!(
        signed_call(&app, &signed_path, &signed_secret).await,
        StatusCode::UNAUTHORIZED
    );

    // The upgraded API starts and migrates: every signer keeps working.
    app.restart_api(|c| c.auto_migrate = true).await;
    assert_eq!(
        signed_call(&app, &signed_path, &signed_secret).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        signed_call(&app, &other_path, &other_secret).await,
        StatusCode::ACCEPTED
    );
    let keyring = Keyring::from_config(&app.config).unwrap();
    let mut sealed_before = Vec::new();
    for (flow, _, secret) in &legacy {
        let (sealed, key_id, row) = stored(&app, *flow).await;
        assert_eq!(key_id.as_deref(), Some(keyring.primary_id().as_str()));
        assert!(
            !row.contains(&secret[6..]),
            "the stored row holds no plain secret: {row}"
        );
        sealed_before.push(sealed.expect("backfilled"));
    }
    // Switching signing on for the unsigned one shows the secret it always had.
    let (unsigned_flow, unsigned_path, unsigned_secret) = legacy[1].clone();
    let (_, on) = put_webhook(
        &app,
        &app.admin.api_key,
        &unsigned_flow.to_string(),
        json!({"signed": true}),
    )
    .await;
    assert_eq!(on["secret"], unsigned_secret.as_str(), "{on}");
    assert_eq!(
        signed_call(&app, &unsigned_path, &unsigned_secret).await,
        StatusCode::ACCEPTED
    );

    // Once stored, the value no longer depends on FLOQ_JWT_SECRET, and migrating again changes nothing.
    app.restart_api(|c| c.jwt_secret = Secret::new(format!("rotated-jwt-secret-{}", Uuid::new_v4().simple())))
        .await;
    floq_api::migrate(&app.pool, &app.config, &keyring).await.unwrap();
    for ((flow, _, _), before) in legacy.iter().zip(&sealed_before) {
        assert_eq!(stored(&app, *flow).await.0.as_ref(), Some(before), "idempotent");
    }
    assert_eq!(
        signed_call(&app, &signed_path, &signed_secret).await,
        StatusCode::ACCEPTED
    );
    app.teardown().await;
}

#[tokio::test]
async fn replicas_backfilling_at_once_store_each_webhooks_secret_exactly_once() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let other = app.other_company().await;
    let jwt = app.config.jwt_secret.expose().to_string();
    let mut rows = Vec::new();
    for n in 0..40 {
        let (company, key) = if n % 3 == 0 {
            (other.company_id, &other.api_key)
        } else {
            (app.admin.company_id, &app.admin.api_key)
        };
        let (status, flow) = app
            .post(
                "/api/v1/flows",
                key,
                json!({"name": format!("legacy {n}"), "definition": {"nodes": [{"id": "a", "type": "merge"}]}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{flow}");
        let flow: Uuid = flow["id"].as_str().unwrap().parse().unwrap();
        let mut tx = db::tenant_tx(&app.pool, company).await.unwrap();
        sqlx::query(
            "INSERT INTO flow_webhooks (flow_id, company_id, token_hash, signed, secret_version)
             VALUES ($1, $2, $3, true, $4)",
        )
        .bind(flow)
        .bind(company)
        .bind(Sha256::digest(Uuid::new_v4().as_bytes()).to_vec())
        .bind(n % 4 + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        rows.push((company, flow, n % 4 + 1));
    }
    let keyring = std::sync::Arc::new(Keyring::from_config(&app.config).unwrap());
    let runs = (0..4).map(|_| {
        let (pool, jwt, keyring) = (app.pool.clone(), jwt.clone(), keyring.clone());
        tokio::spawn(async move { floq_api::webhook_secret::backfill(&pool, &jwt, &keyring, 7).await })
    });
    let mut stored_total = 0;
    for run in futures_util::future::join_all(runs).await {
        stored_total += run.unwrap().unwrap();
    }
    assert_eq!(stored_total, 40, "each row is written by one replica only");
    for (company, flow, version) in rows {
        let (sealed, _, _) = stored(&app, flow).await;
        let opened = floq_api::webhook_secret::SigningSecret::open(&keyring, company, flow, &sealed.unwrap()).unwrap();
        assert_eq!(opened.expose(), pre_0020_secret(&jwt, flow, version));
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_stored_secret_is_ciphertext_that_opens_only_on_its_own_webhook() {
    let app = TestApp::spawn().await;
    let (flow_a, path_a, secret_a) = signed_hook(&app).await;
    let (flow_b, path_b, secret_b) = signed_hook(&app).await;
    let (flow_a, flow_b): (Uuid, Uuid) = (flow_a.parse().unwrap(), flow_b.parse().unwrap());
    let (sealed_a, key_a, row_a) = stored(&app, flow_a).await;
    let sealed_a = sealed_a.unwrap();
    assert!(!row_a.contains(&secret_a[6..]), "{row_a}");
    assert!(!sealed_a.windows(secret_a.len()).any(|w| w == secret_a.as_bytes()));

    // A's ciphertext copied into B's row opens for neither secret there.
    set_sealed(&app, app.admin.company_id, flow_b, Some(&sealed_a), key_a.as_deref()).await;
    assert_eq!(signed_call(&app, &path_b, &secret_a).await, StatusCode::UNAUTHORIZED);
    assert_eq!(signed_call(&app, &path_b, &secret_b).await, StatusCode::UNAUTHORIZED);
    assert_eq!(signed_call(&app, &path_a, &secret_a).await, StatusCode::ACCEPTED);
    app.teardown().await;
}

#[tokio::test]
async fn rotate_keys_reseals_webhook_secrets_and_signers_notice_nothing() {
    let mut app = TestApp::spawn().await;
    let (flow, path, secret) = signed_hook(&app).await;
    let flow: Uuid = flow.parse().unwrap();
    // One webhook's secret sealed under a key nobody configured: reported, left as it is.
    let (stranger_flow, _, _) = signed_hook(&app).await;
    let stranger_flow: Uuid = stranger_flow.parse().unwrap();
    let (secret_hex, salt_hex) = crypto::generate();
    let unknown = Keyring::new(Key::derive(&secret_hex, &salt_hex).unwrap(), vec![]);
    let foreign =
        floq_api::webhook_secret::SigningSecret::generate().seal(&unknown, app.admin.company_id, stranger_flow);
    set_sealed(
        &app,
        app.admin.company_id,
        stranger_flow,
        Some(&foreign.ciphertext),
        Some(&foreign.key_id),
    )
    .await;

    // New primary key, the old one kept for decryption while rotate-keys runs.
    let old = app.config.enc_key.clone();
    let (new_secret, new_salt) = crypto::generate();
    app.restart_api(|c| {
        c.enc_key = (Secret::new(new_secret.clone()), Secret::new(new_salt.clone()));
        c.enc_old_keys = vec![old];
    })
    .await;
    assert_eq!(
        signed_call(&app, &path, &secret).await,
        StatusCode::ACCEPTED,
        "old keys still open"
    );
    let keyring = Keyring::from_config(&app.config).unwrap();
    let rotated = floq_api::rotate::rotate(&app.pool, &keyring, 1).await.unwrap();
    assert_eq!(rotated.webhook_secrets, 1, "{rotated:?}");
    assert_eq!(rotated.undecryptable, vec![format!("flow_webhooks:{stranger_flow}")]);
    let (_, key_id, _) = stored(&app, flow).await;
    assert_eq!(key_id.as_deref(), Some(keyring.primary_id().as_str()));
    let again = floq_api::rotate::rotate(&app.pool, &keyring, 1).await.unwrap();
    assert_eq!(again.webhook_secrets, 0, "a second pass has nothing left to do");

    // With the old key gone, the webhook's signer still gets in.
    app.restart_api(|c| c.enc_old_keys.clear()).await;
    assert_eq!(signed_call(&app, &path, &secret).await, StatusCode::ACCEPTED);
    let (_, audit) = app
        .get(
            &format!("/api/v1/audit?action=secret.rekey&resource_id={flow}"),
            &app.admin.api_key,
        )
        .await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");
    app.teardown().await;
}

#[tokio::test]
async fn only_an_editor_of_the_flow_in_its_company_enables_or_rotates_a_webhooks_secret() {
    let app = TestApp::spawn().await;
    let (flow, path, secret) = signed_hook(&app).await;
    let other = app.other_company().await;
    let executor = app.member(&["flow_executor"]).await;
    let before: Option<Vec<u8>> = stored(&app, flow.parse().unwrap()).await.0;
    for (key, expected) in [
        (&other.api_key, StatusCode::NOT_FOUND),
        (&executor.api_key, StatusCode::FORBIDDEN),
    ] {
        let (status, body) = put_webhook(&app, key, &flow, json!({"signed": true})).await;
        assert_eq!(status, expected, "{body}");
        assert!(body.get("secret").is_none() && !body.to_string().contains(&secret[6..]));
        let (status, body) = rotate(&app, key, &flow).await;
        assert_eq!(status, expected, "{body}");
        assert!(body.get("secret").is_none() && !body.to_string().contains(&secret[6..]));
    }
    assert_eq!(stored(&app, flow.parse().unwrap()).await.0, before, "nothing changed");
    assert_eq!(signed_call(&app, &path, &secret).await, StatusCode::ACCEPTED);
    app.teardown().await;
}
