//! The MCP endpoint (`POST /mcp`), spoken as real clients do over HTTP:
//! the stateless 2026-07-28 revision and the 2025-06-18 / 2025-11-25
//! handshake on one endpoint; flows opted in as tools
//! (`/api/v1/flows/{id}/mcp`); keys with the `mcp` scope; tenancy.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use floq_tests::{Options, TestApp, assert_error};

const MODERN: &str = "2026-07-28";
const ALLOWED_ORIGIN: &str = "https://app.example";

async fn spawn() -> TestApp {
    TestApp::spawn_configured(Options::default(), |c| {
        c.mcp_call_timeout = Duration::from_secs(3);
        c.mcp_page_size = 2;
        c.cors_origins = vec![ALLOWED_ORIGIN.into()];
    })
    .await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// POSTs `body` (as given, so malformed JSON goes out as it is) to `/mcp`.
async fn post_raw(app: &TestApp, key: Option<&str>, headers: &[(&str, &str)], body: String) -> Answer {
    let mut req = app
        .client
        .post(format!("{}/mcp", app.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    Answer { status, headers, body }
}

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": MODERN,
           "io.modelcontextprotocol/clientCapabilities": {},
           "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"}})
}

/// A 2026-07-28 request: `_meta` in the body, the headers mirroring it.
async fn modern(app: &TestApp, key: &str, id: i64, method: &str, mut params: Value) -> Answer {
    params["_meta"] = meta();
    let name = params["name"].as_str().map(str::to_string);
    let mut headers = vec![("mcp-protocol-version", MODERN), ("mcp-method", method)];
    if let Some(name) = name.as_deref() {
        headers.push(("mcp-name", name));
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    post_raw(app, Some(key), &headers, body.to_string()).await
}

/// A request of a handshake revision (after `initialize` negotiated `version`).
async fn legacy(app: &TestApp, key: &str, version: &str, id: i64, method: &str, params: Value) -> Answer {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    post_raw(app, Some(key), &[("mcp-protocol-version", version)], body.to_string()).await
}

async fn mcp_key(app: &TestApp, key: &str) -> String {
    let (status, created) = app
        .post("/api/v1/api-keys", key, json!({"name": "agent", "scopes": ["mcp"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["token"].as_str().unwrap().to_string()
}

async fn opt_in(app: &TestApp, key: &str, flow: &str, tool: &str, schema: Value) {
    let (status, body) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{flow}/mcp"),
            key,
            Some(json!({"tool_name": tool, "description": format!("the {tool} tool"), "input_schema": schema})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn city_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
}

/// Three tools: one that answers, one that fails, one slower than the deadline.
async fn tools(app: &TestApp) -> (String, String, String) {
    let admin = &app.admin.api_key;
    let weather = app
        .deployed_flow(json!({"nodes": [
            {"id": "w", "type": "set", "params": {"values": {"city": "{{ $input.city }}", "sky": "clear"}}}]}))
        .await;
    let broken = app
        .deployed_flow(json!({"nodes": [
            {"id": "boom", "type": "code", "params": {"code": "throw new Error('no forecast today');"}}]}))
        .await;
    let slow = app
        .deployed_flow(json!({"nodes": [{"id": "nap", "type": "delay", "params": {"ms": 4500}}]}))
        .await;
    opt_in(app, admin, &weather, "weather", city_schema()).await;
    opt_in(app, admin, &broken, "broken", json!({"type": "object"})).await;
    opt_in(app, admin, &slow, "slow", json!({"type": "object"})).await;
    (weather, broken, slow)
}

/// The `mcp.tool_call` audit entries, once the batched writer has `n` of them.
async fn tool_calls(app: &TestApp, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (_, audit) = app
            .get("/api/v1/audit?limit=200&action=mcp.tool_call", &app.admin.api_key)
            .await;
        let entries = audit["items"].as_array().cloned().unwrap_or_default();
        if entries.len() >= n {
            assert_eq!(entries.len(), n, "{audit}");
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} mcp.tool_call entries");
}

fn names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_stateless_client_discovers_lists_and_calls_flows_as_tools() {
    let app = spawn().await;
    let key = mcp_key(&app, &app.admin.api_key).await;
    let (weather, _, _) = tools(&app).await;

    let discover = modern(&app, &key, 1, "server/discover", json!({})).await;
    assert_eq!(discover.status, StatusCode::OK, "{}", discover.body);
    let result = &discover.body["result"];
    assert_eq!(discover.body["id"], 1);
    assert_eq!(result["supportedVersions"], json!([MODERN, "2025-11-25", "2025-06-18"]));
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["capabilities"]["tools"], json!({"listChanged": false}));
    assert_eq!(result["cacheScope"], "public");
    assert_eq!(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "floq");
    assert!(discover.headers.get("mcp-session-id").is_none(), "no session");

    // Pages of two (FLOQ_MCP_PAGE_SIZE), by name, cacheable for this caller only.
    let first = modern(&app, &key, 2, "tools/list", json!({})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(names(&first.body), ["broken", "slow"]);
    assert_eq!(first.body["result"]["resultType"], "complete");
    assert_eq!(first.body["result"]["cacheScope"], "private");
    assert!(first.body["result"]["ttlMs"].as_u64().is_some());
    let cursor = first.body["result"]["nextCursor"].as_str().unwrap().to_string();
    let second = modern(&app, &key, 3, "tools/list", json!({"cursor": cursor})).await;
    assert_eq!(names(&second.body), ["weather"]);
    assert!(second.body["result"].get("nextCursor").is_none());
    let tool = &second.body["result"]["tools"][0];
    assert_eq!(tool["inputSchema"], city_schema());
    assert_eq!(tool["description"], "the weather tool");

    // A call that succeeds answers the run's output, and names the run.
    let ok = modern(
        &app,
        &key,
        4,
        "tools/call",
        json!({"name": "weather", "arguments": {"city": "Oslo"}}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let result = &ok.body["result"];
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["structuredContent"], json!({"city": "Oslo", "sky": "clear"}));
    assert_eq!(result["content"][0]["type"], "text");
    let text: Value = serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, result["structuredContent"]);
    let run_id = result["_meta"]["dev.floq/runId"].as_str().unwrap().to_string();
    assert_eq!(result["_meta"]["dev.floq/runStatus"], "succeeded");
    let run = app.wait_run(&run_id).await;
    assert_eq!(
        (run["trigger"].as_str(), run["flow_id"].as_str()),
        (Some("mcp"), Some(weather.as_str()))
    );
    assert_eq!(run["input"], json!({"city": "Oslo"}));

    // A call whose run fails is a tool error the model can read, not a protocol error.
    let failed = modern(&app, &key, 5, "tools/call", json!({"name": "broken"})).await;
    assert_eq!(failed.status, StatusCode::OK, "{}", failed.body);
    let result = &failed.body["result"];
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(result["structuredContent"]["status"], "failed");
    assert_eq!(result["structuredContent"]["error"]["node"], "boom");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("failed at node `boom`"), "{text}");
    assert!(result["_meta"]["dev.floq/runId"].is_string());

    // A run past the deadline (3 s) answers its id; it carries on and finishes.
    let started = std::time::Instant::now();
    let slow = modern(&app, &key, 6, "tools/call", json!({"name": "slow", "arguments": {}})).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered after the deadline"
    );
    let result = &slow.body["result"];
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["_meta"]["dev.floq/runStatus"], "pending");
    let slow_run = result["structuredContent"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(result["_meta"]["dev.floq/runId"], slow_run.as_str());
    assert!(result["content"][0]["text"].as_str().unwrap().contains(&slow_run));
    assert_eq!(app.wait_run(&slow_run).await["status"], "succeeded");

    // Arguments are checked against the tool's schema, naming the field.
    let bad = modern(
        &app,
        &key,
        7,
        "tools/call",
        json!({"name": "weather", "arguments": {"town": "Oslo"}}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::OK);
    assert_eq!(bad.body["error"]["code"], -32602, "{}", bad.body);
    let fields: Vec<&str> = bad.body["error"]["data"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["arguments.city"]);
    // Text a run's input cannot hold is the arguments' fault too (one more invalid_arguments call).
    let nul = modern(
        &app,
        &key,
        9,
        "tools/call",
        json!({"name": "weather", "arguments": {"city": "a\u{0}b"}}),
    )
    .await;
    assert_eq!(nul.body["error"]["code"], -32602, "{}", nul.body);
    assert_eq!(nul.body["error"]["data"]["errors"][0]["field"], "arguments");
    let unknown = modern(&app, &key, 8, "tools/call", json!({"name": "nope"})).await;
    assert_eq!(unknown.body["error"]["code"], -32602);
    assert_eq!(unknown.body["error"]["data"]["errors"][0]["field"], "name");

    // Every call is audited with its tool, run and outcome.
    // Every call is audited with its tool, run and outcome; refused ones too.
    let entries = tool_calls(&app, 6).await;
    let of = |outcome: &str| {
        entries
            .iter()
            .find(|e| e["details"]["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} entry: {entries:?}"))
            .clone()
    };
    let succeeded = of("succeeded");
    assert_eq!(succeeded["details"]["tool"], "weather");
    assert_eq!(succeeded["details"]["run_id"], run_id.as_str());
    assert_eq!(succeeded["outcome"], "success");
    assert_eq!(
        (
            of("failed")["details"]["tool"].as_str(),
            of("failed")["outcome"].as_str()
        ),
        (Some("broken"), Some("failure"))
    );
    assert_eq!(of("pending")["details"]["tool"], "slow");
    assert_eq!(of("invalid_arguments")["details"]["run_id"], Value::Null);
    assert_eq!(
        (
            of("refused")["details"]["tool"].as_str(),
            of("refused")["outcome"].as_str()
        ),
        (Some("nope"), Some("denied"))
    );

    let metrics = app
        .client
        .get(format!("http://{}/metrics", app.api_metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"floq_mcp_requests_total{method="tools/call",outcome="ok"}"#),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"floq_mcp_tool_calls_total{outcome="succeeded"} "#) && !l.ends_with(" 0")),
        "{metrics}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn modern_requests_must_agree_with_their_headers_and_name_a_known_revision() {
    let app = TestApp::spawn().await;
    let key = mcp_key(&app, &app.admin.api_key).await;
    let body = |method: &str, name: Option<&str>| {
        let mut params = json!({"_meta": meta()});
        if let Some(n) = name {
            params["name"] = n.into();
        }
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
    };
    for (headers, what) in [
        (vec![("mcp-protocol-version", MODERN)], "no Mcp-Method"),
        (
            vec![("mcp-protocol-version", MODERN), ("mcp-method", "tools/call")],
            "another method",
        ),
        (vec![("mcp-method", "tools/list")], "no MCP-Protocol-Version"),
    ] {
        let a = post_raw(&app, Some(&key), &headers, body("tools/list", None)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {}", a.body);
        assert_eq!(a.body["error"]["code"], -32020, "{what}");
        assert_eq!(a.body["id"], 1);
    }
    fn call(name: &str) -> Vec<(&'static str, &str)> {
        vec![
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", name),
        ]
    }
    let a = post_raw(&app, Some(&key), &call("other"), body("tools/call", Some("weather"))).await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!(-32020))
    );
    // A name that matches (base64 sentinel decoded) passes the headers; the tool is just unknown.
    let a = post_raw(
        &app,
        Some(&key),
        &call("=?base64?d2VhdGhlcg==?="),
        body("tools/call", Some("weather")),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (StatusCode::OK, &json!(-32602)),
        "{}",
        a.body
    );

    // An unknown revision names the ones floq speaks.
    let future = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2099-01-01", "io.modelcontextprotocol/clientCapabilities": {}}}});
    let a = post_raw(
        &app,
        Some(&key),
        &[("mcp-protocol-version", "2099-01-01"), ("mcp-method", "tools/list")],
        future.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.body["error"]["data"],
        json!({"supported": [MODERN, "2025-11-25", "2025-06-18"], "requested": "2099-01-01"})
    );
    assert_eq!(a.body["error"]["code"], -32022);
    // Capabilities are declared on every request.
    let bare = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": MODERN}}});
    let a = post_raw(
        &app,
        Some(&key),
        &[("mcp-protocol-version", MODERN), ("mcp-method", "tools/list")],
        bare.to_string(),
    )
    .await;
    assert_eq!(a.body["error"]["code"], -32602, "{}", a.body);
    // An unknown method is a 404 carrying -32601; so is `ping`, which this revision dropped.
    for method in ["resources/list", "ping"] {
        let a = modern(&app, &key, 4, method, json!({})).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(a.body["error"]["code"], -32601, "{method}");
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_handshake_client_negotiates_then_names_its_revision_on_every_request() {
    let app = spawn().await;
    let key = mcp_key(&app, &app.admin.api_key).await;
    tools(&app).await;
    for (asked, answered) in [
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2025-03-26", "2025-11-25"),
    ] {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}});
        let a = post_raw(&app, Some(&key), &[], init.to_string()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let result = &a.body["result"];
        assert_eq!(result["protocolVersion"], answered, "{asked}");
        assert_eq!(result["capabilities"]["tools"], json!({"listChanged": false}));
        assert_eq!(result["serverInfo"]["name"], "floq");
        assert!(result.get("resultType").is_none());
        assert!(a.headers.get("mcp-session-id").is_none(), "floq keeps no session");
    }
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let a = post_raw(&app, Some(&key), &[("mcp-protocol-version", "2025-06-18")], initialized).await;
    assert_eq!((a.status, a.body), (StatusCode::ACCEPTED, Value::Null));

    for version in ["2025-06-18", "2025-11-25"] {
        let ping = legacy(&app, &key, version, 2, "ping", json!({})).await;
        assert_eq!(ping.body["result"], json!({}), "{version}");
        let list = legacy(&app, &key, version, 3, "tools/list", json!({})).await;
        assert_eq!(names(&list.body), ["broken", "slow"], "{version}");
        assert!(list.body["result"].get("resultType").is_none());
        let ok = legacy(
            &app,
            &key,
            version,
            4,
            "tools/call",
            json!({"name": "weather", "arguments": {"city": "Rome"}}),
        )
        .await;
        let result = &ok.body["result"];
        assert_eq!(result["isError"], false, "{version}: {result}");
        assert_eq!(result["structuredContent"], json!({"city": "Rome", "sky": "clear"}));
        assert!(result["_meta"]["dev.floq/runId"].is_string());
        let failed = legacy(&app, &key, version, 5, "tools/call", json!({"name": "broken"})).await;
        assert_eq!(failed.body["result"]["isError"], true, "{version}");
        let slow = legacy(&app, &key, version, 6, "tools/call", json!({"name": "slow"})).await;
        assert_eq!(slow.body["result"]["_meta"]["dev.floq/runStatus"], "pending");
        let unknown = legacy(&app, &key, version, 7, "resources/list", json!({})).await;
        assert_eq!(
            (unknown.status, &unknown.body["error"]["code"]),
            (StatusCode::OK, &json!(-32601))
        );
    }

    // After the handshake every request names its revision; floq remembers none.
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}).to_string();
    let a = post_raw(&app, Some(&key), &[], list.clone()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["error"]["code"], -32022);
    let a = post_raw(&app, Some(&key), &[("mcp-protocol-version", "2024-11-05")], list).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["error"]["data"]["requested"], "2024-11-05");

    // Malformed JSON-RPC, each with its code.
    let v = [("mcp-protocol-version", "2025-06-18")];
    let a = post_raw(&app, Some(&key), &v, "{not json".into()).await;
    assert_eq!(
        (a.status, &a.body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!(-32700))
    );
    assert!(a.body.get("id").is_none());
    for bad in [
        json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]),
        json!({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 1}),
        json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"}),
    ] {
        let a = post_raw(&app, Some(&key), &v, bad.to_string()).await;
        assert_eq!(
            (a.status, &a.body["error"]["code"]),
            (StatusCode::BAD_REQUEST, &json!(-32600)),
            "{bad}"
        );
    }
    let a = legacy(&app, &key, "2025-06-18", 10, "tools/call", json!({"name": 7})).await;
    assert_eq!(a.body["error"]["code"], -32602);
    let a = legacy(
        &app,
        &key,
        "2025-06-18",
        11,
        "tools/call",
        json!({"name": "weather", "arguments": [1]}),
    )
    .await;
    assert_eq!(a.body["error"]["data"]["errors"][0]["field"], "arguments");
    let a = legacy(&app, &key, "2025-06-18", 12, "tools/list", json!({"cursor": "***"})).await;
    assert_eq!(a.body["error"]["data"]["errors"][0]["field"], "cursor");
    let a = legacy(&app, &key, "2025-06-18", 13, "initialize", json!({})).await;
    assert_eq!(a.body["error"]["code"], -32602);

    // A `respond` node shapes what the tool answers; before 2026-07-28 structured content is an object.
    let shaped = app
        .deployed_flow(json!({"nodes": [
            {"id": "r", "type": "respond", "params": {"status": 200, "body": "hello {{ $input.who }}"}}]}))
        .await;
    opt_in(&app, &app.admin.api_key, &shaped, "greet", json!({"type": "object"})).await;
    let old = legacy(
        &app,
        &key,
        "2025-06-18",
        14,
        "tools/call",
        json!({"name": "greet", "arguments": {"who": "Ada"}}),
    )
    .await;
    let result = &old.body["result"];
    assert_eq!(result["structuredContent"], json!({"result": "hello Ada"}), "{result}");
    assert_eq!(result["content"][0]["text"], "hello Ada");
    let new = modern(
        &app,
        &key,
        15,
        "tools/call",
        json!({"name": "greet", "arguments": {"who": "Ada"}}),
    )
    .await;
    assert_eq!(new.body["result"]["structuredContent"], "hello Ada", "{}", new.body);
    app.teardown().await;
}

#[tokio::test]
async fn mcp_requests_are_rate_limited_per_key() {
    let app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: false,
        },
        |c| {
            c.mcp_rate_per_key = 1;
            c.mcp_burst_per_key = 2;
        },
    )
    .await;
    let key = mcp_key(&app, &app.admin.api_key).await;
    let other = mcp_key(&app, &app.admin.api_key).await;
    for _ in 0..2 {
        let a = modern(&app, &key, 1, "server/discover", json!({})).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let limited = modern(&app, &key, 1, "server/discover", json!({})).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    let fresh = modern(&app, &other, 1, "server/discover", json!({})).await;
    assert_eq!(fresh.status, StatusCode::OK, "another key has its own bucket");
    app.teardown().await;
}

