//! What a database error turns into at the API: a race on a unique value is
//! a `409` naming the field, a database that went away is a `503` with
//! `Retry-After`, and neither leaks anything of the server.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use floq_tests::TestApp;

const PASSWORD: &str = "a long enough passphrase";

#[tokio::test]
async fn concurrent_creates_of_one_new_address_give_one_identity_and_never_a_500() {
    let app = TestApp::spawn().await;
    let key = app.admin.api_key.clone();
    let creates = (0..8).map(|i| {
        let (app, key) = (&app, &key);
        async move {
            app.post(
                "/api/v1/users",
                key,
                json!({"email": "twin@acme.test", "name": format!("twin {i}"), "password": PASSWORD, "roles": ["viewer"]}),
            )
            .await
        }
    });
    let answers = join_all(creates).await;
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    assert_eq!(created, 1, "{answers:?}");
    for (status, body) in &answers {
        match *status {
            StatusCode::CREATED => {}
            // The address exists by now: an invitation (mail is not configured here) ...
            StatusCode::SERVICE_UNAVAILABLE => assert_eq!(body["error"]["code"], "mail_not_configured", "{body}"),
            // ... or, when the winner's membership committed before this one looked, that ...
            StatusCode::CONFLICT if body["error"]["code"] == "already_member" => {
                assert_eq!(body["error"]["message"], "this user is already a member", "{body}");
            }
            // ... or the race itself, named.
            StatusCode::CONFLICT => {
                assert_eq!(
                    body["error"]["details"],
                    json!([{"field": "email", "message": "already taken"}]),
                    "{body}"
                );
                assert_eq!(
                    body["error"]["message"],
                    "a resource with the same `email` already exists"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let (_, members) = app.get("/api/v1/users", &key).await;
    let twins = members["items"]
        .as_array()
        .or(members.as_array())
        .unwrap()
        .iter()
        .filter(|m| m["email"] == "twin@acme.test")
        .count();
    assert_eq!(twins, 1, "{members}");
    app.teardown().await;
}

#[tokio::test]
async fn a_database_outage_answers_503_with_retry_after_and_the_api_recovers() {
    let admin = url::Url::parse(&floq_tests::admin_database_url()).unwrap();
    let server = format!("{}:{}", admin.host_str().unwrap(), admin.port().unwrap_or(5432));
    let mut link = Some(floq_tests::forward::forward(server.parse().unwrap()).await);
    let port = link.as_ref().unwrap().port;
    let app = TestApp::spawn_configured(floq_tests::Options::default(), |config| {
        let mut url = url::Url::parse(config.database_url.expose()).unwrap();
        url.set_port(Some(port)).unwrap();
        config.database_url = floq_shared::config::Secret::new(url.to_string());
    })
    .await;
    let key = app.admin.api_key.clone();
    let (status, body) = app.get("/api/v1/flows", &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Cut every connection the API holds, and refuse new ones.
    link.take();
    let started = std::time::Instant::now();
    let (status, body, retry_after) = loop {
        let response = app
            .client
            .get(format!("{}/api/v1/flows", app.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body: serde_json::Value = response.json().await.unwrap();
        if status != StatusCode::OK || started.elapsed() > std::time::Duration::from_secs(30) {
            break (status, body, retry_after);
        }
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry_after.as_deref(), Some("2"));
    floq_tests::assert_error(
        &body,
        "unavailable",
        "the database is unavailable; retry shortly",
        serde_json::Value::Null,
    );
    let text = body.to_string();
    assert!(!text.contains("127.0.0.1") && !text.contains("Connection"), "{text}");
    // /readyz says the same to the orchestrator.
    let ready = app.client.get(format!("{}/readyz", app.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The database is back (a new forwarder on the same port): so is the API.
    let listener = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let _back = floq_tests::forward::forward_from(listener, server.parse().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = app.get("/api/v1/flows", &key).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    app.teardown().await;
}

/// 0001 swallowed a failed `GRANT floq_app TO current_user`, so such an
/// install migrated "successfully" and failed on every tenant transaction.
#[tokio::test]
async fn migrating_as_a_user_who_cannot_use_floqs_roles_fails_loudly() {
    use sqlx::{Connection, PgConnection};
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let role = format!("floq_t_role_{}", &tag[..12]);
    let db = format!("floq_t_{}_{tag}", *floq_tests::RUN_ID);
    let password = format!("pw-{tag}");
    let mut admin = PgConnection::connect(&floq_tests::admin_database_url()).await.unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN NOCREATEROLE PASSWORD '{password}'"),
        format!("CREATE DATABASE {db}"),
        format!("GRANT CREATE ON DATABASE {db} TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
    }
    let mut owner = PgConnection::connect(&floq_tests::database_url(&db)).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("GRANT ALL ON SCHEMA public TO {role}")))
        .execute(&mut owner)
        .await
        .unwrap();
    owner.close().await.unwrap();

    let mut url = url::Url::parse(&floq_tests::database_url(&db)).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some(&password)).unwrap();
    let outcome = match sqlx::PgPool::connect(url.as_str()).await {
        Ok(pool) => {
            let outcome = floq_shared::db::migrate(&pool).await;
            pool.close().await;
            outcome.map_err(|e| format!("{e}"))
        }
        Err(e) => Err(format!("connect: {e}")),
    };
    for sql in [format!("DROP DATABASE {db} WITH (FORCE)"), format!("DROP ROLE {role}")] {
        // A backend of the role may still be exiting after its pool closed; the test's
        // role may not terminate another role's backend, so wait for it to go.
        let mut tries = 0;
        while let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&mut admin).await {
            tries += 1;
            assert!(tries < 100, "{sql}: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let error = outcome.expect_err("migrating without floq's roles must fail");
    assert!(
        error.contains(&format!("the database user {role} is not a member of role floq_app")),
        "{error}"
    );
}
