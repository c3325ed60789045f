//! Least privilege in PostgreSQL: each cross-tenant duty's role reaches only
//! what its duty needs, and the roles behind anonymous paths see only the
//! row they looked up.

use axum::http::{Method, StatusCode};
use floq_shared::db::{self, Duty, Lookup};
use floq_tests::{Options, TestApp};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

fn no_services() -> Options {
    Options {
        worker: false,
        scheduler: false,
    }
}

/// The SQLSTATE a statement fails with in a fresh transaction of the duty, if any.
async fn refusal(app: &TestApp, duty: Duty, sql: &str) -> Option<String> {
    let mut tx = db::duty_tx(&app.pool, duty).await.expect("duty transaction");
    let result = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *tx)
        .await;
    tx.rollback().await.ok();
    match result {
        Ok(_) => None,
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.to_string()),
        Err(e) => panic!("{duty:?}: {sql}: {e}"),
    }
}

async fn count(tx: &mut db::Tx, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut **tx)
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
}

#[tokio::test]
async fn no_duty_role_can_read_or_write_runs_steps_credentials_or_kv() {
    let app = TestApp::spawn_with(no_services()).await;
    // Something to find in each table, so a missing wall would show rows, not only a grant.
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    app.start_run(&flow, json!({})).await;
    app.credential(
        &app.admin.api_key,
        "api_key_query",
        json!({"name": "key", "value": "s3cret-value-long-enough"}),
    )
    .await;
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/v1/kv/k1",
            &app.admin.api_key,
            Some(json!({"value": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    for duty in Duty::ALL {
        let mut tables = vec!["runs", "run_steps", "flows", "flow_versions", "api_keys", "grants"];
        if duty != Duty::KeyRotation {
            // Re-encrypting secrets is the one duty that reads them.
            tables.extend(["credentials", "kv"]);
        }
        for table in tables {
            for sql in [format!("SELECT 1 FROM {table} LIMIT 1"), format!("DELETE FROM {table}")] {
                assert_eq!(
                    refusal(&app, duty, &sql).await.as_deref(),
                    Some("42501"),
                    "{duty:?} ({}) may run `{sql}`",
                    duty.role()
                );
            }
        }
    }
    // And the old catch-all role reaches nothing at all any more.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE floq_system")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("SELECT 1 FROM sessions LIMIT 1")
        .execute(&mut *tx)
        .await
        .expect_err("floq_system kept a grant");
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(tx);
    app.teardown().await;
}

#[tokio::test]
async fn anonymous_lookups_see_only_the_row_whose_token_they_hold() {
    let app = TestApp::spawn_with(no_services()).await;
    let other = app.other_company().await;

    // Two live sessions of two companies' admins.
    let (mine, theirs) = (Sha256::digest(b"mine").to_vec(), Sha256::digest(b"theirs").to_vec());
    for (hash, user, company) in [
        (&mine, app.admin.user_id, app.admin.company_id),
        (&theirs, other.user_id, other.company_id),
    ] {
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, company_id, expires_at)
             VALUES ($1, $2, $3, $4, now() + interval '1 hour')",
        )
        .bind(Uuid::now_v7())
        .bind(hash)
        .bind(user)
        .bind(company)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let mut tx = db::lookup_tx(&app.pool, Duty::SessionLookup, Lookup::Hash(&mine))
        .await
        .unwrap();
    assert_eq!(
        count(&mut tx, "sessions").await,
        1,
        "a cookie check sees its session only"
    );
    let companies: Vec<Uuid> = sqlx::query_scalar("SELECT company_id FROM memberships")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(companies, vec![app.admin.company_id], "and only its user's memberships");
    drop(tx);
    let mut tx = db::duty_tx(&app.pool, Duty::SessionLookup).await.unwrap();
    assert_eq!(count(&mut tx, "sessions").await, 0, "without a key it sees nothing");
    drop(tx);

    // Sign-in sees the identity it looked up and nobody else.
    let mut tx = db::lookup_tx(&app.pool, Duty::SignIn, Lookup::Email(" Admin@Acme.test "))
        .await
        .unwrap();
    let users: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM users")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(users, vec![app.admin.user_id]);
    assert_eq!(count(&mut tx, "companies").await, 1);
    drop(tx);
    assert_eq!(
        refusal(&app, Duty::SignIn, "SELECT 1 FROM sessions").await.as_deref(),
        Some("42501"),
        "sign-in may open a session, never read one"
    );

    // A webhook lookup sees the one webhook whose token it holds.
    let mut tokens = Vec::new();
    for key in [&app.admin.api_key, &other.api_key] {
        let flow = app
            .deployed_flow_as(key, json!({"nodes": [{"id": "a", "type": "merge"}]}))
            .await;
        let (status, hook) = app
            .request(
                Method::PUT,
                &format!("/api/v1/flows/{flow}/webhook"),
                key,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{hook}");
        let path = hook["path"].as_str().unwrap();
        tokens.push(path.rsplit('/').next().unwrap().to_string());
    }
    let hash = Sha256::digest(tokens[0].as_bytes()).to_vec();
    let mut tx = db::lookup_tx(&app.pool, Duty::WebhookLookup, Lookup::Hash(&hash))
        .await
        .unwrap();
    assert_eq!(count(&mut tx, "flow_webhooks").await, 1);
    drop(tx);
    let mut tx = db::lookup_tx(&app.pool, Duty::WebhookLookup, Lookup::Id(app.admin.company_id))
        .await
        .unwrap();
    assert_eq!(
        count(&mut tx, "flow_webhooks").await,
        0,
        "a key of another form matches nothing"
    );
    drop(tx);
    // The webhook still answers through that role.
    let response = app
        .client
        .post(format!("{}/hooks/{}", app.base, tokens[1]))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.teardown().await;
}

#[tokio::test]
async fn a_keyed_session_can_only_be_revoked_or_moved_and_a_move_outside_its_users_companies_kills_it() {
    let app = TestApp::spawn_with(no_services()).await;
    let other = app.other_company().await;
    let hash = Sha256::digest(b"cookie").to_vec();
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, user_id, company_id, expires_at)
         VALUES ($1, $2, $3, $4, now() + interval '1 hour')",
    )
    .bind(Uuid::now_v7())
    .bind(&hash)
    .bind(app.admin.user_id)
    .bind(app.admin.company_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let attempt = |sql: String| {
        let (pool, hash) = (app.pool.clone(), hash.clone());
        async move {
            let mut tx = db::lookup_tx(&pool, Duty::SessionLookup, Lookup::Hash(&hash))
                .await
                .unwrap();
            let result = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await;
            match result {
                Ok(done) => Ok(done.rows_affected()),
                Err(sqlx::Error::Database(e)) => Err(e.code().unwrap_or_default().to_string()),
                Err(e) => panic!("{e}"),
            }
        }
    };
    // Another user: the column is not the duty's to write.
    assert_eq!(
        attempt(format!("UPDATE sessions SET user_id = '{}'", other.user_id)).await,
        Err("42501".into())
    );
    assert_eq!(
        attempt("UPDATE sessions SET token_hash = 'x'".into()).await,
        Err("42501".into())
    );
    assert_eq!(attempt("UPDATE sessions SET revoked_at = now()".into()).await, Ok(1));
    // Moved to a company its user does not belong to, a session is dead.
    assert_eq!(
        attempt(format!("UPDATE sessions SET company_id = '{}'", other.company_id)).await,
        Ok(1)
    );
    let moved = sqlx::query("UPDATE sessions SET company_id = $1, revoked_at = NULL WHERE token_hash = $2")
        .bind(other.company_id)
        .bind(&hash)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    assert!(matches!(
        floq_shared::sessions::lookup(&app.pool, "cookie").await.unwrap(),
        floq_shared::sessions::Lookup::Unknown
    ));
    app.teardown().await;
}

#[tokio::test]
async fn an_address_outside_ascii_is_refused_before_any_lookup() {
    // PostgreSQL folds `İ` onto `i`: without this rule a look-alike address
    // would find admin@acme.test while its mail went to someone else.
    let app = TestApp::spawn_with(no_services()).await;
    for (path, body) in [
        ("/api/v1/auth/password-reset", json!({"email": "admİn@acme.test"})),
        (
            "/api/v1/auth/login",
            json!({"email": "admİn@acme.test", "password": "irrelevant password"}),
        ),
        (
            "/api/v1/users",
            json!({"email": "admİn@acme.test", "name": "x", "roles": ["viewer"]}),
        ),
    ] {
        let (status, answer) = app.post(path, &app.admin.api_key, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "validation_failed", "{answer}");
        assert_eq!(answer["error"]["details"][0]["field"], "email", "{answer}");
    }
    app.teardown().await;
}
