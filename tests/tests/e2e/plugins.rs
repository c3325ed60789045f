//! Plugins (docs/plugins.md): the shipped ones (`node-policy`, `ip-allow`,
//! the `sign` node type) on a real stack, the hook contract with plugins of
//! the test's own (skip and fail a node, change an output, a deny that
//! errors), and the start-up refusals.

use std::sync::Arc;

use futures_util::future::{BoxFuture, ready};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use floq_shared::config::ConfigError;
use floq_shared::plugin::{
    Access, Available, Before, NodeInfo, NodeOutcome, Plugin, PluginError, PluginFactory, Plugins, Settings, Verdict,
};
use floq_tests::{Options, TestApp, assert_error, enable_plugins, test_config};

fn code_flow() -> Value {
    json!({"nodes": [{"id": "js", "type": "code", "params": {"code": "return 1"}}], "edges": []})
}

fn set_flow() -> Value {
    json!({"nodes": [{"id": "s", "type": "set", "params": {"values": {"a": 1}}}], "edges": []})
}

async fn create(app: &TestApp, key: &str, definition: Value) -> (StatusCode, Value) {
    app.post(
        "/api/v1/flows",
        key,
        json!({"name": "plugged", "definition": definition}),
    )
    .await
}

/// Restarts the API and the worker with `plugins` enabled and `settings`.
async fn enable(app: &mut TestApp, plugins: &str, settings: &[(&str, &str)]) {
    app.restart_api(|c| enable_plugins(c, plugins, settings)).await;
    if let Some(worker) = app.worker.take() {
        worker.stop().await;
    }
    app.start_worker().await;
}

