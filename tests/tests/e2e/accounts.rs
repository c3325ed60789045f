//! Platform-wide identities: a company owns only the identities it created
//! and that no one has claimed; every other address joins by an invitation
//! the mailbox owner accepts; password resets use the same mailed link; and
//! sign-in throttling cannot be turned against the owner.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::identity::{ORIGIN, PASSWORD, login, session_of, with_cookie};
use floq_shared::config::Secret;
use floq_tests::smtp_sink::SmtpSink;
use floq_tests::{Options, TestApp};

const B_PASSWORD: &str = "globex chose this one";
const A_PASSWORD: &str = "acme would like this";
const OWNER_PASSWORD: &str = "only the owner knows";

fn no_services() -> Options {
    Options {
        worker: false,
        scheduler: false,
    }
}

async fn spawn_with_mail() -> (TestApp, SmtpSink) {
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let app = TestApp::spawn_configured(no_services(), |c| {
        c.cors_origins = vec![ORIGIN.into()];
        c.smtp_url = Some(Secret::new(format!("smtp://127.0.0.1:{port}")));
        c.mail_from = "floq <no-reply@floq.test>".into();
        c.public_url = "https://floq.test".into();
    })
    .await;
    (app, sink)
}

/// The token of the `nth` (0-based) message sent to `to`, waiting for it to arrive.
async fn mailed_token(sink: &SmtpSink, to: &str, nth: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mails: Vec<_> = sink
            .received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == to))
            .collect();
        if let Some(mail) = mails.get(nth) {
            assert_eq!(mail.from, "no-reply@floq.test");
            // Undo quoted-printable soft breaks, should the relay path add them.
            let body = mail.data.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
            let at = body
                .find("https://floq.test/accept?token=")
                .unwrap_or_else(|| panic!("no link in {body}"));
            let token: String = body[at + "https://floq.test/accept?token=".len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            assert_eq!(token.len(), 64, "{body}");
            return token;
        }
        assert!(tokio::time::Instant::now() < deadline, "no mail #{nth} to {to}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn mails_to(sink: &SmtpSink, to: &str) -> usize {
    sink.received().iter().filter(|m| m.to.iter().any(|t| t == to)).count()
}

async fn accept(app: &TestApp, token: &str, password: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(format!("{}/api/v1/auth/accept", app.base))
        .json(&json!({"token": token, "password": password}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn request_reset(app: &TestApp, email: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(format!("{}/api/v1/auth/password-reset", app.base))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Signs in and returns the session cookie pair.
async fn session(app: &TestApp, email: &str, password: &str) -> String {
    let (status, cookie, body) = login(app, email, password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    session_of(&cookie.unwrap())
}

/// The first audit entry of the key's company with this action, waiting for the batched writer.
async fn audited(app: &TestApp, key: &str, action: &str) -> Value {
    for _ in 0..100 {
        let (status, body) = app.get(&format!("/api/v1/audit?limit=200&action={action}"), key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(e) = body["items"].as_array().unwrap().first() {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no audit entry `{action}`");
}

fn company_ids(me: &Value) -> Vec<String> {
    me["companies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// The review's attack: company B creates x@ with a password B chose, then
/// company A adds x@ as its admin. Before, A's password was ignored and B's
/// password signed in and switched into A as admin.
#[tokio::test]
async fn a_company_that_creates_an_identity_first_never_gets_into_another_company_with_it() {
    let (app, sink) = spawn_with_mail().await;
    let acme = app.admin.api_key.clone();
    let globex = app.other_company().await;
    let x = "x@victim.test";

    // B creates the identity with its own password: allowed, it is B's alone.
    let (status, created) = app
        .post(
            "/api/v1/users",
            &globex.api_key,
            json!({"email": x, "name": "Mallory", "password": B_PASSWORD, "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let x_id = created["id"].as_str().unwrap().to_string();
    // B signs in as x and mints an API key for it.
    let b_session = session(&app, x, B_PASSWORD).await;
    let (status, key) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/api-keys",
        &b_session,
        Some(ORIGIN),
        Some(json!({"name": "b's key", "scopes": ["api"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let b_key = key["token"].as_str().unwrap().to_string();

    // A adds the address as admin, with a password of its own: an invitation, not a membership.
    let (status, body) = app
        .post(
            "/api/v1/users",
            &acme,
            json!({"email": x, "name": "X", "password": A_PASSWORD, "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "invited");
    assert!(
        !body.to_string().contains("Mallory") && !body.to_string().contains(&x_id),
        "{body}"
    );
    let (_, members) = app.get("/api/v1/users", &acme).await;
    assert!(
        !members.to_string().contains(x),
        "no membership before acceptance: {members}"
    );
    assert_eq!(
        app.get(&format!("/api/v1/users/{x_id}"), &acme).await.0,
        StatusCode::NOT_FOUND
    );
    // B's password reaches only B; A's password was never set.
    let (status, _) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/auth/switch-company",
        &b_session,
        Some(ORIGIN),
        Some(json!({"company_id": app.admin.company_id})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(login(&app, x, A_PASSWORD).await.0, StatusCode::UNAUTHORIZED);

    // The mailbox owner accepts with their own password.
    let token = mailed_token(&sink, x, 0).await;
    let (status, body) = accept(&app, &token, OWNER_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], x_id.as_str());

    // Everything B chose is gone: its password, its session, its key.
    assert_eq!(login(&app, x, B_PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &b_session, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/v1/auth/me", &b_key).await.0, StatusCode::UNAUTHORIZED);

    // The owner is now in A, as admin.
    let owner = session(&app, x, OWNER_PASSWORD).await;
    let (status, me) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &owner, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(company_ids(&me).contains(&app.admin.company_id.to_string()), "{me}");
    let (status, _) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/auth/switch-company",
        &owner,
        Some(ORIGIN),
        Some(json!({"company_id": app.admin.company_id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, member) = app.get(&format!("/api/v1/users/{x_id}"), &acme).await;
    assert_eq!(member["roles"], json!(["admin"]));

    // A's auditors see both steps; B's see the identity taken back by its owner.
    let invite = audited(&app, &acme, "user.invite").await;
    // Addresses are personal data: the log masks them.
    assert_eq!(invite["details"]["email"], "x***@victim.test");
    let accepted = audited(&app, &acme, "user.invitation_accept").await;
    assert_eq!(accepted["details"]["sessions_revoked"], 1);
    assert_eq!(accepted["details"]["keys_revoked"], 1);
    audited(&app, &globex.api_key, "user.invitation_accept").await;

    // The link worked once.
    let (status, body) = accept(&app, &token, "another password!").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "invalid_token");
    app.teardown().await;
}

/// B cannot enrol A's user without their consent, learns nothing about them,
/// and gets the same answer as for an address nobody has.
#[tokio::test]
async fn enrolling_another_companys_user_needs_consent_and_reveals_nothing() {
    let (app, sink) = spawn_with_mail().await;
    let globex = app.other_company().await;
    let (status, ada) = app
        .post(
            "/api/v1/users",
            &app.admin.api_key,
            json!({"email": "ada@acme.test", "name": "Ada Lovelace", "password": PASSWORD, "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ada}");

    // Without a password every address is invited: existing or not, one answer.
    let (s1, existing) = app
        .post(
            "/api/v1/users",
            &globex.api_key,
            json!({"email": "ada@acme.test", "roles": ["admin"]}),
        )
        .await;
    let (s2, unknown) = app
        .post(
            "/api/v1/users",
            &globex.api_key,
            json!({"email": "nobody@acme.test", "roles": ["admin"]}),
        )
        .await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(existing["email"], "ada@acme.test");
    assert_eq!(
        existing.as_object().unwrap().keys().collect::<Vec<_>>(),
        unknown.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert_eq!(existing["message"], unknown["message"]);
    assert!(!existing.to_string().contains("Lovelace"), "{existing}");
    // A password offered for an identity B does not own is ignored, and still no name.
    let (status, body) = app
        .post(
            "/api/v1/users",
            &globex.api_key,
            json!({"email": "ada@acme.test", "name": "Evil", "password": B_PASSWORD, "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(!body.to_string().contains("Lovelace"));
    assert_eq!(
        login(&app, "ada@acme.test", B_PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login(&app, "ada@acme.test", PASSWORD).await.0, StatusCode::OK);
    let (_, members) = app.get("/api/v1/users", &globex.api_key).await;
    assert!(!members.to_string().contains("ada@acme.test"), "{members}");
    assert!(!members.to_string().contains("Lovelace"), "{members}");

    // B sees its own pending invitations; A neither sees nor withdraws them.
    let (status, pending) = app.get("/api/v1/invitations", &globex.api_key).await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    let items = pending["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        2,
        "a repeated invitation replaces the pending one: {pending}"
    );
    let ada_invitation = items.iter().find(|i| i["email"] == "ada@acme.test").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, theirs) = app.get("/api/v1/invitations", &app.admin.api_key).await;
    assert_eq!(theirs["items"], json!([]));
    let path = format!("/api/v1/invitations/{ada_invitation}");
    let (status, body) = app.request(Method::DELETE, &path, &app.admin.api_key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let editor = app.member(&["flow_editor"]).await;
    assert_eq!(
        app.get("/api/v1/invitations", &editor.api_key).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.request(Method::DELETE, &path, &editor.api_key, None).await.0,
        StatusCode::FORBIDDEN
    );

    // The mail went to Ada only; once B withdraws, the link is dead.
    let token = mailed_token(&sink, "ada@acme.test", 1).await;
    assert_eq!(
        app.request(Method::DELETE, &path, &globex.api_key, None).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, body) = accept(&app, &token, OWNER_PASSWORD).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "invalid_token");

    // An invited address nobody had becomes an identity of its owner's, in B.
    let token = mailed_token(&sink, "nobody@acme.test", 0).await;
    let (status, body) = accept(&app, &token, OWNER_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["company_id"], globex.company_id.to_string());
    let (_, members) = app.get("/api/v1/users", &globex.api_key).await;
    assert!(members.to_string().contains("nobody@acme.test"), "{members}");
    app.teardown().await;
}

#[tokio::test]
async fn without_platform_mail_invitations_and_resets_name_the_missing_setting() {
    let app = TestApp::spawn_with(no_services()).await;
    let globex = app.other_company().await;
    // Creating a brand-new identity needs no mail.
    let (status, body) = app
        .post(
            "/api/v1/users",
            &app.admin.api_key,
            json!({"email": "ada@acme.test", "password": PASSWORD, "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(login(&app, "ada@acme.test", PASSWORD).await.0, StatusCode::OK);

    let (status, body) = app
        .post(
            "/api/v1/users",
            &globex.api_key,
            json!({"email": "ada@acme.test", "password": B_PASSWORD, "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "mail_not_configured");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("FLOQ_SMTP_URL"),
        "{body}"
    );
    assert_eq!(
        login(&app, "ada@acme.test", B_PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, members) = app.get("/api/v1/users", &globex.api_key).await;
    assert!(!members.to_string().contains("ada@acme.test"));

    let (status, body) = request_reset(&app, "ada@acme.test").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "mail_not_configured");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("FLOQ_SMTP_URL"),
        "{body}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_password_reset_link_works_once_expires_and_signs_everything_else_out() {
    let (app, sink) = spawn_with_mail().await;
    let globex = app.other_company().await;
    let (status, _) = app
        .post(
            "/api/v1/users",
            &app.admin.api_key,
            json!({"email": "ada@acme.test", "password": PASSWORD, "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = session(&app, "ada@acme.test", PASSWORD).await;

    // Known or unknown address: the same answer, and mail only to a real mailbox.
    let (s1, known) = request_reset(&app, "ada@acme.test").await;
    let (s2, unknown) = request_reset(&app, "nobody@acme.test").await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(known, unknown);
    let token = mailed_token(&sink, "ada@acme.test", 0).await;
    assert_eq!(mails_to(&sink, "nobody@acme.test"), 0);
    // Another company's admin asking for it gets the same answer, and no mail.
    let (status, _) = app
        .request(
            Method::POST,
            "/api/v1/auth/password-reset",
            &globex.api_key,
            Some(json!({"email": "ada@acme.test"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        sink.received()
            .iter()
            .all(|m| !m.to.contains(&"admin@globex.test".to_string()))
    );

    let (status, body) = accept(&app, &token, "short").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["field"], "password");
    let (status, body) = accept(&app, &token, OWNER_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(login(&app, "ada@acme.test", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &before, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the reset signs out every session");
    session(&app, "ada@acme.test", OWNER_PASSWORD).await;
    let (status, body) = accept(&app, &token, "yet another password").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("invalid_token"))
    );

    // A link past its expiry is refused (back-dated rather than waited for).
    let (status, _) = request_reset(&app, "ada@acme.test").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = mailed_token(&sink, "ada@acme.test", 1).await;
    // The tests' role reads and writes every row (BYPASSRLS).
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE account_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (status, body) = accept(&app, &token, "yet another password").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "invalid_token");
    assert_eq!(
        body["error"]["message"],
        "this link is unknown, already used or expired; ask for a new one"
    );
    session(&app, "ada@acme.test", OWNER_PASSWORD).await;
    app.teardown().await;
}

async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/api/v1/auth/login", app.base))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

const ATTACKER: &str = "203.0.113.66";
const OWNER: &str = "198.51.100.7";

/// Before, failures from the attacker's address locked the account for every
/// address, and a success never reset the address's count.
#[tokio::test]
async fn a_strangers_failed_sign_ins_never_lock_the_owner_out_and_success_resets_the_count() {
    let app = TestApp::spawn_configured(no_services(), |c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let (status, _) = app
        .post(
            "/api/v1/users",
            &app.admin.api_key,
            json!({"email": "ada@acme.test", "password": PASSWORD, "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut last = StatusCode::OK;
    for _ in 0..7 {
        last = login_from(&app, ATTACKER, "ada@acme.test", "wrong password!!")
            .await
            .status();
    }
    assert_eq!(
        last,
        StatusCode::TOO_MANY_REQUESTS,
        "guessing from one address stays slow"
    );
    let locked = login_from(&app, ATTACKER, "ada@acme.test", PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.headers().get("retry-after").is_some());
    let body: Value = locked.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");

    // The owner, from their own address, is not locked out.
    assert_eq!(
        login_from(&app, OWNER, "ada@acme.test", PASSWORD).await.status(),
        StatusCode::OK
    );

    // A success resets the owner's count: typos before and after never add up.
    for _ in 0..2 {
        for _ in 0..4 {
            assert_eq!(
                login_from(&app, OWNER, "ada@acme.test", "typo password!!")
                    .await
                    .status(),
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            login_from(&app, OWNER, "ada@acme.test", PASSWORD).await.status(),
            StatusCode::OK
        );
    }

    // Counts decay: an hour later the attacker's address starts afresh.
    // The tests' role reads and writes every row (BYPASSRLS).
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE login_attempts SET updated_at = now() - interval '1 hour', locked_until = NULL
          WHERE key = ANY($1)",
    )
    .bind(
        floq_api::throttle::keys("ada@acme.test", &ATTACKER.parse().unwrap())
            .map(|(key, _)| key)
            .to_vec(),
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        login_from(&app, ATTACKER, "ada@acme.test", "wrong password!!")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_from(&app, ATTACKER, "ada@acme.test", "wrong password!!")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    app.teardown().await;
}

/// Guessing stays slow when spread over accounts: one address failing on many
/// accounts is refused for all of them, and no one else is.
#[tokio::test]
async fn one_address_spraying_many_accounts_is_slowed_and_no_one_else_is() {
    let app = TestApp::spawn_configured(no_services(), |c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let globex = app.other_company().await;
    for (key, email) in [
        (&app.admin.api_key, "ada@acme.test"),
        (&globex.api_key, "bob@globex.test"),
    ] {
        let (status, _) = app
            .post(
                "/api/v1/users",
                key,
                json!({"email": email, "password": PASSWORD, "roles": ["viewer"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    for i in 0..21 {
        let status = login_from(&app, ATTACKER, &format!("guess{i}@acme.test"), "wrong password!!")
            .await
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let status = login_from(&app, ATTACKER, "bob@globex.test", PASSWORD).await.status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    for (client, email) in [(OWNER, "ada@acme.test"), ("192.0.2.10", "bob@globex.test")] {
        assert_eq!(login_from(&app, client, email, PASSWORD).await.status(), StatusCode::OK);
    }
    app.teardown().await;
}
