//! Single sign-on (OpenID Connect) against the mock provider in
//! `floq_tests::idp`: connections and their domains, the sign-in flow with
//! every check it makes, auto-registration, identities by `sub`, linking,
//! and requiring SSO.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::identity::{ORIGIN, PASSWORD, login, session_of, user_with_password, with_cookie};
use floq_tests::idp::{CLIENT_ID, CLIENT_SECRET, Idp};
use floq_tests::{Options, TestApp};

const PUBLIC_URL: &str = "https://floq.test";
const FAILED: &str =
    "single sign-on did not complete: start again from the sign-in page; if it keeps failing, ask your administrator";

async fn spawn() -> (TestApp, Idp) {
    spawn_resolving(None).await
}

/// With domain verification asking `dns` for TXT records.
async fn spawn_resolving(dns: Option<std::net::SocketAddr>) -> (TestApp, Idp) {
    let idp = Idp::start().await;
    let authority = idp.base.clone();
    let app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        move |c| {
            c.public_url = PUBLIC_URL.into();
            c.cors_origins = vec![ORIGIN.into()];
            c.sso_egress_allow = floq_shared::egress::parse_allow_list("127.0.0.1").unwrap();
            c.sso_entra_authority = authority;
            c.sso_dns_server = dns;
        },
    )
    .await;
    (app, idp)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A generic connection for `domains`, created by the admin and its domains verified by the operator.
