//! Operator commands (`floq-api admin issue-key`, `admin set-password`),
//! called through the library functions the commands run.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::identity::{PASSWORD, login, signed_in, user_with_password, with_cookie};
use floq_api::admin;
use floq_tests::{Options, TestApp};

const NEW_PASSWORD: &str = "a brand new passphrase";

async fn spawn() -> TestApp {
    TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await
}

/// The company's audit entries with this action about this resource id.
async fn audited(app: &TestApp, key: &str, action: &str, resource_id: impl ToString) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/audit?limit=200&action={action}"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = resource_id.to_string();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["id"] == id.as_str())
        .cloned()
        .collect()
}

fn by_operator(entry: &Value) {
    assert_eq!(entry["actor"]["type"], "system", "{entry}");
    assert_eq!(entry["actor"]["label"], admin::OPERATOR, "{entry}");
}

#[tokio::test]
async fn issue_key_gives_an_existing_member_a_working_key_audited_in_each_of_their_companies() {
    let app = spawn().await;
    // The Acme admin also runs Globex: two companies, so --company is needed.
    let globex = admin::bootstrap(&app.pool, &app.config, "Globex", "admin@acme.test")
        .await
        .unwrap();
    assert_eq!(globex.user_id, app.admin.user_id);
    let err = admin::issue_key(&app.pool, &app.config, "ADMIN@acme.test", None, None, "api")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--company"), "{err}");
    assert!(
        err.contains(&app.admin.company_id.to_string()) && err.contains("(Acme)"),
        "{err}"
    );
    assert!(
        err.contains(&globex.company_id.to_string()) && err.contains("(Globex)"),
        "{err}"
    );

    let issued = admin::issue_key(
        &app.pool,
        &app.config,
        "admin@acme.test",
        Some(globex.company_id),
        Some(600),
        "api",
    )
    .await
    .unwrap();
    assert_eq!(issued.company_id, globex.company_id);
    let lifetime = (issued.expires_at - chrono::Utc::now()).num_seconds();
    assert!((590..=600).contains(&lifetime), "{lifetime}");
    let (status, body) = app.get("/api/v1/flows", &issued.api_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, me) = app.get("/api/v1/auth/me", &issued.api_key).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["company"]["id"], globex.company_id.to_string());

    // The key's company records the key; the identity's other company learns
    // an operator issued one, without the key or the company it is for.
    let created = audited(&app, &globex.api_key, "api_key.create", issued.key_id).await;
    assert_eq!(created.len(), 1, "{created:?}");
    by_operator(&created[0]);
    assert_eq!(created[0]["details"]["after"]["user_id"], app.admin.user_id.to_string());
    let elsewhere = audited(&app, &app.admin.api_key, "user.key_issued", app.admin.user_id).await;
    assert_eq!(elsewhere.len(), 1, "{elsewhere:?}");
    by_operator(&elsewhere[0]);
    let text = elsewhere[0].to_string();
    assert!(!text.contains(&globex.company_id.to_string()) && !text.contains(&issued.key_id.to_string()));
    assert!(
        audited(&app, &app.admin.api_key, "api_key.create", issued.key_id)
            .await
            .is_empty()
    );

    // One company: --company may be left out.
    let member = app.member(&["viewer"]).await;
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(member.user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mcp = admin::issue_key(&app.pool, &app.config, &email, None, None, "mcp")
        .await
        .unwrap();
    assert_eq!(mcp.company_id, app.admin.company_id);
    let lifetime = (mcp.expires_at - chrono::Utc::now()).num_seconds();
    assert!(lifetime > app.config.api_key_ttl.as_secs() as i64 - 10, "{lifetime}");
    let (_, keys) = app.get("/api/v1/api-keys", &app.admin.api_key).await;
    let row = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == mcp.key_id.to_string())
        .cloned()
        .expect("the key is listed in its company");
    assert_eq!(row["scopes"], serde_json::json!(["mcp"]));
    assert_eq!(row["name"], admin::OPERATOR);
    app.teardown().await;
}

#[tokio::test]
async fn issue_key_refuses_unknown_addresses_non_members_and_bad_arguments() {
    let app = spawn().await;
    let other = app.other_company().await;
    let keys_before: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let refusal = |email: &'static str, company: Option<Uuid>, ttl: Option<u64>, scope: &'static str| {
        let (pool, config) = (app.pool.clone(), app.config.clone());
        async move {
            admin::issue_key(&pool, &config, email, company, ttl, scope)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let err = refusal("nobody@acme.test", None, None, "api").await;
    assert_eq!(err, "no identity has the e-mail address nobody@acme.test");
    // Globex's admin asks for a key into Acme.
    let err = refusal("admin@globex.test", Some(app.admin.company_id), None, "api").await;
    assert_eq!(
        err,
        format!("admin@globex.test is not a member of company {}", app.admin.company_id)
    );
    let err = refusal("admin@globex.test", Some(other.company_id), None, "root").await;
    assert_eq!(err, "--scope must be one of: api, mcp");
    for ttl in [59, 31_536_001] {
        let err = refusal("admin@globex.test", Some(other.company_id), Some(ttl), "api").await;
        assert_eq!(err, "--ttl must be 60 to 31536000 seconds");
    }
    let keys_after: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys_before, keys_after, "no refusal issued a key");
    app.teardown().await;
}

#[tokio::test]
async fn set_password_signs_in_with_the_new_password_ends_sessions_and_is_audited_in_every_company() {
    let app = spawn().await;
    let user_id: Uuid = user_with_password(&app, "ada@acme.test", &["viewer"])
        .await
        .parse()
        .unwrap();
    // Ada also belongs to Globex, which has its own audit log.
    let globex = admin::bootstrap(&app.pool, &app.config, "Globex", "ada@acme.test")
        .await
        .unwrap();
    let cookie = signed_in(&app, "ada@acme.test").await;
    let (status, _) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &cookie, None, None).await;
    assert_eq!(status, StatusCode::OK);

    let err = admin::set_password(&app.pool, "ada@acme.test", "too short".into())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "passwords are 12 to 1024 characters");
    let err = admin::set_password(&app.pool, "nobody@acme.test", NEW_PASSWORD.into())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "no identity has the e-mail address nobody@acme.test");
    assert_eq!(login(&app, "ada@acme.test", PASSWORD).await.0, StatusCode::OK);

    let done = admin::set_password(&app.pool, "Ada@acme.test", NEW_PASSWORD.into())
        .await
        .unwrap();
    assert_eq!(done.user_id, user_id);
    assert_eq!(done.sessions_revoked, 2, "both sign-ins end");
    let (status, _) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &cookie, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old session is gone");
    assert_eq!(login(&app, "ada@acme.test", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    let (status, cookie, body) = login(&app, "ada@acme.test", NEW_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(cookie.is_some());

    for key in [&app.admin.api_key, &globex.api_key] {
        let entries = audited(&app, key, "auth.password_set", user_id).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        by_operator(&entries[0]);
        assert_eq!(entries[0]["details"]["sessions_revoked"], 2);
    }
    // The password itself is in no entry.
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE details::text LIKE '%brand new%'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(leaked, 0);
    app.teardown().await;
}
