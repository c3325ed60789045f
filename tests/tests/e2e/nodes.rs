//! Templates with expressions, the node library end to end, per-node retry
//! and timeout, scripts contained by the sandbox, and the node-type catalog.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::get;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::runs::serve;
use floq_tests::TestApp;
use floq_tests::smtp_sink::SmtpSink;

fn output(run: &Value) -> &Value {
    assert_eq!(run["status"], "succeeded", "{run}");
    &run["output"]
}

fn failure(run: &Value) -> (String, String) {
    assert_eq!(run["status"], "failed", "{run}");
    let step = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "failed")
        .unwrap();
    (
        step["error"]["code"].as_str().unwrap().to_string(),
        step["error"]["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn templates_keep_types_alone_and_render_strings_in_text() {
    let app = TestApp::spawn().await;
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "s", "type": "set", "params": {"values": {
                "path": "{{ $input.items[1] }}",
                "sum": "{{ $input.items.reduce((a, b) => a + b, 0) }}",
                "obj": "{{ ({n: $input.items.length, up: $input.name.toUpperCase()}) }}",
                "text": "total={{ $input.items.reduce((a, b) => a + b, 0) }} for {{ $input.name }}",
                "run": "{{ $run.trigger }}",
                "hash": "{{ $h.sha256('abc') }}"
            }}}]}),
            json!({"items": [1, 2, 3], "name": "ada"}),
        )
        .await;
    let out = output(&run);
    assert_eq!(out["path"], 2);
    assert_eq!(out["sum"], 6);
    assert_eq!(out["obj"], json!({"n": 3, "up": "ADA"}));
    assert_eq!(out["text"], "total=6 for ada");
    assert_eq!(out["run"], "api");
    assert_eq!(
        out["hash"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    app.teardown().await;
}

#[tokio::test]
async fn syntax_errors_are_refused_at_save_time_naming_node_and_param() {
    let app = TestApp::spawn().await;
    for (definition, field) in [
        (
            json!({"nodes": [{"id": "c", "type": "code", "params": {"code": "return (1 +;"}}]}),
            "definition.nodes[0].params.code",
        ),
        (
            json!({"nodes": [{"id": "s", "type": "set", "params": {"values": {"x": "{{ $input.a + }}"}}}]}),
            "definition.nodes[0].params",
        ),
        (
            json!({"nodes": [{"id": "l", "type": "loop", "params": {"items": [], "flow": {"nodes": [
                {"id": "inner", "type": "code", "params": {"code": "return {"}}
            ]}}}]}),
            "definition.nodes[0].params.flow.nodes[0].params.code",
        ),
    ] {
        let (status, body) = app
            .post(
                "/api/v1/flows",
                &app.admin.api_key,
                json!({"name": "bad", "definition": definition}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let details = body["error"]["details"].as_array().unwrap();
        assert!(details.iter().any(|d| d["field"] == field), "{field}: {body}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_code_node_returns_json_and_runaway_code_fails_only_its_run() {
    let app = TestApp::spawn().await;
    let run = app
        .run_flow(
            json!({"nodes": [
                {"id": "pre", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}},
                {"id": "c", "type": "code", "params": {"code": "let out = [];\nfor (let i = 0; i < $node.pre.output.n; i++) out.push(i * i);\nreturn {squares: out, run: $run.id};"}}
            ], "edges": [{"from": "pre", "to": "c"}]}),
            json!({"n": 4}),
        )
        .await;
    assert_eq!(output(&run)["squares"], json!([0, 1, 4, 9]));
    assert_eq!(output(&run)["run"], run["id"]);

    let spin = app
        .run_flow(
            json!({"nodes": [{"id": "spin", "type": "code", "params": {"code": "while (true) {}", "timeout_ms": 200}}]}),
            json!({}),
        )
        .await;
    assert_eq!(failure(&spin).0, "sandbox_timeout");
    let bomb = app
        .run_flow(
            json!({"nodes": [{"id": "bomb", "type": "code", "params": {"code": "let s = 'x'; while (true) s += s; return s;"}}]}),
            json!({}),
        )
        .await;
    assert_eq!(failure(&bomb).0, "sandbox_memory");
    let escape = app
        .run_flow(
            json!({"nodes": [{"id": "esc", "type": "code", "params": {"code": "return (function(){}).constructor('return 1')();"}}]}),
            json!({}),
        )
        .await;
    assert_eq!(failure(&escape).0, "sandbox_error");
    let thrown = app
        .run_flow(
            json!({"nodes": [{"id": "t", "type": "code", "params": {"code": "const a = 1;\nthrow new Error('boom');"}}]}),
            json!({}),
        )
        .await;
    let (code, message) = failure(&thrown);
    assert_eq!(code, "sandbox_error");
    assert!(message.contains("boom") && message.contains("line 2"), "{message}");

    // The worker carries on: the next run is served normally.
    let after = app
        .run_flow(
            json!({"nodes": [{"id": "ok", "type": "code", "params": {"code": "return 41 + 1;"}}]}),
            json!({}),
        )
        .await;
    assert_eq!(output(&after), &json!(42));
    app.teardown().await;
}

#[tokio::test]
async fn loops_run_their_sub_flow_per_item_in_order_within_their_bounds() {
    let app = TestApp::spawn().await;
    let body = json!({"nodes": [{"id": "double", "type": "set", "params": {"values": {"n": "{{ $input * 2 }}"}}}]});
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "each", "type": "loop", "params": {
                "items": "{{ $input.list }}", "flow": body, "concurrency": 3
            }}]}),
            json!({"list": [1, 2, 3, 4, 5]}),
        )
        .await;
    assert_eq!(
        output(&run),
        &json!([{"n": 2}, {"n": 4}, {"n": 6}, {"n": 8}, {"n": 10}])
    );
    let capped = app
        .run_flow(
            json!({"nodes": [{"id": "each", "type": "loop", "params": {"items": "{{ $input.list }}", "flow": body, "max_items": 2}}]}),
            json!({"list": [1, 2, 3]}),
        )
        .await;
    assert_eq!(failure(&capped).0, "loop_too_many_items");
    app.teardown().await;
}

