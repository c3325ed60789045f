//! Poison rows: text PostgreSQL cannot store (U+0000) from one company never
//! fails, stalls or retries another company's requests and runs. Ingress
//! refuses it with `422 invalid_text` naming the field; node outputs store
//! it as U+FFFD; every group commit isolates a row the database refuses.

use std::time::Duration;

use axum::routing::get;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::runs::serve;
use floq_shared::audit::{Actor, Entry, Writer};
use floq_tests::TestApp;

/// The whole `invalid_text` error body, but for its request id.
fn assert_invalid_text(status: StatusCode, body: &Value, field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let mut error = body["error"].clone();
    error.as_object_mut().unwrap().remove("request_id");
    assert_eq!(
        error,
        json!({
            "code": "invalid_text",
            "message": format!("`{field}` contains a NUL character (U+0000), which cannot be stored"),
            "details": [{"field": field, "message": "must not contain U+0000"}],
        })
    );
}

/// Creates and deploys a flow as `key`'s company.
async fn deploy(app: &TestApp, key: &str, definition: Value) -> String {
    let (status, flow) = app
        .post(
            "/api/v1/flows",
            key,
            json!({"name": "poison test", "definition": definition}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{flow}");
    let id = flow["id"].as_str().unwrap().to_string();
    let (status, body) = app.post(&format!("/api/v1/flows/{id}/deploy"), key, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    id
}

/// Starts `n` runs of `flow` as the main company, concurrently; returns each answer.
async fn many_runs(app: &TestApp, flow: &str, n: usize) -> Vec<(StatusCode, Value)> {
    let path = format!("/api/v1/flows/{flow}/runs");
    join_all((0..n).map(|i| app.post(&path, &app.admin.api_key, json!({"input": {"i": i}})))).await
}

async fn assert_all_succeed(app: &TestApp, answers: &[(StatusCode, Value)]) {
    for (status, body) in answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
    }
    for (_, body) in answers {
        let run = app.wait_run(body["run_id"].as_str().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["attempt"], 1, "never retried: {run}");
    }
}

#[tokio::test]
async fn a_nul_in_one_companys_run_input_or_webhook_fails_only_that_request() {
    let app = TestApp::spawn().await;
    let victim = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"i": "{{ $input.i }}"}}}]}))
        .await;
    let attacker = app.other_company().await;
    let b_flow = deploy(
        &app,
        &attacker.api_key,
        json!({"nodes": [{"id": "a", "type": "merge"}]}),
    )
    .await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{b_flow}/webhook"),
            &attacker.api_key,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let hook = format!("{}{}", app.base, hook["path"].as_str().unwrap());

    // Company B's poison goes out at the same moment as company A's ordinary runs.
    let runs_path = format!("/api/v1/flows/{b_flow}/runs");
    let poison = async {
        let values = join_all((0..5).map(|_| {
            app.post(
                &runs_path,
                &attacker.api_key,
                json!({"input": {"a": ["ok", "x\u{0}y"]}}),
            )
        }));
        let key = app.post(&runs_path, &attacker.api_key, json!({"input": {"k\u{0}": 1}}));
        let json_body = app.client.post(&hook).json(&json!({"order": {"note": "\u{0}"}})).send();
        let raw_body = app.client.post(&hook).body(b"raw\0bytes".to_vec()).send();
        let query = app.client.post(format!("{hook}?note=a%00b")).json(&json!({})).send();
        let (values, key, json_body, raw_body, query) = futures_util::join!(values, key, json_body, raw_body, query);
        let mut answers = vec![key];
        for resp in [json_body, raw_body, query] {
            let resp = resp.unwrap();
            answers.push((resp.status(), resp.json().await.unwrap()));
        }
        (values, answers)
    };
    let ((values, answers), a_runs) = futures_util::join!(poison, many_runs(&app, &victim, 40));

    // The harm is checked first: company A's runs, sent beside B's poison.
    assert_all_succeed(&app, &a_runs).await;
    for (status, body) in &values {
        assert_invalid_text(*status, body, "input.a[1]");
    }
    assert_invalid_text(answers[0].0, &answers[0].1, "input.k\\u0000");
    assert_invalid_text(answers[1].0, &answers[1].1, "body.order.note");
    assert_invalid_text(answers[2].0, &answers[2].1, "body");
    assert_invalid_text(answers[3].0, &answers[3].1, "note");
    // B's webhook still works for clean calls.
    let resp = app
        .client
        .post(&hook)
        .json(&json!({"fine": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    app.teardown().await;
}

#[tokio::test]
async fn every_text_field_refuses_a_nul_with_a_422_naming_it() {
    let app = TestApp::spawn().await;
    let attacker = app.other_company().await;
    let key = attacker.api_key.clone();
    let flow = deploy(&app, &key, json!({"nodes": [{"id": "a", "type": "merge"}]})).await;
    let nul = "x\u{0}";
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::POST,
            "/api/v1/groups".into(),
            Some(json!({"name": nul})),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/flow-groups".into(),
            Some(json!({"name": nul})),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/api-keys".into(),
            Some(json!({"name": nul, "scopes": ["api"]})),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/credentials".into(),
            Some(json!({"name": nul, "type": "bearer", "data": {"token": "t"}})),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({"email": "new@globex.test", "name": nul, "password": "a-long-password-1"})),
            "name",
        ),
        (
            Method::PUT,
            "/api/v1/kv/greeting".into(),
            Some(json!({"value": {"text": nul}})),
            "value.text",
        ),
        (
            Method::PUT,
            format!("/api/v1/flows/{flow}/webhook"),
            Some(json!({"signature_header": nul})),
            "signature_header",
        ),
        (
            Method::POST,
            "/api/v1/flows".into(),
            Some(
                json!({"name": "ok", "definition": {"nodes": [{"id": "a", "type": "set", "params": {"values": {"v": nul}}}]}}),
            ),
            "definition.nodes[0].params.values.v",
        ),
        (Method::GET, "/api/v1/audit?action=a%00".into(), None, "action"),
    ];
    for (method, path, body, field) in cases {
        let (status, answer) = app.request(method, &path, &key, body).await;
        assert_invalid_text(status, &answer, field);
    }
    // A unique value taken by a concurrent rename is a 409, not a 500.
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, group) = app
            .post("/api/v1/flow-groups", &key, json!({"name": format!("g{i}")}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{group}");
        ids.push(group["id"].as_str().unwrap().to_string());
    }
    let (app_ref, key_ref) = (&app, &key);
    let renames = ids.iter().map(|id| async move {
        let path = format!("/api/v1/flow-groups/{id}");
        app_ref
            .request(Method::PUT, &path, key_ref, Some(json!({"name": "twins"})))
            .await
    });
    let answers = join_all(renames).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{answers:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{answers:?}"
    );
    // The main company is untouched and still works.
    let run = app
        .run_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}), json!({}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    app.teardown().await;
}