#[tokio::test]
async fn only_mcp_keys_reach_the_endpoint_and_only_tools_the_caller_may_run_show() {
    let app = spawn().await;
    let (weather, _, _) = tools(&app).await;
    let key = mcp_key(&app, &app.admin.api_key).await;

    let nobody = post_raw(&app, None, &[], "{}".into()).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    assert!(
        nobody.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(nobody.body["error"]["code"], "unauthorized");
    let forged = post_raw(&app, Some("not-a-key"), &[], "{}".into()).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    // An `api` key is not an `mcp` key, and an `mcp` key reaches nothing else.
    let api_only = post_raw(&app, Some(&app.admin.api_key), &[], "{}".into()).await;
    assert_eq!(api_only.status, StatusCode::FORBIDDEN);
    assert_error(
        &api_only.body,
        "scope_missing",
        "this API key does not carry the `mcp` scope",
        Value::Null,
    );
    assert!(
        api_only.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    for (method, path) in [
        (Method::GET, "/api/v1/flows"),
        (Method::GET, &*format!("/api/v1/flows/{weather}/mcp")),
    ] {
        let (status, body) = app.request(method, path, &key, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "scope_missing");
    }
    // Browsers' requests must come from an allowed Origin (DNS rebinding); others send none.
    let list = |id: i64| json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}).to_string();
    let v = ("mcp-protocol-version", "2025-06-18");
    let evil = post_raw(&app, Some(&key), &[v, ("origin", "https://evil.example")], list(1)).await;
    assert_eq!(evil.status, StatusCode::FORBIDDEN);
    assert_eq!(evil.body["error"]["code"], "origin_not_allowed");
    let good = post_raw(&app, Some(&key), &[v, ("origin", ALLOWED_ORIGIN)], list(2)).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.body);
    let preflight = app
        .client
        .request(Method::OPTIONS, format!("{}/mcp", app.base))
        .header("origin", ALLOWED_ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,mcp-protocol-version,mcp-method,mcp-name",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        allowed.contains("mcp-method") && allowed.contains("mcp-name"),
        "{allowed}"
    );
    let get = app
        .client
        .get(format!("{}/mcp", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Another company's tools are neither listed nor callable, even under the same name.
    let globex = app.other_company().await;
    let theirs = app
        .deployed_flow_as(&globex.api_key, json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    opt_in(
        &app,
        &globex.api_key,
        &theirs,
        "globex_secret",
        json!({"type": "object"}),
    )
    .await;
    opt_in(
        &app,
        &globex.api_key,
        &app.deployed_flow_as(&globex.api_key, json!({"nodes": [{"id": "a", "type": "merge"}]}))
            .await,
        "weather",
        json!({"type": "object"}),
    )
    .await;
    let globex_key = mcp_key(&app, &globex.api_key).await;
    let mut all = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = modern(&app, &key, 3, "tools/list", json!({"cursor": cursor})).await;
        all.extend(names(&page.body));
        cursor = page.body["result"]["nextCursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(all, ["broken", "slow", "weather"]);
    let call = modern(&app, &key, 4, "tools/call", json!({"name": "globex_secret"})).await;
    assert_eq!(call.body["error"]["code"], -32602, "{}", call.body);
    let (_, runs) = app.get("/api/v1/runs", &globex.api_key).await;
    assert_eq!(runs["items"], json!([]), "no run started in the other company");
    let theirs_only = modern(&app, &globex_key, 5, "tools/list", json!({})).await;
    assert_eq!(names(&theirs_only.body), ["globex_secret", "weather"]);
    let called = modern(&app, &globex_key, 6, "tools/call", json!({"name": "weather"})).await;
    let run = called.body["result"]["_meta"]["dev.floq/runId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = app.get(&format!("/api/v1/runs/{run}"), &app.admin.api_key).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "their `weather` ran their flow");

    // A member sees the tools of flows they may execute: a role that executes, and a grant.
    let viewer = app.member(&["viewer"]).await;
    app.grant("user", viewer.user_id, "flow", &weather, "execute").await;
    let viewer_key = mcp_key(&app, &viewer.api_key).await;
    let none = modern(&app, &viewer_key, 7, "tools/list", json!({})).await;
    assert_eq!(names(&none.body), Vec::<String>::new(), "a viewer may not execute");
    let refused = modern(
        &app,
        &viewer_key,
        8,
        "tools/call",
        json!({"name": "weather", "arguments": {"city": "x"}}),
    )
    .await;
    assert_eq!(refused.body["error"]["code"], -32602);
    let executor = app.member(&["flow_executor"]).await;
    let executor_key = mcp_key(&app, &executor.api_key).await;
    let ungranted = modern(&app, &executor_key, 9, "tools/list", json!({})).await;
    assert_eq!(names(&ungranted.body), Vec::<String>::new());
    app.grant("user", executor.user_id, "flow", &weather, "execute").await;
    let granted = modern(&app, &executor_key, 10, "tools/list", json!({})).await;
    assert_eq!(names(&granted.body), ["weather"]);
    let ran = modern(
        &app,
        &executor_key,
        11,
        "tools/call",
        json!({"name": "weather", "arguments": {"city": "Lima"}}),
    )
    .await;
    assert_eq!(ran.body["result"]["structuredContent"]["city"], "Lima", "{}", ran.body);
    app.teardown().await;
}

#[tokio::test]
async fn editors_opt_flows_in_as_tools_within_their_company_and_role() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let admin = &app.admin.api_key;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let path = format!("/api/v1/flows/{flow}/mcp");
    let (status, off) = app.get(&path, admin).await;
    assert_eq!((status, off), (StatusCode::OK, json!({"enabled": false})));

    let (status, body) = app
        .request(
            Method::PUT,
            &path,
            admin,
            Some(json!({"tool_name": "bad name", "description": "d", "input_schema": {"type": "string"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["tool_name", "input_schema"], "{body}");
    let (status, body) = app
        .request(
            Method::PUT,
            &path,
            admin,
            Some(json!({"tool_name": "t", "description": "d", "input_schema": {"type": "object", "properties": {"a": {"type": "nope"}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"][0]["field"], "input_schema");

    opt_in(&app, admin, &flow, "lookup", city_schema()).await;
    let (status, shown) = app.get(&path, admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["tool"]["tool_name"], "lookup");
    assert_eq!(shown["tool"]["input_schema"], city_schema());
    let (status, changed) = app
        .request(
            Method::PUT,
            &path,
            admin,
            Some(json!({"tool_name": "lookup2", "description": "better", "input_schema": {"type": "object"}})),
        )
        .await;
    assert_eq!((status, &changed["description"]), (StatusCode::OK, &json!("better")));
    let other = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let (status, body) = app
        .request(
            Method::PUT,
            &format!("/api/v1/flows/{other}/mcp"),
            admin,
            Some(json!({"tool_name": "lookup2", "description": "d", "input_schema": {"type": "object"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"]["details"],
        json!([{"field": "tool_name", "message": "already taken"}])
    );

    // Another company's flow is not found; a role without flow:edit is refused.
    let globex = app.other_company().await;
    let executor = app.member(&["flow_executor"]).await;
    app.grant("user", executor.user_id, "flow", &flow, "edit").await;
    let put = json!({"tool_name": "x", "description": "d", "input_schema": {"type": "object"}});
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (status, _) = app
            .request(method.clone(), &path, &globex.api_key, Some(put.clone()))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} another company");
        let (status, body) = app
            .request(method.clone(), &path, &executor.api_key, Some(put.clone()))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} flow_executor: {body}");
    }

    let (status, _) = app.request(Method::DELETE, &path, admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.request(Method::DELETE, &path, admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Deleting a flow frees its tool's name.
    opt_in(&app, admin, &other, "kept", json!({"type": "object"})).await;
    let (status, _) = app
        .request(Method::DELETE, &format!("/api/v1/flows/{other}"), admin, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    opt_in(&app, admin, &flow, "kept", json!({"type": "object"})).await;
    let (_, audit) = app.get("/api/v1/audit?action=mcp_tool.*", admin).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "mcp_tool.enable",
            "mcp_tool.enable",
            "mcp_tool.disable",
            "mcp_tool.update",
            "mcp_tool.enable"
        ]
    );
    app.teardown().await;
}

#[tokio::test]
async fn any_api_replica_answers_requests_after_a_handshake_made_on_another() {
    let app = spawn().await;
    let key = mcp_key(&app, &app.admin.api_key).await;
    tools(&app).await;
    let (replica, service) = app.start_api_replica().await;
    let at = |base: &str, version: &str, id: i64, method: &str, params: Value| {
        let req = app
            .client
            .post(format!("{base}/mcp"))
            .bearer_auth(&key)
            .header("mcp-protocol-version", version)
            .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    // Negotiated on one replica, used on the other: there is no session to find.
    let init = at(
        &app.base,
        "2025-06-18",
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18"}),
    )
    .await;
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    let list = at(&replica, "2025-06-18", 2, "tools/list", json!({})).await;
    let cursor = list["result"]["nextCursor"].clone();
    let rest = at(&app.base, "2025-06-18", 3, "tools/list", json!({"cursor": cursor})).await;
    assert_eq!(names(&rest), ["weather"]);
    // A call's reply reaches the replica that waits for it.
    let call = at(
        &replica,
        "2025-06-18",
        4,
        "tools/call",
        json!({"name": "weather", "arguments": {"city": "Kyiv"}}),
    )
    .await;
    assert_eq!(call["result"]["structuredContent"]["city"], "Kyiv", "{call}");
    service.stop().await;
    app.teardown().await;
}