#[tokio::test]
async fn sub_flows_run_another_deployed_flow_of_the_company_only() {
    let app = TestApp::spawn().await;
    let child = app
        .deployed_flow(
            json!({"nodes": [{"id": "greet", "type": "set", "params": {"values": {"hello": "{{ $input.who }}"}}}]}),
        )
        .await;
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "call", "type": "sub_flow", "params": {"flow_id": child, "input": {"who": "{{ $input.name }}"}}}]}),
            json!({"name": "ada"}),
        )
        .await;
    assert_eq!(output(&run), &json!({"hello": "ada"}));

    // Another company's flow id is not found from here.
    let globex = app.other_company().await;
    let (_, theirs) = app
        .post(
            "/api/v1/flows",
            &globex.api_key,
            json!({"name": "theirs", "definition": {"nodes": [{"id": "a", "type": "merge"}]}}),
        )
        .await;
    let theirs = theirs["id"].as_str().unwrap();
    app.post(&format!("/api/v1/flows/{theirs}/deploy"), &globex.api_key, json!({}))
        .await;
    let (status, body) = app
        .post(
            "/api/v1/flows",
            &app.admin.api_key,
            json!({"name": "reach", "definition": {"nodes": [{"id": "call", "type": "sub_flow", "params": {"flow_id": theirs}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"][0]["field"], "definition.nodes[0].params.flow_id",
        "{body}"
    );
    assert_eq!(
        body["error"]["details"][0]["message"], "no flow you may run has this id",
        "{body}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn http_requests_follow_bounded_redirects_and_decode_by_mode() {
    let app = TestApp::spawn().await;
    let base = serve(
        axum::Router::new()
            .route(
                "/hop/{n}",
                get(|axum::extract::Path(n): axum::extract::Path<u32>| async move {
                    if n == 0 {
                        (
                            StatusCode::OK,
                            [("content-type", "application/json")],
                            "{\"arrived\":true}",
                        )
                            .into_response()
                    } else {
                        (
                            StatusCode::FOUND,
                            [("location", format!("/hop/{}", n - 1))],
                            String::new(),
                        )
                            .into_response()
                    }
                }),
            )
            .route(
                "/bytes",
                get(|| async { ([("content-type", "application/octet-stream")], vec![0u8, 159, 146, 150]) }),
            )
            .route(
                "/file",
                get(|| async { ([("location", "file:///etc/passwd")], StatusCode::FOUND) }),
            ),
    )
    .await;
    let call = |url: String, extra: Value| {
        let mut params = json!({"method": "GET", "url": url});
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"nodes": [{"id": "h", "type": "http_request", "params": params}]})
    };
    let run = app.run_flow(call(format!("{base}/hop/3"), json!({})), json!({})).await;
    assert_eq!(output(&run)["body"], json!({"arrived": true}));
    let run = app
        .run_flow(call(format!("{base}/hop/3"), json!({"max_redirects": 2})), json!({}))
        .await;
    assert_eq!(failure(&run).0, "http_redirect");
    let run = app.run_flow(call(format!("{base}/file"), json!({})), json!({})).await;
    assert_eq!(failure(&run).0, "invalid_params", "a redirect to file:// is refused");
    let run = app.run_flow(call(format!("{base}/bytes"), json!({})), json!({})).await;
    assert_eq!(output(&run)["body"], json!({"base64": "AJ+Slg=="}));
    let run = app
        .run_flow(call("ftp://127.0.0.1/x".into(), json!({})), json!({}))
        .await;
    assert_eq!(failure(&run).0, "invalid_params");
    app.teardown().await;
}

#[tokio::test]
async fn nodes_retry_by_policy_and_give_up_at_their_timeout() {
    let app = TestApp::spawn().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let base = serve(axum::Router::new().route(
        "/slow-once",
        get(move || {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                "ok"
            }
        }),
    ))
    .await;
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "h", "type": "http_request", "timeout_ms": 300,
                "retry": {"attempts": 3, "backoff_ms": 10, "on": ["node_timeout"]},
                "params": {"method": "GET", "url": format!("{base}/slow-once")}}]}),
            json!({}),
        )
        .await;
    assert_eq!(output(&run)["body"], "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let run = app
        .run_flow(
            json!({"nodes": [{"id": "d", "type": "delay", "timeout_ms": 100, "params": {"ms": 5000}}]}),
            json!({}),
        )
        .await;
    assert_eq!(failure(&run).0, "node_timeout");
    app.teardown().await;
}