#[tokio::test]
async fn nul_node_outputs_are_stored_as_replacement_characters_without_touching_other_runs() {
    let app = TestApp::spawn().await;
    let server = serve(axum::Router::new().route(
        "/nul",
        get(|| async { ([("content-type", "text/plain")], "before\0after") }),
    ))
    .await;
    let victim = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"i": "{{ $input.i }}"}}}]}))
        .await;
    let attacker = app.other_company().await;
    let code = deploy(
        &app,
        &attacker.api_key,
        json!({"nodes": [{"id": "c", "type": "code",
                          "params": {"code": "return {text: 'a\\u0000b', ['k\\u0000']: ['\\u0000']};"}}]}),
    )
    .await;
    let http = deploy(
        &app,
        &attacker.api_key,
        json!({"nodes": [{"id": "h", "type": "http_request",
                          "params": {"method": "GET", "url": format!("{server}/nul"), "response": "text"}}]}),
    )
    .await;

    let attack = async {
        let mut ids = Vec::new();
        for flow in [&code, &http, &code, &http] {
            let (status, body) = app
                .post(
                    &format!("/api/v1/flows/{flow}/runs"),
                    &attacker.api_key,
                    json!({"input": {}}),
                )
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            ids.push(body["run_id"].as_str().unwrap().to_string());
        }
        ids
    };
    let (ids, a_runs) = futures_util::join!(attack, many_runs(&app, &victim, 40));
    assert_all_succeed(&app, &a_runs).await;

    let run = app.wait_run_as(&attacker.api_key, &ids[0]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"text": "a\u{FFFD}b", "k\u{FFFD}": ["\u{FFFD}"]}));
    let run = app.wait_run_as(&attacker.api_key, &ids[1]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["body"], "before\u{FFFD}after");
    assert_eq!(run["output"]["status"], 200);
    for id in &ids[2..] {
        assert_eq!(app.wait_run_as(&attacker.api_key, id).await["status"], "succeeded");
    }
    app.teardown().await;
}

#[tokio::test]
async fn an_audit_entry_the_database_refuses_does_not_stall_auditing() {
    let app = TestApp::spawn().await;
    let attacker = app.other_company().await;
    let (writer, task) = Writer::start(app.pool.clone(), "test");
    // B's entries: one with NULs (stored by the U+FFFD rule), one no rule can store
    // (a time PostgreSQL refuses), then A's ordinary entry behind them in the same batch.
    let mut actor = Actor::system("poison");
    actor.label = Some("label\u{0}".into());
    writer
        .record(Entry::new(attacker.company_id, actor, "poison.nul").details(json!({"k\u{0}": "v\u{0}"})))
        .await;
    writer
        .record(
            Entry::new(attacker.company_id, Actor::system("poison"), "poison.refused")
                .at(chrono::DateTime::<chrono::Utc>::MIN_UTC),
        )
        .await;
    writer
        .record(Entry::new(
            app.admin.company_id,
            Actor::system("ordinary"),
            "ordinary.entry",
        ))
        .await;
    drop(writer);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the writer drains instead of retrying a refused entry forever")
        .unwrap();

    let rows: Vec<(String, Option<String>, Value)> = sqlx::query_as(
        "SELECT action, actor_label, details FROM audit_log WHERE action LIKE 'poison.%' OR action = 'ordinary.entry'
          ORDER BY action",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("ordinary.entry".to_string(), Some("ordinary".to_string()), json!({})),
            (
                "poison.nul".to_string(),
                Some("label\u{FFFD}".to_string()),
                json!({"k\u{FFFD}": "v\u{FFFD}"})
            ),
        ]
    );
    app.teardown().await;
}

