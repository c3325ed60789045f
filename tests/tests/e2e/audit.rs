use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::identity::{ORIGIN, PASSWORD, login, session_of, signed_in, user_with_password, with_cookie};
use floq_tests::{Options, TestApp};

async fn spawn() -> TestApp {
    TestApp::spawn_configured(Options::default(), |c| c.cors_origins = vec![ORIGIN.into()]).await
}

/// Entries matching `query` that satisfy `pred`, waiting for the batched
/// writer; fails after 10 s.
async fn entries_where(app: &TestApp, key: &str, query: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let (status, body) = app.get(&format!("/api/v1/audit?limit=200&{query}"), key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let hits: Vec<Value> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect();
        if !hits.is_empty() {
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no audit entry for `{query}` matched");
}

async fn entry(app: &TestApp, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
    entries_where(app, &app.admin.api_key, query, pred).await.remove(0)
}

/// Entries of the platform (no company) straight from the database.
async fn platform_entries(app: &TestApp, action: &str) -> Vec<Value> {
    for _ in 0..100 {
        let rows: Vec<Value> = sqlx::query_scalar(
            "SELECT floq_audit_json(a) FROM audit_log a WHERE company_id = '00000000-0000-0000-0000-000000000000' AND action = $1",
        )
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if !rows.is_empty() {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no platform entry `{action}`");
}

#[tokio::test]
async fn every_request_is_recorded_with_caller_route_status_and_timing() {
    let app = spawn().await;
    let resp = app
        .client
        .get(format!("{}/api/v1/flows", app.base))
        .bearer_auth(&app.admin.api_key)
        .header("x-request-id", "audit-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let e = entry(&app, "action=http.request", |e| e["request_id"] == "audit-req-1").await;
    assert_eq!(e["details"]["method"], "GET");
    assert_eq!(e["details"]["route"], "/api/v1/flows");
    assert_eq!(e["details"]["status"], 200);
    assert!(e["details"]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(e["company_id"], app.admin.company_id.to_string());
    assert_eq!(e["actor"]["type"], "user");
    assert_eq!(e["actor"]["id"], app.admin.user_id.to_string());
    assert_eq!(e["actor"]["via"], "api_key");
    assert_eq!(e["actor"]["via_id"], app.admin.key_id.to_string());
    assert_eq!(e["client_ip"], "127.0.0.1");
    assert_eq!(e["outcome"], "success");

    // Unauthenticated requests belong to the platform, with the address they came from.
    let resp = app
        .client
        .get(format!("{}/api/v1/flows", app.base))
        .header("x-request-id", "audit-anon-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let anon = platform_entries(&app, "http.request").await;
    let anon = anon
        .iter()
        .find(|e| e["request_id"] == "audit-anon-1")
        .expect("the 401 is audited");
    assert_eq!(anon["actor"]["type"], "anonymous");
    assert_eq!(anon["outcome"], "denied");
    assert_eq!(anon["details"]["status"], 401);
    app.teardown().await;
}

#[tokio::test]
async fn no_request_entry_is_lost_under_concurrency() {
    let app = spawn().await;
    let sends = (0..300).map(|i| {
        app.client
            .get(format!("{}/api/v1/auth/me", app.base))
            .bearer_auth(&app.admin.api_key)
            .header("x-request-id", format!("burst-{i}"))
            .send()
    });
    for resp in futures_util::future::join_all(sends).await {
        assert_eq!(resp.unwrap().status(), StatusCode::OK);
    }
    let mut seen = 0;
    for _ in 0..100 {
        seen = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM audit_log WHERE action = 'http.request' AND request_id LIKE 'burst-%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if seen >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 300);
    app.teardown().await;
}

#[tokio::test]
async fn changes_are_recorded_with_state_before_and_after() {
    let app = spawn().await;
    let admin = app.admin.api_key.clone();
    let (_, flow) = app
        .post(
            "/api/v1/flows",
            &admin,
            json!({"name": "before", "definition": {"nodes": [{"id": "a", "type": "merge"}]}}),
        )
        .await;
    let flow_id = flow["id"].as_str().unwrap().to_string();
    let (status, _) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow_id}"),
            &admin,
            Some(json!({"name": "after"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post(&format!("/api/v1/flows/{flow_id}/deploy"), &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .request(Method::DELETE, &format!("/api/v1/flows/{flow_id}"), &admin, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let q = format!("resource_type=flow&resource_id={flow_id}");
    let created = entry(&app, &q, |e| e["action"] == "flow.create").await;
    assert_eq!(created["details"]["before"], Value::Null);
    assert_eq!(created["details"]["after"]["name"], "before");
    let updated = entry(&app, &q, |e| e["action"] == "flow.update").await;
    assert_eq!(updated["details"]["before"]["name"], "before");
    assert_eq!(updated["details"]["after"]["name"], "after");
    assert_eq!(updated["actor"]["id"], app.admin.user_id.to_string());
    let deleted = entry(&app, &q, |e| e["action"] == "flow.delete").await;
    assert_eq!(deleted["details"]["before"]["name"], "after");
    assert_eq!(deleted["details"]["after"], Value::Null);
    entry(&app, "action=flow.deploy", |e| e["details"]["after"]["version"] == 1).await;

    // Configuration: roles, grants, groups, keys.
    let member = app.member(&["viewer"]).await;
    let (status, _) = app
        .request(
            Method::PATCH,
            &format!("/api/v1/users/{}", member.user_id),
            &admin,
            Some(json!({"roles": ["flow_editor"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let roles = entry(&app, "action=user.roles_update", |_| true).await;
    assert_eq!(roles["details"]["before"]["roles"], json!(["viewer"]));
    assert_eq!(roles["details"]["after"]["roles"], json!(["flow_editor"]));

    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (_, grant) = app
        .post(
            "/api/v1/grants",
            &admin,
            json!({"subject_type": "user", "subject_id": member.user_id, "entity_type": "flow", "entity_id": flow, "level": "view"}),
        )
        .await;
    let grant_id = grant["id"].as_str().unwrap();
    app.request(Method::DELETE, &format!("/api/v1/grants/{grant_id}"), &admin, None)
        .await;
    let q = format!("resource_type=grant&resource_id={grant_id}");
    entry(&app, &q, |e| {
        e["action"] == "grant.create" && e["details"]["after"]["level"] == "view"
    })
    .await;
    entry(&app, &q, |e| {
        e["action"] == "grant.delete" && e["details"]["before"]["level"] == "view"
    })
    .await;

    let (_, group) = app.post("/api/v1/groups", &admin, json!({"name": "ops"})).await;
    let group_id = group["id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/groups/{group_id}/members/{}", member.user_id),
        &admin,
        json!({}),
    )
    .await;
    entry(&app, "action=group.*", |e| e["action"] == "group.member_add").await;
    entry(&app, "action=group.*", |e| e["action"] == "group.create").await;

    let (_, key) = app
        .post("/api/v1/api-keys", &admin, json!({"name": "ci", "scopes": ["api"]}))
        .await;
    let key_id = key["id"].as_str().unwrap();
    app.request(Method::DELETE, &format!("/api/v1/api-keys/{key_id}"), &admin, None)
        .await;
    let q = format!("resource_type=api_key&resource_id={key_id}");
    let created = entry(&app, &q, |e| e["action"] == "api_key.create").await;
    assert!(
        !created.to_string().contains(key["token"].as_str().unwrap()),
        "the token never reaches the log"
    );
    let revoked = entry(&app, &q, |e| e["action"] == "api_key.revoke").await;
    assert_eq!(revoked["details"]["before"]["revoked_at"], Value::Null);
    assert!(revoked["details"]["after"]["revoked_at"].is_string());
    app.teardown().await;
}

#[tokio::test]
async fn sign_ins_sign_outs_expiry_and_company_switches_are_recorded() {
    let app = spawn().await;
    let user_id = user_with_password(&app, "ada@acme.test", &["viewer"]).await;

    let (status, _, _) = login(&app, "ada@acme.test", "wrong password!").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let failed = entry(&app, "action=auth.login", |e| e["outcome"] == "failure").await;
    assert_eq!(failed["actor"]["id"], user_id);
    assert_eq!(failed["actor"]["label"], "ada@acme.test");
    assert_eq!(failed["details"]["reason"], "invalid_credentials");
    assert!(
        !failed.to_string().contains("wrong password"),
        "passwords are never recorded"
    );

    let (status, _, _) = login(&app, "nobody@acme.test", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let unknown = platform_entries(&app, "auth.login").await;
    assert!(
        unknown
            .iter()
            .any(|e| e["actor"]["label"] == "nobody@acme.test" && e["outcome"] == "failure")
    );

    let cookie = signed_in(&app, "ada@acme.test").await;
    let ok = entry(&app, "action=auth.login", |e| e["outcome"] == "success").await;
    assert_eq!(ok["actor"]["id"], user_id);
    assert_eq!(ok["actor"]["via"], "session");
    assert_eq!(ok["resource"]["type"], "session");

    // Switching: both companies' logs show the move.
    let globex = app.other_company().await;
    // Ada joins Globex as an accepted invitation would (see `accounts.rs`).
    let mut tx = floq_shared::db::tenant_tx(&app.pool, globex.company_id).await.unwrap();
    sqlx::query("INSERT INTO memberships (company_id, user_id, roles) VALUES ($1, $2::uuid, ARRAY['viewer'])")
        .bind(globex.company_id)
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (status, _) = with_cookie(
        &app,
        Method::POST,
        "/api/v1/auth/switch-company",
        &cookie,
        Some(ORIGIN),
        Some(json!({"company_id": globex.company_id})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    entry(&app, "action=auth.switch_company", |e| {
        e["details"]["to"] == globex.company_id.to_string()
    })
    .await;
    entries_where(&app, &globex.api_key, "action=auth.switch_company", |e| {
        e["details"]["from"] == app.admin.company_id.to_string()
    })
    .await;

    let (status, _) = with_cookie(&app, Method::POST, "/api/v1/auth/logout", &cookie, Some(ORIGIN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    entries_where(&app, &globex.api_key, "action=auth.logout", |e| {
        e["actor"]["id"] == user_id
    })
    .await;

    let (_, set_cookie, _) = login(&app, "ada@acme.test", PASSWORD).await;
    let expiring = session_of(&set_cookie.unwrap());
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE revoked_at IS NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, _) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &expiring, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = with_cookie(&app, Method::GET, "/api/v1/auth/me", &expiring, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let expired = entries_where(&app, &app.admin.api_key, "action=auth.session_expired", |_| true).await;
    assert_eq!(expired.len(), 1, "an expiry is recorded once: {expired:?}");
    assert_eq!(expired[0]["actor"]["id"], user_id);
    app.teardown().await;
}

#[tokio::test]
async fn denied_permission_checks_name_the_capability_and_the_entity() {
    let app = spawn().await;
    let viewer = app.member(&["viewer"]).await;
    let (status, _) = app
        .post(
            "/api/v1/flows",
            &viewer.api_key,
            json!({"name": "x", "definition": {"nodes": [{"id": "a", "type": "merge"}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let denied = entry(&app, "action=authz.denied", |e| {
        e["details"]["capability"] == "flow:edit"
    })
    .await;
    assert_eq!(denied["actor"]["id"], viewer.user_id.to_string());
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["details"]["request"]["route"], "/api/v1/flows");

    // A flow outside the caller's grants: hidden as 404, audited as a denial on that flow.
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, _) = app.get(&format!("/api/v1/flows/{flow}"), &viewer.api_key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let hidden = entry(
        &app,
        &format!("action=authz.denied&resource_type=flow&resource_id={flow}"),
        |_| true,
    )
    .await;
    assert_eq!(hidden["details"]["capability"], "flow:view");
    app.teardown().await;
}

#[tokio::test]
async fn node_executions_are_recorded_with_shapes_never_values() {
    let app = spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [
            {"id": "greet", "type": "set", "params": {"values": {"message": "hello", "who": "{{ $input.name }}"}}},
            {"id": "done", "type": "merge"}
        ], "edges": [{"from": "greet", "to": "done"}]}))
        .await;
    let run = app.start_run(&flow, json!({"name": "very-private-value"})).await;
    app.wait_run(&run).await;
    let q = format!("action=node.execute&resource_type=run&resource_id={run}");
    let greet = entry(&app, &q, |e| e["details"]["node_id"] == "greet").await;
    assert_eq!(greet["details"]["node_type"], "set");
    assert_eq!(greet["details"]["status"], "succeeded");
    assert_eq!(greet["details"]["flow_id"], flow);
    assert_eq!(greet["actor"]["type"], "system");
    assert!(greet["details"]["duration_ms"].is_number());
    let keys = greet["details"]["output"]["keys"].as_array().unwrap();
    assert!(
        keys.contains(&json!("who")) && keys.contains(&json!("message")),
        "{greet}"
    );
    assert!(greet["details"]["output"]["bytes"].as_u64().unwrap() > 0);
    entry(&app, &q, |e| e["details"]["node_id"] == "done").await;
    let created = entry(&app, &format!("action=run.create&resource_id={run}"), |_| true).await;
    assert_eq!(created["details"]["input"]["keys"], json!(["name"]));
    let everything = app.get("/api/v1/audit?limit=200", &app.admin.api_key).await.1;
    assert!(
        !everything.to_string().contains("very-private-value"),
        "values never reach the log"
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_outbox_sweep_records_what_it_republished() {
    let app = spawn().await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    app.wait_run(&run).await;
    // A stale outbox row, as if the API died before publishing: the sweep must publish and say so.
    sqlx::query(
        "INSERT INTO outbox (company_id, run_id, payload, created_at)
         SELECT company_id, id, jsonb_build_object('kind', 'run_flow.v1', 'run_id', id, 'company_id', company_id,
                'flow_id', flow_id, 'version', version, 'attempt', attempt, 'trigger', trigger),
                now() - interval '1 minute'
           FROM runs WHERE id = $1::uuid",
    )
    .bind(&run)
    .execute(&app.pool)
    .await
    .unwrap();
    let swept = entry(&app, "action=job.outbox_sweep", |_| true).await;
    assert_eq!(swept["actor"]["type"], "system");
    assert_eq!(swept["actor"]["label"], "scheduler");
    assert_eq!(swept["details"]["republished"], 1);
    assert_eq!(swept["details"]["run_ids"], json!([run]));
    app.teardown().await;
}

/// Waits until the scheduler has sealed every entry, then returns the verification.
async fn verified(app: &TestApp) -> Value {
    for _ in 0..100 {
        let (status, body) = app.get("/api/v1/audit/verify", &app.admin.api_key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["pending"] == 0 && body["checked"].as_i64().unwrap() > 0 {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the audit log was never fully sealed");
}

/// The sealer renders entries in Rust; the chain is verified in SQL. Both
/// must produce the same bytes, whatever the entries hold.
#[tokio::test]
async fn the_sealer_renders_entries_byte_for_byte_as_the_database_does() {
    use floq_shared::audit::{Actor, Entry, Outcome, canonical};
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let company = app.admin.company_id;
    let mut user = Actor::system("ignored");
    user.kind = floq_shared::audit::ActorType::User;
    user.id = Some(app.admin.user_id);
    user.label = Some("Zoë \"the admin\" \\ ☃".into());
    user.via = Some((floq_shared::audit::Via::ApiKey, app.admin.key_id));
    user.client_ip = Some("2001:db8::1".into());
    user.request_id = Some("req-1".into());
    let entries = [
        Entry::new(company, user, "flow.update")
            .resource("flow", "a\tb\u{1}c\u{1f}\u{7f}\r\n é")
            .outcome(Outcome::Failure)
            .details(json!({
                "text": "line\nbreak \r\u{8}\u{c}\u{1f}\u{7f} é 漢 😀 \u{2028}",
                "n": [1, -2.5, 1e21, 12345678901234567u64, 0.1],
                "nested": {"z": null, "aa": true, "": false, "b": {"deep": []}},
                "quote\"key": "back\\slash"
            })),
        Entry::new(company, Actor::system("scheduler"), "cron.fire"),
        Entry::new(company, Actor::anonymous(None, None), "auth.login").at(chrono::Utc::now()),
    ];
    let mut tx = floq_shared::db::duty_tx(&app.pool, floq_shared::db::Duty::AuditAppend)
        .await
        .unwrap();
    floq_shared::audit::append(&mut tx, &entries).await.unwrap();
    tx.commit().await.unwrap();

    let rows: Vec<canonical::EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM audit_log ORDER BY id",
        canonical::COLUMNS
    )))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected: Vec<String> = sqlx::query_scalar("SELECT floq_audit_json(a)::text FROM audit_log a ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(rows.len() >= entries.len());
    for (row, sql) in rows.iter().zip(&expected) {
        assert_eq!(&row.render(), sql);
    }
    app.teardown().await;
}

#[tokio::test]
async fn the_hash_chain_exposes_entries_altered_or_removed_in_the_database() {
    let app = spawn().await;
    for i in 0..5 {
        app.post("/api/v1/groups", &app.admin.api_key, json!({"name": format!("g{i}")}))
            .await;
    }
    entry(&app, "action=group.create", |e| e["details"]["after"]["name"] == "g4").await;
    // Stop request entries from arriving while we check (the verify calls themselves are entries).
    let first = verified(&app).await;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["first_broken"], Value::Null);

    let target: i64 = sqlx::query_scalar(
        "SELECT id FROM audit_log WHERE action = 'group.create' AND details->'after'->>'name' = 'g2'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // The application role may not change an entry...
    let mut tx = floq_shared::db::tenant_tx(&app.pool, app.admin.company_id)
        .await
        .unwrap();
    let refused = sqlx::query("UPDATE audit_log SET action = 'x' WHERE id = $1")
        .bind(target)
        .execute(&mut *tx)
        .await;
    assert!(refused.is_err(), "floq_app must not update audit entries");
    drop(tx);
    // ...but someone with the owner's credentials can: the chain must tell.
    sqlx::query("UPDATE audit_log SET details = jsonb_set(details, '{after,name}', '\"tampered\"') WHERE id = $1")
        .bind(target)
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, report) = app.get("/api/v1/audit/verify", &app.admin.api_key).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_broken"]["entry_id"], target);
    assert_eq!(report["first_broken"]["reason"], "entry_altered");

    let (_, v) = app.get("/api/v1/audit/verify", &app.admin.api_key).await;
    assert_eq!(
        v["first_broken"]["entry_id"], target,
        "the first broken link stays reported"
    );
    sqlx::query("DELETE FROM audit_log WHERE id = $1")
        .bind(target)
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, report) = app.get("/api/v1/audit/verify", &app.admin.api_key).await;
    assert_eq!(report["first_broken"]["reason"], "entry_missing", "{report}");
    app.teardown().await;
}

#[tokio::test]
async fn only_admins_and_audit_viewers_read_the_log_and_only_their_company() {
    let app = spawn().await;
    app.post(
        "/api/v1/groups",
        &app.admin.api_key,
        json!({"name": "acme-secret-team"}),
    )
    .await;
    entry(&app, "action=group.create", |_| true).await;

    let viewer = app.member(&["viewer"]).await;
    for path in ["/api/v1/audit", "/api/v1/audit/verify", "/api/v1/audit/export"] {
        assert_eq!(app.get(path, &viewer.api_key).await.0, StatusCode::FORBIDDEN, "{path}");
    }
    let auditor = app.member(&["audit_viewer"]).await;
    let seen = entries_where(&app, &auditor.api_key, "action=group.create", |_| true).await;
    assert_eq!(seen[0]["details"]["after"]["name"], "acme-secret-team");
    // An auditor reads, nothing else.
    assert_eq!(
        app.get("/api/v1/flows", &auditor.api_key).await.0,
        StatusCode::FORBIDDEN
    );

    let globex = app.other_company().await;
    let (_, theirs) = app.get("/api/v1/audit?limit=200", &globex.api_key).await;
    let ours = app.admin.company_id.to_string();
    assert!(
        theirs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["company_id"] != ours.as_str()),
        "{theirs}"
    );
    assert!(!theirs.to_string().contains("acme-secret-team"));
    let resp = app
        .client
        .get(format!("{}/api/v1/audit/export", app.base))
        .bearer_auth(&globex.api_key)
        .send()
        .await
        .unwrap();
    assert!(!resp.text().await.unwrap().contains("acme-secret-team"));
    app.teardown().await;
}

#[tokio::test]
async fn audit_queries_filter_page_and_reject_bad_parameters() {
    let app = spawn().await;
    let admin = app.admin.api_key.clone();
    for i in 0..5 {
        app.post("/api/v1/groups", &admin, json!({"name": format!("p{i}")}))
            .await;
    }
    entry(&app, "action=group.create", |e| e["details"]["after"]["name"] == "p4").await;
    let (_, page1) = app.get("/api/v1/audit?action=group.create&limit=3", &admin).await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(
            &format!("/api/v1/audit?action=group.create&limit=3&cursor={cursor}"),
            &admin,
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 2);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, by_actor) = app
        .get(
            &format!("/api/v1/audit?actor={}&action=group.create", app.admin.user_id),
            &admin,
        )
        .await;
    assert_eq!(by_actor["items"].as_array().unwrap().len(), 5);
    let (_, future) = app.get("/api/v1/audit?from=2999-01-01T00:00:00Z", &admin).await;
    assert_eq!(future["items"], json!([]));

    for bad in [
        "cursor=abc",
        "from=yesterday",
        "limit=0",
        "from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
        "colour=red",
    ] {
        let (status, body) = app.get(&format!("/api/v1/audit?{bad}"), &admin).await;
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{bad}: {status}"
        );
        assert!(
            body["error"]["code"].is_string() && body["error"]["request_id"].is_string(),
            "{body}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn export_streams_every_entry_in_order_as_ndjson() {
    let app = spawn().await;
    // 2 500 entries: more than two export pages.
    sqlx::query(
        "INSERT INTO audit_log (company_id, at, actor_type, action, outcome, details)
         SELECT $1, now(), 'system', 'test.bulk', 'success', jsonb_build_object('n', n)
           FROM generate_series(1, 2500) n",
    )
    .bind(app.admin.company_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let resp = app
        .client
        .get(format!("{}/api/v1/audit/export", app.base))
        .bearer_auth(&app.admin.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let entries: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let bulk: Vec<i64> = entries
        .iter()
        .filter(|e| e["action"] == "test.bulk")
        .map(|e| e["details"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(bulk, (1..=2500).collect::<Vec<_>>());
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first, no repeats");

    let (status, body) = app
        .get("/api/v1/audit/export?to=2000-01-01T00:00:00Z", &app.admin.api_key)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::Null, "nothing before 2000");
    app.teardown().await;
}

#[tokio::test]
async fn secrets_in_changed_entities_are_masked_before_they_are_written() {
    let app = spawn().await;
    let token = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    let (status, flow) = app
        .post(
            "/api/v1/flows",
            &app.admin.api_key,
            json!({"name": "calls stripe", "definition": {"nodes": [{"id": "call", "type": "http_request", "params": {
                "method": "POST",
                "url": "https://api.example.test/v1/charges",
                "headers": {"Authorization": format!("Bearer {token}")},
                "body": {"note": "card 4242 4242 4242 4242, reply to jane.doe@example.com"}
            }}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let created = entry(&app, "action=flow.create", |_| true).await;
    let text = created.to_string();
    for secret in [token, "4242 4242 4242 4242", "jane.doe@example.com"] {
        assert!(!text.contains(secret), "`{secret}` survived: {text}");
    }
    assert!(
        text.contains("api.example.test"),
        "non-secret values stay readable: {text}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn retention_settings_have_defaults_enforced_minimums_and_an_audit_trail() {
    let app = spawn().await;
    let admin = app.admin.api_key.clone();
    let (status, defaults) = app.get("/api/v1/settings/retention", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(defaults["audit_max_age_days"], 365);

    for (bad, field) in [
        (
            json!({"audit_max_age_days": 29, "audit_max_entries": 10000, "runs_max_age_days": 7}),
            "audit_max_age_days",
        ),
        (
            json!({"audit_max_age_days": 30, "audit_max_entries": 9999, "runs_max_age_days": 7}),
            "audit_max_entries",
        ),
        (
            json!({"audit_max_age_days": 30, "audit_max_entries": 10000, "runs_max_age_days": 0}),
            "runs_max_age_days",
        ),
        (json!({"audit_max_age_days": 30, "audit_max_entries": 10000}), "body"),
    ] {
        let (status, body) = app
            .request(Method::PUT, "/api/v1/settings/retention", &admin, Some(bad))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["error"]["details"].to_string().contains(field), "{field}: {body}");
    }
    assert_eq!(
        app.get("/api/v1/settings/retention", &admin).await.1,
        defaults,
        "refused updates change nothing"
    );

    let wanted = json!({"audit_max_age_days": 90, "audit_max_entries": 50000, "runs_max_age_days": 14});
    let (status, body) = app
        .request(Method::PUT, "/api/v1/settings/retention", &admin, Some(wanted.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.get("/api/v1/settings/retention", &admin).await.1, wanted);
    let changed = entry(&app, "action=settings.retention_update", |_| true).await;
    assert_eq!(changed["details"]["before"]["audit_max_age_days"], 365);
    assert_eq!(changed["details"]["after"]["audit_max_age_days"], 90);

    let editor = app.member(&["flow_editor"]).await;
    let (status, _) = app.get("/api/v1/settings/retention", &editor.api_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.teardown().await;
}

#[tokio::test]
async fn the_sink_receives_every_sealed_entry_as_a_json_line() {
    let path = std::env::temp_dir().join(format!("floq-audit-{}.ndjson", uuid::Uuid::new_v4().simple()));
    let sink = path.clone();
    let app = TestApp::spawn_configured(Options::default(), move |c| {
        c.audit_sink = Some(floq_shared::AuditSink::File(sink));
    })
    .await;
    app.post("/api/v1/groups", &app.admin.api_key, json!({"name": "shipped"}))
        .await;
    let wanted = entry(&app, "action=group.create", |_| true).await;
    let mut found = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        found = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["entry"]["id"] == wanted["id"]);
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = found.expect("the entry reached the sink");
    assert_eq!(line["entry"], wanted);
    assert!(line["seq"].as_i64().unwrap() >= 1);
    assert_eq!(line["hash"].as_str().unwrap().len(), 64);
    let _ = std::fs::remove_file(&path);
    app.teardown().await;
}