/// A credential naming a database reached through a forwarder: to the egress
/// policy it is a customer's server on another port, not the platform's.
async fn tenant_database(app: &TestApp) -> (floq_tests::forward::Forward, String) {
    // The tests' own role and password (trust auth ignores the password).
    let mut uri = url::Url::parse(&floq_tests::admin_database_url()).unwrap();
    let server = format!("{}:{}", uri.host_str().unwrap(), uri.port().unwrap_or(5432));
    let fwd = floq_tests::forward::forward(server.parse().unwrap()).await;
    if uri.password().is_none() {
        uri.set_password(Some("trust-ignores-this")).unwrap();
    }
    uri.set_host(Some("127.0.0.1")).unwrap();
    uri.set_port(Some(fwd.port)).unwrap();
    uri.set_path(&app.db_name);
    let uri = uri.to_string();
    let id = app
        .credential(&app.admin.api_key, "postgres", json!({"uri": uri}))
        .await;
    (fwd, id)
}

#[tokio::test]
async fn postgres_runs_parameterized_sql_with_a_row_cap() {
    let app = TestApp::spawn().await;
    let (_db, cred) = tenant_database(&app).await;
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "q", "type": "postgres", "params": {
                "credential_id": cred,
                "query": "SELECT n, $1::text AS label, n % 2 = 0 AS even FROM generate_series(1, $2::int) n",
                "params": ["row", "{{ $input.count }}"],
                "max_rows": 3
            }}]}),
            json!({"count": 5}),
        )
        .await;
    let out = output(&run);
    assert_eq!(out["row_count"], 3);
    assert_eq!(out["truncated"], true);
    assert_eq!(out["rows"][1], json!({"n": 2, "label": "row", "even": true}));
    let injected = app
        .run_flow(
            json!({"nodes": [{"id": "q", "type": "postgres", "params": {
                "credential_id": cred, "query": "SELECT $1::text AS v", "params": ["'; DROP TABLE runs; --"]
            }}]}),
            json!({}),
        )
        .await;
    assert_eq!(output(&injected)["rows"][0]["v"], "'; DROP TABLE runs; --");
    let slow = app
        .run_flow(
            json!({"nodes": [{"id": "q", "type": "postgres", "params": {
                "credential_id": cred, "query": "SELECT pg_sleep(5)", "timeout_ms": 200
            }}]}),
            json!({}),
        )
        .await;
    assert_eq!(failure(&slow).0, "postgres_timeout");
    app.teardown().await;
}