#[tokio::test]
async fn node_policy_refuses_denied_types_at_save_and_fails_runs_of_versions_deployed_before() {
    let mut app = TestApp::spawn_with(Options {
        worker: true,
        scheduler: false,
    })
    .await;
    let before = app.deployed_flow(code_flow()).await;
    let (status, draft) = create(&app, &app.admin.api_key, code_flow()).await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    let globex = app.other_company().await;
    let deny = format!("code, {}:set", globex.company_id);
    enable(&mut app, "node-policy", &[("FLOQ_PLUGIN_NODE_POLICY_DENY", &deny)]).await;

    // Saving: refused with the node named, also inside a loop's body.
    let (status, body) = create(&app, &app.admin.api_key, code_flow()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error(
        &body,
        "validation_failed",
        "the flow definition is invalid",
        json!([{"field": "definition.nodes[0].type", "node": "js",
                "message": "node type `code` is denied on this installation (node-policy)"}]),
    );
    let looped = json!({"nodes": [{"id": "each", "type": "loop", "params": {"items": [1, 2], "flow": code_flow()}}],
                        "edges": []});
    let (status, body) = create(&app, &app.admin.api_key, looped).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"][0]["field"],
        "definition.nodes[0].params.flow.nodes[0].type"
    );

    // Per company: `set` is denied in Globex only.
    let (status, body) = create(&app, &globex.api_key, set_flow()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"][0]["node"], "s");
    let (status, body) = create(&app, &app.admin.api_key, set_flow()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Deploying a draft saved before the policy: refused too.
    let (status, body) = app
        .post(
            &format!("/api/v1/flows/{}/deploy", draft["id"].as_str().unwrap()),
            &app.admin.api_key,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Running a version deployed before the policy: the node fails with `node_denied`.
    let run_id = app.start_run(&before, json!({})).await;
    let run = app.wait_run(&run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "node_denied", "{run}");
    assert!(run["error"]["message"].as_str().unwrap().contains("`code`"), "{run}");
    let (code, _) = floq_tests::failed_step(&run);
    assert_eq!(code, "node_denied");

    // The catalog still lists every type (what a company may use is decided on save).
    let (_, types) = app.get("/api/v1/node-types", &app.admin.api_key).await;
    assert!(types["items"].as_array().unwrap().iter().any(|t| t["type"] == "code"));
    app.teardown().await;
}

#[tokio::test]
async fn ip_allow_refuses_other_networks_for_the_platform_and_per_company() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let globex = app.other_company().await;

    // Platform-wide: loopback is not in the list, so every API request is refused before authentication.
    app.restart_api(|c| enable_plugins(c, "ip-allow", &[("FLOQ_PLUGIN_IP_ALLOW_CIDRS", "10.0.0.0/8")]))
        .await;
    let (status, body) = app.get("/api/v1/flows", &app.admin.api_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(
        &body,
        "ip_not_allowed",
        "requests from this address are not accepted here",
        Value::Null,
    );
    // A forwarded address counts only from a trusted proxy (none here).
    let spoofed = app
        .client
        .get(format!("{}/api/v1/flows", app.base))
        .bearer_auth(&app.admin.api_key)
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::FORBIDDEN);
    // Exempt paths: a webhook prefix stays open (an unknown token is a 404, not a 403).
    app.restart_api(|c| {
        enable_plugins(
            c,
            "ip-allow",
            &[
                ("FLOQ_PLUGIN_IP_ALLOW_CIDRS", "10.0.0.0/8"),
                ("FLOQ_PLUGIN_IP_ALLOW_EXEMPT", "/hooks/"),
            ],
        )
    })
    .await;
    let hook = app
        .client
        .post(format!("{}/hooks/nope", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), StatusCode::NOT_FOUND);

    // Per company: Globex is reached only from 10.0.0.1; Acme is not listed.
    let only = format!("{}:10.0.0.1", globex.company_id);
    app.restart_api(|c| enable_plugins(c, "ip-allow", &[("FLOQ_PLUGIN_IP_ALLOW_COMPANIES", &only)]))
        .await;
    let (status, _) = app.get("/api/v1/flows", &app.admin.api_key).await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/api/v1/flows", "/api/v1/auth/me", "/api/v1/api-keys"] {
        let (status, body) = app.get(path, &globex.api_key).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "plugin_denied", "{body}");
        assert_eq!(body["error"]["details"]["plugin"], "ip-allow", "{body}");
    }
    // Audited in Globex as a denied access (the audit writer batches: wait for it).
    let mut denied = 0i64;
    for _ in 0..50 {
        denied = sqlx::query_scalar(
            "SELECT count(*) FROM audit_log WHERE company_id = $1 AND action = 'authz.denied' \
             AND details->>'capability' = 'flow:read'",
        )
        .bind(globex.company_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if denied > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(denied >= 1, "no authz.denied entry in Globex");
    app.teardown().await;
}

#[tokio::test]
async fn the_sign_node_type_joins_the_catalog_validates_and_signs_with_a_secret() {
    let mut app = TestApp::spawn_with(Options {
        worker: true,
        scheduler: false,
    })
    .await;
    let sign = json!({"nodes": [{"id": "sig", "type": "sign", "params": {
        "algorithm": "hmac_sha256", "key": {"$secret": "signing-key"}, "data": "{{ $input.text }}"}}], "edges": []});
    // Not enabled: an unknown type.
    let (status, body) = create(&app, &app.admin.api_key, sign.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "definition.nodes[0].type");

    enable(&mut app, "sign", &[]).await;
    let (_, types) = app.get("/api/v1/node-types", &app.admin.api_key).await;
    let spec = types["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "sign")
        .cloned()
        .expect("sign is listed");
    assert_eq!(spec["params_schema"]["required"], json!(["algorithm", "data"]));
    assert_eq!(spec["ports"], "single");

    // Its params are checked on save like a built-in's.
    let bad =
        json!({"nodes": [{"id": "sig", "type": "sign", "params": {"algorithm": "md5", "data": "x"}}], "edges": []});
    let (status, body) = create(&app, &app.admin.api_key, bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["details"][0]["field"], "definition.nodes[0].params.algorithm",
        "{body}"
    );

    let (status, body) = app
        .request(
            Method::PUT,
            "/api/v1/kv/signing-key",
            &app.admin.api_key,
            Some(json!({"value": "secret:Jefe-the-signing-key"})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let run = app
        .run_flow(sign, json!({"text": "what do ya want for nothing?"}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = &run["output"];
    assert_eq!(out["algorithm"], "hmac_sha256");
    assert_eq!(out["encoding"], "hex");
    // HMAC-SHA256("Jefe-the-signing-key", "what do ya want for nothing?"), computed independently.
    let expected = {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"Jefe-the-signing-key").unwrap();
        mac.update(b"what do ya want for nothing?");
        hex::encode(mac.finalize().into_bytes())
    };
    assert_eq!(out["value"], expected.as_str());
    assert!(!run.to_string().contains("Jefe-the-signing-key"));

    // A digest needs no key; a missing key for an HMAC is refused on save.
    let run = app
        .run_flow(
            json!({"nodes": [{"id": "h", "type": "sign", "params": {"algorithm": "sha256", "data": "abc", "encoding": "base64"}}], "edges": []}),
            json!({}),
        )
        .await;
    assert_eq!(
        run["output"]["value"], "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
        "{run}"
    );
    let keyless = json!({"nodes": [{"id": "k", "type": "sign", "params": {"algorithm": "hmac_sha512", "data": "x"}}], "edges": []});
    let (status, body) = create(&app, &app.admin.api_key, keyless).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.teardown().await;
}

/// A plugin of the test's own, as a downstream binary would add one.
struct Probe {
    tables: Vec<&'static str>,
}

impl Plugin for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn required_tables(&self) -> Vec<&'static str> {
        self.tables.clone()
    }

    fn on_authorize<'a>(&'a self, access: &'a Access<'a>) -> BoxFuture<'a, Result<Verdict, PluginError>> {
        // An access check whose backend is down: an error is a deny.
        let verdict = if access.capability == "flow:edit" {
            Err(PluginError("the policy service is unreachable".into()))
        } else {
            Ok(Verdict::Allow)
        };
        Box::pin(ready(verdict))
    }

    fn before_node_execute<'a>(&'a self, node: &'a NodeInfo, params: &'a mut Value) -> BoxFuture<'a, Before> {
        let decision = if node.node_id.starts_with("skip") {
            Before::Skip("probe skips it".into())
        } else {
            if node.node_id == "tagged" {
                params["values"]["tag"] = json!("set by the probe");
            }
            Before::Continue
        };
        Box::pin(ready(decision))
    }

    fn after_node_execute<'a>(&'a self, node: &'a NodeInfo, outcome: &'a mut NodeOutcome) -> BoxFuture<'a, ()> {
        if node.node_id == "tagged"
            && let Ok(value) = outcome
        {
            value["after"] = json!(true);
        }
        Box::pin(ready(()))
    }
}