async fn connection(app: &TestApp, idp: &Idp, domains: &[&str], default_role: &str) -> String {
    let (status, body) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            json!({"name": format!("idp-{}", uuid::Uuid::new_v4().simple()), "issuer": idp.issuer(),
                   "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "email_domains": domains, "default_role": default_role}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for d in domains {
        floq_api::admin::verify_domain(&app.pool, &app.admin.company_id.to_string(), d)
            .await
            .unwrap();
    }
    body["id"].as_str().unwrap().to_string()
}

/// What a browser has after the provider sent it back.
struct Back {
    /// The callback URL on the API.
    callback: String,
    /// `floq_sso=…`, the browser binding.
    binding: String,
}

/// `start`, then the provider's authorize endpoint (which sends the browser straight back).
async fn to_provider_and_back(app: &TestApp, connection: &str, return_to: &str) -> Back {
    let b = browser();
    let resp = b
        .get(format!(
            "{}/api/v1/auth/sso/{connection}/start?return_to={}",
            app.base,
            enc(return_to)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let binding = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        binding.contains("HttpOnly") && binding.contains("SameSite=Lax") && binding.contains("Secure"),
        "{binding}"
    );
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = b.get(&location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{}", resp.text().await.unwrap());
    let back = resp.headers()["location"].to_str().unwrap().to_string();
    let path = back.strip_prefix(PUBLIC_URL).expect("back at the public URL");
    Back {
        callback: format!("{}{path}", app.base),
        binding: session_of(&binding),
    }
}

struct Landed {
    status: StatusCode,
    body: String,
    /// `floq_session=…` when signed in, with the whole Set-Cookie.
    session: Option<(String, String)>,
}

async fn callback(url: &str, cookie: Option<&str>) -> Landed {
    let mut req = browser().get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let session = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("floq_session="))
        .map(|c| (session_of(&c), c));
    Landed {
        status,
        body: resp.text().await.unwrap(),
        session,
    }
}

async fn sign_in(app: &TestApp, connection: &str) -> Landed {
    let back = to_provider_and_back(app, connection, "/flows").await;
    callback(&back.callback, Some(&back.binding)).await
}

async fn me(app: &TestApp, cookie: &str) -> (StatusCode, Value) {
    with_cookie(app, Method::GET, "/api/v1/auth/me", cookie, None, None).await
}

/// The company's `auth.sso.*` entries, newest first.
async fn sso_audit(app: &TestApp, action: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/v1/audit?limit=200&action={action}"), &app.admin.api_key)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

fn refused(landed: &Landed) {
    assert_eq!(landed.status, StatusCode::UNAUTHORIZED, "{}", landed.body);
    let body: Value = serde_json::from_str(&landed.body).unwrap();
    assert_eq!(body["error"]["code"], "sso_failed", "{body}");
    assert_eq!(body["error"]["message"], FAILED);
    assert!(landed.session.is_none());
}

async fn wait_for_audit(app: &TestApp, action: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        if let Some(e) = sso_audit(app, action).await.into_iter().find(|e| pred(e)) {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen: Vec<Value> = sso_audit(app, action)
        .await
        .into_iter()
        .map(|e| e["details"].clone())
        .collect();
    panic!("no {action} entry matched: {seen:#?}");
}

#[tokio::test]
async fn a_first_sign_in_registers_the_member_and_opens_a_password_like_session() {
    let (app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "none").await;
    idp.next_user(json!({"sub": "sub-newbie", "email": "newbie@acme.test", "email_verified": true, "name": "New Bie"}));

    let resp = app
        .client
        .post(format!("{}/api/v1/auth/sso/discover", app.base))
        .json(&json!({"email": "Newbie@Acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let found: Value = resp.json().await.unwrap();
    assert_eq!(found["connection_id"], conn.as_str());
    assert_eq!(found["start_url"], format!("{PUBLIC_URL}/api/v1/auth/sso/{conn}/start"));
    let resp = app
        .client
        .post(format!("{}/api/v1/auth/sso/discover", app.base))
        .json(&json!({"email": "someone@elsewhere.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let back = to_provider_and_back(&app, &conn, "/flows?tab=mine").await;
    let asked = idp.last_authorize();
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(
        asked["redirect_uri"],
        format!("{PUBLIC_URL}/api/v1/auth/sso/callback?connection_id={conn}")
    );
    assert!(asked["scope"].split(' ').any(|s| s == "openid"));
    assert!(asked["nonce"].len() >= 32 && asked["state"].len() >= 32);

    let landed = callback(&back.callback, Some(&back.binding)).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    // A same-site navigation onwards, so the SameSite=Strict cookie goes along.
    assert!(
        landed
            .body
            .contains(r#"http-equiv="refresh" content="0;url=/flows?tab=mine""#),
        "{}",
        landed.body
    );
    let (cookie, set_cookie) = landed.session.expect("a session");
    // The same cookie a password sign-in sets.
    let ttl = app.config.session_ttl.as_secs();
    assert!(
        set_cookie.ends_with(&format!("; Path=/; Max-Age={ttl}; HttpOnly; Secure; SameSite=Strict")),
        "{set_cookie}"
    );
    let (status, who) = me(&app, &cookie).await;
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(who["user"]["email"], "newbie@acme.test");
    assert_eq!(who["user"]["name"], "New Bie");
    assert_eq!(who["company"]["id"], app.admin.company_id.to_string());
    assert_eq!(who["roles"], json!(["none"]));

    // The second sign-in finds the same identity; nothing new is registered.
    let again = sign_in(&app, &conn).await;
    let (_, who_again) = me(&app, &again.session.expect("a session").0).await;
    assert_eq!(who_again["user"]["id"], who["user"]["id"]);
    let registered = wait_for_audit(&app, "auth.sso.register", |_| true).await;
    assert_eq!(registered["resource"]["id"], who["user"]["id"]);
    assert_eq!(sso_audit(&app, "auth.sso.register").await.len(), 1);
    wait_for_audit(&app, "auth.sso.login", |e| e["outcome"] == "success").await;
    app.teardown().await;
}

#[tokio::test]
async fn every_broken_check_is_refused_alike_and_audited_with_its_reason() {
    let (app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "viewer").await;
    idp.next_user(json!({"sub": "sub-x", "email": "x@acme.test", "email_verified": true}));

    let cases: Vec<(&str, Value, &str)> = vec![
        ("wrong nonce", json!({"nonce": "not-the-nonce"}), "nonce_mismatch"),
        ("wrong aud", json!({"aud": "another-client"}), "audience_mismatch"),
        (
            "expired",
            json!({"exp": chrono::Utc::now().timestamp() - 3600}),
            "token_expired",
        ),
        ("wrong issuer", json!({"iss": "https://evil.test"}), "issuer_mismatch"),
        ("foreign azp", json!({"azp": "another-client"}), "azp_mismatch"),
        ("no sub", json!({"sub": null}), "claims_invalid"),
    ];
    for (what, tamper, reason) in cases {
        idp.tamper(tamper);
        let landed = sign_in(&app, &conn).await;
        refused(&landed);
        wait_for_audit(&app, "auth.sso.login", |e| {
            e["outcome"] == "failure" && e["details"]["reason"] == reason
        })
        .await;
        let _ = what;
    }
    idp.tamper(json!({}));

    // A key the provider does not publish.
    idp.sign_with_unpublished();
    refused(&sign_in(&app, &conn).await);
    wait_for_audit(&app, "auth.sso.login", |e| {
        e["details"]["reason"] == "unknown_signing_key"
    })
    .await;
    idp.rotate();

    // The browser binding: missing, or another browser's.
    let back = to_provider_and_back(&app, &conn, "/").await;
    refused(&callback(&back.callback, None).await);
    let other = to_provider_and_back(&app, &conn, "/").await;
    refused(&callback(&other.callback, Some(&back.binding)).await);
    wait_for_audit(&app, "auth.sso.login", |e| {
        e["details"]["reason"] == "browser_binding_mismatch"
    })
    .await;

    // Login CSRF: a sign-in another site starts in this browser is refused before anything is stored.
    let resp = app
        .client
        .get(format!("{}/api/v1/auth/sso/{conn}/start?return_to=/", app.base))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "sso_start_cross_site", "{body}");

    // An identity-provider mix-up: a code sent back to another connection's redirect URI with this
    // connection's state (another tenant's provider relayed the browser) is refused before any exchange.
    let back = to_provider_and_back(&app, &conn, "/").await;
    let exchanges = idp.tokens_issued();
    let foreign = back.callback.replace(
        &format!("connection_id={conn}"),
        &format!("connection_id={}", uuid::Uuid::now_v7()),
    );
    assert_ne!(foreign, back.callback);
    refused(&callback(&foreign, Some(&back.binding)).await);
    assert_eq!(idp.tokens_issued(), exchanges, "the code was never exchanged");
    wait_for_audit(&app, "auth.sso.login", |e| {
        e["details"]["reason"] == "redirect_uri_mismatch"
    })
    .await;

    // A state works once: the replay of a successful callback is refused.
    let back = to_provider_and_back(&app, &conn, "/").await;
    let first = callback(&back.callback, Some(&back.binding)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    refused(&callback(&back.callback, Some(&back.binding)).await);
    wait_for_audit(&app, "auth.sso.login", |e| e["details"]["reason"] == "state_replayed").await;

    // An expired state.
    let back = to_provider_and_back(&app, &conn, "/").await;
    sqlx::query("UPDATE sso_states SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    refused(&callback(&back.callback, Some(&back.binding)).await);
    wait_for_audit(&app, "auth.sso.login", |e| e["details"]["reason"] == "state_expired").await;
    // Retention trims states past their expiry.
    let trimmed = floq_scheduler::retention::trim_dead_rows(&app.pool).await.unwrap();
    assert!(trimmed.sso_states >= 1, "{trimmed:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sso_states WHERE expires_at < now()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);

    // Only paths on this site are places to come back to.
    for foreign in ["https://evil.test/", "//evil.test/x", "/\\evil.test", "evil.test"] {
        let resp = browser()
            .get(format!(
                "{}/api/v1/auth/sso/{conn}/start?return_to={}",
                app.base,
                enc(foreign)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{foreign}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["details"][0]["field"], "return_to");
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_when_a_token_names_it() {
    let (app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "none").await;
    assert_eq!(sign_in(&app, &conn).await.status, StatusCode::OK);
    let fetched = idp.jwks_fetches();
    assert_eq!(sign_in(&app, &conn).await.status, StatusCode::OK);
    assert_eq!(idp.jwks_fetches(), fetched, "the key set is cached");
    idp.rotate();
    let landed = sign_in(&app, &conn).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    assert_eq!(idp.jwks_fetches(), fetched + 1);
    app.teardown().await;
}

#[tokio::test]
async fn the_identity_is_the_subject_so_a_changed_address_is_the_same_user() {
    let (app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "none").await;
    idp.next_user(json!({"sub": "sub-42", "email": "old@acme.test", "email_verified": true}));
    let (_, first) = me(&app, &sign_in(&app, &conn).await.session.unwrap().0).await;
    idp.next_user(json!({"sub": "sub-42", "email": "new@acme.test", "email_verified": true}));
    let (_, second) = me(&app, &sign_in(&app, &conn).await.session.unwrap().0).await;
    assert_eq!(first["user"]["id"], second["user"]["id"]);
    // A new subject with the address is someone else; it is not linked blindly either.
    idp.next_user(json!({"sub": "sub-43", "email": "old@acme.test", "email_verified": false}));
    refused(&sign_in(&app, &conn).await);
    app.teardown().await;
}

#[tokio::test]
async fn an_existing_identity_is_linked_only_with_a_verified_address_and_loses_its_password_sessions() {
    let (app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "none").await;
    let ada = user_with_password(&app, "ada@acme.test", &["viewer"]).await;
    let password_session = session_of(&login(&app, "ada@acme.test", PASSWORD).await.1.unwrap());
    assert_eq!(me(&app, &password_session).await.0, StatusCode::OK);

    idp.next_user(json!({"sub": "sub-ada", "email": "ada@acme.test", "email_verified": false}));
    refused(&sign_in(&app, &conn).await);
    wait_for_audit(&app, "auth.sso.login", |e| {
        e["details"]["reason"] == "email_not_verified_by_provider"
    })
    .await;
    assert_eq!(me(&app, &password_session).await.0, StatusCode::OK);

    idp.next_user(json!({"sub": "sub-ada", "email": "ada@acme.test", "email_verified": true}));
    let landed = sign_in(&app, &conn).await;
    let (_, who) = me(&app, &landed.session.unwrap().0).await;
    assert_eq!(who["user"]["id"], ada.as_str());
    assert_eq!(who["roles"], json!(["viewer"]), "the membership stays as it was");
    assert_eq!(me(&app, &password_session).await.0, StatusCode::UNAUTHORIZED);
    let linked = wait_for_audit(&app, "auth.sso.link", |_| true).await;
    assert_eq!(linked["details"]["sessions_ended"], 1);

    // An address outside the verified domains links only explicitly, while signed in.
    let bob = user_with_password(&app, "bob@contractor.test", &["viewer"]).await;
    idp.next_user(json!({"sub": "sub-bob", "email": "bob@contractor.test", "email_verified": true}));
    refused(&sign_in(&app, &conn).await);
    let bob_session = session_of(&login(&app, "bob@contractor.test", PASSWORD).await.1.unwrap());
    let resp = browser()
        .post(format!("{}/api/v1/auth/sso/{conn}/link", app.base))
        .header("cookie", &bob_session)
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let binding = session_of(resp.headers()["set-cookie"].to_str().unwrap());
    let started: Value = resp.json().await.unwrap();
    let back = browser()
        .get(started["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let back = back.headers()["location"].to_str().unwrap().to_string();
    let url = format!("{}{}", app.base, back.strip_prefix(PUBLIC_URL).unwrap());
    let landed = callback(&url, Some(&binding)).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    let again = sign_in(&app, &conn).await;
    let (_, who) = me(&app, &again.session.unwrap().0).await;
    assert_eq!(who["user"]["id"], bob.as_str());
    app.teardown().await;
}

#[tokio::test]
async fn requiring_sso_refuses_passwords_but_the_break_glass_admins() {
    let (app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "none").await;
    user_with_password(&app, "ada@acme.test", &["viewer"]).await;
    let admin_email = "root@acme.test";
    let root = user_with_password(&app, admin_email, &["admin"]).await;
    let (status, body) = app
        .request(
            Method::PUT,
            "/api/v1/settings/sso",
            &app.admin.api_key,
            Some(json!({"require_sso": true, "break_glass_user_id": app.admin.user_id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The break-glass account must be an admin of the company.
    let viewer = app.member(&["viewer"]).await;
    let (status, body) = app
        .request(
            Method::PUT,
            "/api/v1/settings/sso",
            &app.admin.api_key,
            Some(json!({"require_sso": true, "break_glass_user_id": viewer.user_id})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app
        .request(
            Method::PUT,
            "/api/v1/settings/sso",
            &app.admin.api_key,
            Some(json!({"require_sso": true, "break_glass_user_id": root})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, shown) = app.get("/api/v1/settings/sso", &app.admin.api_key).await;
    assert_eq!(shown, json!({"require_sso": true, "break_glass_user_id": root}));

    let (status, _, body) = login(&app, "ada@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "sso_required");
    // A wrong password still says only that.
    let (status, _, _) = login(&app, "ada@acme.test", "wrong password!").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = login(&app, admin_email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "the break-glass admin");

    idp.next_user(json!({"sub": "sub-ada", "email": "ada@acme.test", "email_verified": true}));
    let landed = sign_in(&app, &conn).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);

    // A password session elsewhere cannot switch into the company.
    let globex = app.other_company().await;
    let mut tx = floq_shared::db::tenant_tx(&app.pool, globex.company_id).await.unwrap();
    let ada: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'ada@acme.test'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    floq_shared::users::add_member(
        &mut tx,
        floq_shared::ids::CompanyId(globex.company_id),
        floq_shared::ids::UserId(ada),
        &[floq_shared::access::Role::Viewer],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (status, cookie, body) = login(&app, "ada@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "Globex takes a password: {body}");
    assert_eq!(body["company_id"], globex.company_id.to_string());
    let (status, body) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/auth/switch-company",
        &session_of(&cookie.unwrap()),
        Some(ORIGIN),
        Some(json!({"company_id": app.admin.company_id})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "sso_required");

    // Nor can a session Globex's own connection opened: only Acme's connection meets Acme's requirement.
    let (status, body) = app
        .post(
            "/api/v1/sso/connections",
            &globex.api_key,
            json!({"name": "globex-idp", "issuer": idp.issuer(), "client_id": CLIENT_ID,
                   "client_secret": CLIENT_SECRET, "email_domains": ["globex.test"], "default_role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let globex_conn = body["id"].as_str().unwrap().to_string();
    floq_api::admin::verify_domain(&app.pool, &globex.company_id.to_string(), "globex.test")
        .await
        .unwrap();
    idp.next_user(json!({"sub": "sub-gus", "email": "gus@globex.test", "email_verified": true}));
    let landed = sign_in(&app, &globex_conn).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    let gus: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'gus@globex.test'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut tx = floq_shared::db::tenant_tx(&app.pool, app.admin.company_id)
        .await
        .unwrap();
    floq_shared::users::add_member(
        &mut tx,
        floq_shared::ids::CompanyId(app.admin.company_id),
        floq_shared::ids::UserId(gus),
        &[floq_shared::access::Role::Viewer],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (status, body) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/auth/switch-company",
        &landed.session.as_ref().unwrap().0,
        Some(ORIGIN),
        Some(json!({"company_id": app.admin.company_id})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "sso_required");
    app.teardown().await;
}

#[tokio::test]
async fn webmail_and_taken_domains_are_refused() {
    let (app, idp) = spawn().await;
    let body = |domains: Value| {
        json!({"name": format!("c-{}", uuid::Uuid::new_v4().simple()), "issuer": idp.issuer(), "client_id": CLIENT_ID,
               "client_secret": CLIENT_SECRET, "email_domains": domains})
    };
    let (status, answer) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            body(json!(["acme.test", "Gmail.com"])),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "public_email_domain");
    assert_eq!(answer["error"]["details"][0]["field"], "email_domains[1]");
    for webmail in [
        "outlook.com",
        "hotmail.com",
        "yahoo.com",
        "icloud.com",
        "proton.me",
        "gmx.de",
    ] {
        let (status, _) = app
            .post("/api/v1/sso/connections", &app.admin.api_key, body(json!([webmail])))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{webmail}");
    }

    // Acme holds acme.test verified: no other connection may claim it, here or at another company.
    connection(&app, &idp, &["acme.test"], "none").await;
    let (status, answer) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            body(json!(["acme.test"])),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "domain_taken");
    let globex = app.other_company().await;
    let (status, answer) = app
        .post("/api/v1/sso/connections", &globex.api_key, body(json!(["acme.test"])))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["details"][0]["field"], "email_domains[0]");

    // A claim another company made first but never verified does not stop the verifier.
    let (status, answer) = app
        .post("/api/v1/sso/connections", &globex.api_key, body(json!(["globex.test"])))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            body(json!(["globex.test"])),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    floq_api::admin::verify_domain(&app.pool, &globex.company_id.to_string(), "globex.test")
        .await
        .unwrap();
    let err = floq_api::admin::verify_domain(&app.pool, &app.admin.company_id.to_string(), "globex.test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another company"), "{err}");
    app.teardown().await;
}

#[tokio::test]
async fn connections_are_admin_only_hide_their_secret_and_stay_in_their_company() {
    let (app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "viewer").await;
    let path = format!("/api/v1/sso/connections/{conn}");
    let (status, shown) = app.get(&path, &app.admin.api_key).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!shown.to_string().contains(CLIENT_SECRET), "{shown}");
    assert_eq!(shown["email_domains"][0]["verified"], true);
    assert_eq!(shown["email_domains"][0]["verified_by"], "operator");
    assert_eq!(shown["email_domains"][0]["txt_name"], "_floq-verify.acme.test");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT client_secret FROM sso_connections")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains(CLIENT_SECRET));

    let update =
        json!({"name": "renamed", "issuer": idp.issuer(), "client_id": CLIENT_ID, "email_domains": ["acme.test"]});
    let (status, after) = app
        .request(Method::PUT, &path, &app.admin.api_key, Some(update.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["name"], "renamed");
    assert_eq!(
        after["email_domains"][0]["verified"], true,
        "a kept domain keeps its verification"
    );
    // The secret was kept: signing in still works.
    assert_eq!(sign_in(&app, &conn).await.status, StatusCode::OK);

    let globex = app.other_company().await;
    let viewer = app.member(&["viewer"]).await;
    let verify = format!("{path}/verify-domain");
    let link = format!("/api/v1/auth/sso/{conn}/link");
    for (method, p, body) in [
        (Method::GET, path.clone(), None),
        (Method::PUT, path.clone(), Some(update.clone())),
        (Method::DELETE, path.clone(), None),
        (Method::POST, verify.clone(), Some(json!({"domain": "acme.test"}))),
    ] {
        let (status, answer) = app.request(method.clone(), &p, &globex.api_key, body.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another company: {method} {p}: {answer}");
        let (status, _) = app.request(method.clone(), &p, &viewer.api_key, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a viewer: {method} {p}");
    }
    let (status, answer) = app.request(Method::POST, &link, &globex.api_key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    // Linking happens in a browser session; an API key is told so.
    let (status, answer) = app.request(Method::POST, &link, &app.admin.api_key, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    for (method, p) in [
        (Method::GET, "/api/v1/sso/connections"),
        (Method::POST, "/api/v1/sso/connections"),
        (Method::GET, "/api/v1/settings/sso"),
        (Method::PUT, "/api/v1/settings/sso"),
    ] {
        let (status, _) = app.request(method.clone(), p, &viewer.api_key, Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a viewer: {method} {p}");
    }
    let (_, theirs) = app.get("/api/v1/sso/connections", &globex.api_key).await;
    assert_eq!(theirs["items"], json!([]));

    // Another company's session cannot start a link on our connection.
    let globex_user = "ada@globex.test";
    let (status, body) = app
        .post(
            "/api/v1/users",
            &globex.api_key,
            json!({"email": globex_user, "name": "G", "password": PASSWORD, "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cookie = session_of(&login(&app, globex_user, PASSWORD).await.1.unwrap());
    let (status, _) = with_cookie(&app, Method::POST, &link, &cookie, Some(ORIGIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = app.request(Method::DELETE, &path, &app.admin.api_key, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let changes: Vec<String> = sso_audit(&app, "sso.connection_*")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        changes,
        [
            "sso.connection_delete",
            "sso.connection_update",
            "sso.connection_create"
        ]
    );
    app.teardown().await;
}

#[tokio::test]
async fn an_entra_multi_tenant_connection_accepts_only_its_listed_tenants() {
    let (app, idp) = spawn().await;
    let tid = "11111111-2222-3333-4444-555555555555";
    let foreign = "99999999-2222-3333-4444-555555555555";
    let (status, body) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            json!({"name": "entra", "preset": "entra", "tenant": "organizations", "allowed_tenants": [tid],
                   "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "email_domains": ["acme.test"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["issuer"], format!("{}/{{tenantid}}/v2.0", idp.base));
    let conn = body["id"].as_str().unwrap().to_string();
    floq_api::admin::verify_domain(&app.pool, &app.admin.company_id.to_string(), "acme.test")
        .await
        .unwrap();
    let (status, body) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            json!({"name": "entra2", "preset": "entra", "tenant": "common", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Tokens name a tenant by id: a tenant domain could never match their issuer.
    let (status, body) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            json!({"name": "entra3", "preset": "entra", "tenant": "contoso.onmicrosoft.com", "client_id": CLIENT_ID,
                   "client_secret": CLIENT_SECRET}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "tenant");

    let user = |tenant: &str, iss_tenant: &str, edov: bool| {
        json!({"sub": "entra-sub", "email": "eve@acme.test", "xms_edov": edov, "tid": tenant,
               "iss": format!("{}/{iss_tenant}/v2.0", idp.base)})
    };
    idp.next_user(user(tid, tid, true));
    let landed = sign_in(&app, &conn).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    assert!(idp.last_authorize().contains_key("nonce"));

    idp.next_user(user(foreign, foreign, true));
    refused(&sign_in(&app, &conn).await);
    wait_for_audit(&app, "auth.sso.login", |e| {
        e["details"]["reason"] == "tenant_not_allowed"
    })
    .await;
    // The issuer must name the token's own tenant.
    idp.next_user(user(tid, foreign, true));
    refused(&sign_in(&app, &conn).await);
    wait_for_audit(&app, "auth.sso.login", |e| e["details"]["reason"] == "issuer_mismatch").await;
    app.teardown().await;
}

#[tokio::test]
async fn a_domain_is_verified_by_the_dns_txt_record_the_company_publishes() {
    let dns = floq_tests::dns::DnsServer::start().await;
    let (app, idp) = spawn_resolving(Some(dns.addr)).await;
    let (status, created) = app
        .post(
            "/api/v1/sso/connections",
            &app.admin.api_key,
            json!({"name": "idp", "issuer": idp.issuer(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "email_domains": ["acme.test"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let claim = &created["email_domains"][0];
    assert_eq!(claim["verified"], false);
    assert_eq!(claim["txt_name"], "_floq-verify.acme.test");
    let value = claim["txt_value"].as_str().unwrap().to_string();
    assert!(value.starts_with("floq-verify="), "{value}");

    // Unverified, the domain routes nothing.
    let discover = || async {
        app.client
            .post(format!("{}/api/v1/auth/sso/discover", app.base))
            .json(&json!({"email": "ada@acme.test"}))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(discover().await, StatusCode::NOT_FOUND);
    idp.next_user(json!({"sub": "s", "email": "ada@acme.test", "email_verified": true}));
    refused(&sign_in(&app, id).await);

    let verify = format!("/api/v1/sso/connections/{id}/verify-domain");
    let (status, answer) = app
        .post(&verify, &app.admin.api_key, json!({"domain": "acme.test"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "domain_not_verified");
    dns.publish("_floq-verify.acme.test", "floq-verify=someone-elses-token");
    let (status, _) = app
        .post(&verify, &app.admin.api_key, json!({"domain": "acme.test"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    dns.publish("_floq-verify.acme.test", &value);
    let (status, answer) = app
        .post(&verify, &app.admin.api_key, json!({"domain": "acme.test"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["email_domains"][0]["verified"], true);
    assert_eq!(answer["email_domains"][0]["verified_by"], "dns");
    assert_eq!(discover().await, StatusCode::OK);
    assert_eq!(sign_in(&app, id).await.status, StatusCode::OK);
    let (status, _) = app
        .post(&verify, &app.admin.api_key, json!({"domain": "other.test"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.teardown().await;
}

/// The redirect and cookie part in a real browser: Chromium, driven by
/// `tests/browser/sso_login.py` (Playwright from PyPI; `deploy/local/test.sh
/// --slow` installs it into a venv, FLOQ_PLAYWRIGHT_PYTHON names its python).
/// The provider answers as `localhost`, floq as `127.0.0.1`, so the redirect
/// back is cross-site as with a real provider; the browser must land on
/// `return_to` signed in.
#[tokio::test]
#[ignore = "slow: drives Chromium with Playwright (deploy/local/test.sh --slow)"]
async fn a_real_browser_signs_in_and_lands_signed_in() {
    let python =
        std::env::var("FLOQ_PLAYWRIGHT_PYTHON").unwrap_or_else(|_| "/var/tmp/floq-playwright/bin/python".into());
    let idp = Idp::start_as("localhost").await;
    idp.interactive();
    // The browser must reach the callback at FLOQ_PUBLIC_URL: choose the port first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let authority = idp.base.clone();
    let app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        {
            let public = public.clone();
            move |c| {
                c.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
                c.public_url = public;
                c.sso_egress_allow = floq_shared::egress::parse_allow_list("127.0.0.1,localhost").unwrap();
                c.sso_entra_authority = authority;
            }
        },
    )
    .await;
    let conn = connection(&app, &idp, &["acme.test"], "viewer").await;
    idp.next_user(json!({"sub": "browser-sub", "email": "browser@acme.test", "email_verified": true}));
    let start = format!("{public}/api/v1/auth/sso/{conn}/start?return_to=%2Fapi%2Fv1%2Fauth%2Fme");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/sso_login.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&start)
        .arg("browser@acme.test")
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (set FLOQ_PLAYWRIGHT_PYTHON, or run deploy/local/test.sh --slow): {e}")
        });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the browser did not land signed in:\n{stdout}\n{stderr}"
    );
    wait_for_audit(&app, "auth.sso.login", |e| e["outcome"] == "success").await;
    app.teardown().await;
}

#[tokio::test]
async fn rotate_keys_reseals_client_secrets_and_sign_in_goes_on() {
    let (mut app, idp) = spawn().await;
    let conn = connection(&app, &idp, &["acme.test"], "none").await;
    let old = app.config.enc_key.clone();
    let (secret, salt) = floq_shared::crypto::generate();
    app.restart_api(|c| {
        c.enc_key = (
            floq_shared::Secret::new(secret.clone()),
            floq_shared::Secret::new(salt.clone()),
        );
        c.enc_old_keys = vec![old];
    })
    .await;
    let keyring = floq_shared::crypto::Keyring::from_config(&app.config).unwrap();
    let rotated = floq_api::rotate::rotate(&app.pool, &keyring, 10).await.unwrap();
    assert_eq!(rotated.sso_secrets, 1, "{rotated:?}");
    assert!(rotated.undecryptable.is_empty(), "{rotated:?}");
    let again = floq_api::rotate::rotate(&app.pool, &keyring, 10).await.unwrap();
    assert_eq!(again.sso_secrets, 0);
    // With the old key gone, the code exchange still opens the secret.
    app.restart_api(|c| c.enc_old_keys.clear()).await;
    let landed = sign_in(&app, &conn).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    app.teardown().await;
}