#[tokio::test]
async fn smtp_send_delivers_to_the_server_it_names() {
    let app = TestApp::spawn().await;
    let sink = SmtpSink::start().await;
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "mail", "type": "smtp_send", "params": {
                "smtp_uri": format!("smtp://127.0.0.1:{}", sink.port),
                "from": "floq@acme.test",
                "to": ["{{ $input.to }}"],
                "subject": "Hello {{ $input.name }}",
                "text": "Your run finished."
            }}]}),
            json!({"to": "ada@acme.test", "name": "Ada"}),
        )
        .await;
    assert_eq!(output(&run)["accepted"], json!(["ada@acme.test"]));
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].to, vec!["ada@acme.test"]);
    assert!(got[0].data.contains("Subject: Hello Ada"), "{}", got[0].data);
    assert!(got[0].data.contains("Your run finished."));
    app.teardown().await;
}

#[tokio::test]
async fn every_node_type_runs_in_one_flow() {
    let app = TestApp::spawn().await;
    let base = serve(axum::Router::new().route("/ping", get(|| async { axum::Json(json!({"pong": true})) }))).await;
    let run = app
        .run_flow(
            json!({"nodes": [
                {"id": "start", "type": "set", "params": {"values": {"kind": "{{ $input.kind }}", "n": "{{ $input.n }}"}}},
                {"id": "big", "type": "if", "params": {"condition": "{{ $node.start.output.n > 1 }}"}},
                {"id": "route", "type": "switch", "params": {"value": "{{ $node.start.output.kind.toLowerCase() }}", "cases": ["a", "b"]}},
                {"id": "wait", "type": "delay", "params": {"ms": 1}},
                {"id": "ping", "type": "http_request", "params": {"method": "GET", "url": format!("{base}/ping")}},
                {"id": "calc", "type": "code", "params": {"code": "return $node.ping.output.body.pong ? $node.start.output.n * 10 : 0;"}},
                {"id": "each", "type": "loop", "params": {"items": [1, 2], "flow": {"nodes": [{"id": "x", "type": "code", "params": {"code": "return $input + 1;"}}]}}},
                {"id": "join", "type": "merge"},
                {"id": "reply", "type": "respond", "params": {"status": 201, "headers": {"x-kind": "{{ $node.start.output.kind }}"}, "body": {"calc": "{{ $node.calc.output }}", "each": "{{ $node.each.output }}"}}}
            ], "edges": [
                {"from": "start", "to": "big"},
                {"from": "big", "port": "true", "to": "route"},
                {"from": "route", "port": "a", "to": "wait"},
                {"from": "wait", "to": "ping"},
                {"from": "ping", "to": "calc"},
                {"from": "calc", "to": "each"},
                {"from": "each", "to": "join"},
                {"from": "join", "to": "reply"}
            ]}),
            json!({"kind": "A", "n": 2}),
        )
        .await;
    assert_eq!(
        output(&run),
        &json!({"status": 201, "headers": {"x-kind": "A"}, "body": {"calc": 20, "each": [2, 3]}})
    );
    app.teardown().await;
}

#[tokio::test]
async fn the_node_type_catalog_lists_every_type_with_its_schema() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get("/api/v1/node-types", &app.admin.api_key).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    for t in [
        "set",
        "if",
        "switch",
        "merge",
        "delay",
        "code",
        "loop",
        "http_request",
        "sub_flow",
        "postgres",
        "smtp_send",
        "respond",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let http = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "http_request")
        .unwrap();
    assert_eq!(http["params_schema"]["required"], json!(["method", "url"]));
    assert_eq!(
        app.client
            .get(format!("{}/api/v1/node-types", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // The API validates params against the same schemas.
    let (status, body) = app
        .post(
            "/api/v1/flows",
            &app.admin.api_key,
            json!({"name": "x", "definition": {"nodes": [{"id": "d", "type": "delay", "params": {"ms": "soon"}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["field"], "definition.nodes[0].params.ms");
    app.teardown().await;
}