struct ProbeFactory;

impl PluginFactory for ProbeFactory {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn settings(&self) -> &'static [&'static str] {
        &["TABLE"]
    }

    fn build(&self, settings: &Settings) -> Result<Arc<dyn Plugin>, ConfigError> {
        let tables = settings
            .get("TABLE")
            .map(|t| vec![&*Box::leak(t.to_string().into_boxed_str())])
            .unwrap_or_default();
        Ok(Arc::new(Probe { tables }))
    }
}

fn with_probe() -> Available {
    floq_plugins::bundled().with(ProbeFactory)
}

#[tokio::test]
async fn node_hooks_skip_and_change_nodes_and_an_erroring_authorize_hook_denies() {
    let app = TestApp::spawn_plugged(
        Options {
            worker: true,
            scheduler: false,
        },
        with_probe(),
        |c| enable_plugins(c, "probe", &[]),
    )
    .await;
    // flow:edit is denied by the erroring hook, reading is not: a hook only narrows.
    let (status, body) = create(&app, &app.admin.api_key, set_flow()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "plugin_denied");
    assert_eq!(
        body["error"]["message"],
        "refused by the `probe` policy: the access check could not decide"
    );
    let (status, _) = app.get("/api/v1/flows", &app.admin.api_key).await;
    assert_eq!(status, StatusCode::OK);
    // The deny is floq's usual 403 for a role that lacks the capability, first: a viewer still gets `forbidden`.
    let viewer = app.member(&["viewer"]).await;
    let (status, body) = create(&app, &viewer.api_key, set_flow()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");

    // Flows are written past the API here: the probe denies every edit.
    let definition = json!({
        "nodes": [
            {"id": "tagged", "type": "set", "params": {"values": {"a": 1}}},
            {"id": "skip_me", "type": "set", "params": {"values": {"b": 2}}},
            {"id": "after_skip", "type": "set", "params": {"values": {"c": 3}}},
            {"id": "last", "type": "merge", "params": {}}
        ],
        "edges": [
            {"from": "tagged", "to": "skip_me"},
            {"from": "skip_me", "to": "after_skip"},
            {"from": "tagged", "to": "last"},
            {"from": "after_skip", "to": "last"}
        ]
    });
    let flow_id = Uuid::now_v7();
    insert_deployed(&app, flow_id, &definition).await;
    let run_id = app.start_run(&flow_id.to_string(), json!({})).await;
    let run = app.wait_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let step = |id: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(step("skip_me")["status"], "skipped");
    assert_eq!(
        step("skip_me")["error"],
        json!({"code": "skipped", "message": "probe skips it"})
    );
    assert_eq!(step("after_skip")["status"], "skipped");
    let tagged = step("tagged");
    assert_eq!(tagged["output"]["tag"], "set by the probe", "{tagged}");
    assert_eq!(tagged["output"]["after"], true, "{tagged}");
    assert_eq!(step("last")["status"], "succeeded");
    app.teardown().await;
}

/// A deployed flow written as the API would, without the API (whose probe denies edits).
async fn insert_deployed(app: &TestApp, flow_id: Uuid, definition: &Value) {
    let company = app.admin.company_id;
    sqlx::query("INSERT INTO flows (id, company_id, name, definition, latest_version) VALUES ($1, $2, 'probe', $3, 1)")
        .bind(flow_id)
        .bind(company)
        .bind(definition)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO flow_versions (company_id, flow_id, version, definition, deployed_by) \
         VALUES ($1, $2, 1, $3, $4)",
    )
    .bind(company)
    .bind(flow_id)
    .bind(definition)
    .bind(app.admin.user_id)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn services_refuse_to_start_on_an_unknown_plugin_a_bad_setting_or_a_missing_table() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let base = test_config(&app.db_name, &app.config.queue_prefix);

    let mut unknown = base.clone();
    enable_plugins(&mut unknown, "node-policy,nope", &[]);
    let e = Plugins::load(&unknown, &floq_plugins::bundled()).err().unwrap();
    assert_eq!(
        e.to_string(),
        "FLOQ_PLUGINS: unknown plugin `nope` (this build offers: node-policy, ip-allow, sign)"
    );

    let mut bad = base.clone();
    enable_plugins(&mut bad, "node-policy", &[("FLOQ_PLUGIN_NODE_POLICY_DENY", "Code")]);
    let e = floq_api::spawn_with_plugins(bad.clone(), Default::default(), floq_plugins::bundled())
        .await
        .err()
        .unwrap();
    assert_eq!(
        format!("{e:#}"),
        "FLOQ_PLUGIN_NODE_POLICY_DENY: `Code`: `Code` is not a node type name (a-z, 0-9 and `_`)"
    );
    let mut stray = base.clone();
    enable_plugins(&mut stray, "ip-allow", &[("FLOQ_PLUGIN_IP_ALLOW_CIDR", "10.0.0.0/8")]);
    let e = Plugins::load(&stray, &floq_plugins::bundled()).err().unwrap();
    assert_eq!(e.var, "FLOQ_PLUGIN_IP_ALLOW_CIDR");
    // A setting for a plugin that is not enabled is a typo, not ignored.
    let vars = [("FLOQ_PLUGIN_NODE_POLICY_DENY".to_string(), "code".to_string())].into();
    let e = floq_shared::plugin::PluginSettings::from_vars(&vars, &[])
        .err()
        .unwrap();
    assert_eq!(e.var, "FLOQ_PLUGIN_NODE_POLICY_DENY");

    // A table a plugin needs and the database lacks: every service stops before it serves.
    let mut missing = base.clone();
    enable_plugins(&mut missing, "probe", &[("FLOQ_PLUGIN_PROBE_TABLE", "probe_ledger")]);
    let line = "plugin `probe` needs the table `probe_ledger`, which does not exist: \
                apply the plugin's migration, or remove it from FLOQ_PLUGINS";
    let api = floq_api::spawn_with_plugins(missing.clone(), Default::default(), with_probe()).await;
    assert_eq!(format!("{:#}", api.err().unwrap()), line);
    let worker = floq_worker::spawn_with_plugins(missing.clone(), Default::default(), with_probe()).await;
    assert_eq!(format!("{:#}", worker.err().unwrap()), line);
    let scheduler = floq_scheduler::spawn_with_plugins(missing.clone(), Default::default(), with_probe()).await;
    assert_eq!(format!("{:#}", scheduler.err().unwrap()), line);
    // Once the table exists, it starts.
    sqlx::query("CREATE TABLE probe_ledger (id bigint)")
        .execute(&app.pool)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = floq_api::spawn_with_plugins(missing, shutdown.clone(), with_probe())
        .await
        .expect("starts with its table");
    shutdown.cancel();
    started.handle.await.unwrap().unwrap();
    app.teardown().await;
}