#[tokio::test]
async fn an_outcome_the_database_refuses_fails_only_its_run_and_answers_its_waiting_caller() {
    let app = TestApp::spawn().await;
    // Stand-in for any refusal the U+FFFD rule does not cover: this database refuses,
    // as it would a NUL (22P05), any run output holding the marker.
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse_marker() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.output::text LIKE '%refuse-me%' THEN
             RAISE EXCEPTION 'unsupported Unicode escape sequence' USING ERRCODE = '22P05';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER test_refuse_marker BEFORE UPDATE ON runs
           FOR EACH ROW EXECUTE FUNCTION test_refuse_marker();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let victim = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"i": "{{ $input.i }}"}}}]}))
        .await;
    let attacker = app.other_company().await;
    let poisoned = deploy(
        &app,
        &attacker.api_key,
        json!({"nodes": [{"id": "c", "type": "code", "params": {"code": "return {text: 'refuse-me'};"}}]}),
    )
    .await;
    let (status, hook) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{poisoned}/webhook"),
            &attacker.api_key,
            Some(json!({"wait_seconds": 20})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let hook = format!("{}{}", app.base, hook["path"].as_str().unwrap());

    let attack = async {
        let started = std::time::Instant::now();
        let resp = app.client.post(&hook).json(&json!({})).send().await.unwrap();
        let waited = started.elapsed();
        let mut runs = Vec::new();
        for _ in 0..3 {
            let (status, body) = app
                .post(
                    &format!("/api/v1/flows/{poisoned}/runs"),
                    &attacker.api_key,
                    json!({"input": {}}),
                )
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            runs.push(body["run_id"].as_str().unwrap().to_string());
        }
        (resp.status(), resp.json::<Value>().await.unwrap(), waited, runs)
    };
    let ((status, answer, waited, b_runs), a_runs) = futures_util::join!(attack, many_runs(&app, &victim, 40));

    // The waiting caller hears the failure that was stored, not the output that was refused.
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"]["code"], "run_failed", "{answer}");
    assert!(
        waited < Duration::from_secs(15),
        "answered when stored, not at the wait's end: {waited:?}"
    );
    assert_all_succeed(&app, &a_runs).await;
    for id in b_runs
        .iter()
        .chain([answer["error"]["details"]["run_id"].as_str().unwrap().to_string()].iter())
    {
        let run = app.wait_run_as(&attacker.api_key, id).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["attempt"], 1, "{run}");
        assert_eq!(run["output"], Value::Null, "{run}");
        assert_eq!(
            run["error"],
            json!({"code": "output_unstorable",
                   "message": "the database refused to store this run's output (SQLSTATE 22P05); the run failed instead"}),
            "{run}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_run_request_the_database_refuses_fails_alone_in_its_batch() {
    let app = TestApp::spawn().await;
    // Stand-in for any refusal ingress does not catch: this database refuses, as it
    // would a NUL (22P05), a run whose input holds the marker.
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse_marker() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.input::text LIKE '%refuse-me%' THEN
             RAISE EXCEPTION 'unsupported Unicode escape sequence' USING ERRCODE = '22P05';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER test_refuse_marker BEFORE INSERT ON runs
           FOR EACH ROW EXECUTE FUNCTION test_refuse_marker();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let victim = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"i": "{{ $input.i }}"}}}]}))
        .await;
    let attacker = app.other_company().await;
    let b_flow = deploy(
        &app,
        &attacker.api_key,
        json!({"nodes": [{"id": "a", "type": "merge"}]}),
    )
    .await;
    let path = format!("/api/v1/flows/{b_flow}/runs");
    let poison = join_all((0..5).map(|_| app.post(&path, &attacker.api_key, json!({"input": {"x": "refuse-me"}}))));
    let (refused, a_runs) = futures_util::join!(poison, many_runs(&app, &victim, 60));
    // The harm is checked first: company A's runs, committed beside B's refused rows.
    assert_all_succeed(&app, &a_runs).await;
    for (status, body) in &refused {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "invalid_text", "{body}");
    }
    app.teardown().await;
}
