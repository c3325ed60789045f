use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use floq_shared::db;
use floq_shared::queue::{self, Envelope, Publisher, RunFlowV1, Topology};
use floq_tests::{Options, TestApp};

fn quick_flow() -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}}]})
}

/// A server counting the calls flows make to `{base}/hit`: what a side
/// effect done twice would show, where the run's record might not.
async fn counter() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let base = crate::runs::serve(axum::Router::new().route(
        "/hit",
        axum::routing::post(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async { "counted" }
        }),
    ))
    .await;
    (base, hits)
}

/// Writes exactly what the API commits when it accepts a run, then "dies"
/// before publishing: a run row and its outbox row, nothing on the broker.
async fn accept_without_publishing(app: &TestApp, flow_id: &str) -> Uuid {
    let run_id = Uuid::now_v7();
    let flow_id: Uuid = flow_id.parse().unwrap();
    let company_id = app.admin.company_id;
    let mut tx = db::tenant_tx(&app.pool, company_id).await.unwrap();
    sqlx::query(
        "INSERT INTO runs (id, company_id, flow_id, version, status, trigger, input)
         VALUES ($1, $2, $3, 1, 'queued', 'api', '{\"n\": 42}')",
    )
    .bind(run_id)
    .bind(company_id)
    .bind(flow_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let envelope = Envelope::RunFlowV1(RunFlowV1 {
        run_id,
        company_id,
        flow_id,
        version: 1,
        attempt: 1,
        trigger: floq_shared::run::Trigger::Api,
        input: None,
        traceparent: None,
    });
    sqlx::query("INSERT INTO outbox (company_id, run_id, payload) VALUES ($1, $2, $3)")
        .bind(company_id)
        .bind(run_id)
        .bind(serde_json::to_value(&envelope).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    run_id
}

#[tokio::test]
async fn the_scheduler_delivers_runs_the_api_committed_but_never_published() {
    let mut app = TestApp::spawn_with(Options {
        worker: true,
        scheduler: false,
    })
    .await;
    let flow = app.deployed_flow(quick_flow()).await;
    let run_id = accept_without_publishing(&app, &flow).await;

    // Without the sweep nothing reaches the worker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, run) = app.get(&format!("/api/v1/runs/{run_id}"), &app.admin.api_key).await;
    assert_eq!(run["status"], "queued");

    app.start_scheduler().await;
    let run = app.wait_run(&run_id.to_string()).await;

    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"], json!({"n": 42}));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    app.teardown().await;
}

#[tokio::test]
async fn a_worker_stopped_mid_stream_and_restarted_loses_no_run_and_runs_none_twice() {
    // A small prefetch, so the stopped worker holds only part of the backlog.
    let mut app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: true,
        },
        |c| c.worker_prefetch = 10,
    )
    .await;
    let (base, hits) = counter().await;
    let flow = app
        .deployed_flow(json!({
            "nodes": [{"id": "wait", "type": "delay", "params": {"ms": 30}},
                      {"id": "call", "type": "http_request", "params": {"method": "POST", "url": format!("{base}/hit")}},
                      {"id": "done", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}}],
            "edges": [{"from": "wait", "to": "call"}, {"from": "call", "to": "done"}]
        }))
        .await;
    let mut runs = Vec::new();
    for n in 0..300 {
        runs.push(app.start_run(&flow, json!({"n": n})).await);
    }

    app.start_worker().await;
    let finished = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM runs WHERE status = 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    while finished().await < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.worker.take().unwrap().stop().await;
    let after_stop = finished().await;
    assert!(after_stop < 300, "the worker finished everything before it was stopped");

    app.start_worker().await;
    for (n, id) in runs.iter().enumerate() {
        let run = app.wait_run(id).await;
        assert_eq!(run["status"], "succeeded");
        assert_eq!(run["output"], json!({"n": n}));
        assert_eq!(run["steps"].as_array().unwrap().len(), 3);
    }
    // The stopped worker drained what it had started: every call happened once.
    assert_eq!(hits.load(Ordering::SeqCst), 300);
    app.teardown().await;
}

#[tokio::test]
async fn a_duplicate_delivery_of_a_finished_run_changes_nothing() {
    let app = TestApp::spawn().await;
    let (base, hits) = counter().await;
    let flow = app
        .deployed_flow(json!({"nodes": [
            {"id": "call", "type": "http_request", "params": {"method": "POST", "url": format!("{base}/hit")}}
        ]}))
        .await;
    let run_id = app.start_run(&flow, json!({"n": 1})).await;
    let first = app.wait_run(&run_id).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let publisher = Publisher::new(&floq_tests::amqp_url(), &Topology::from_config(&app.config));
    let envelope = Envelope::RunFlowV1(RunFlowV1 {
        run_id: run_id.parse().unwrap(),
        company_id: app.admin.company_id,
        flow_id: flow.parse().unwrap(),
        version: 1,
        attempt: 1,
        trigger: floq_shared::run::Trigger::Api,
        input: Some(json!({"n": 999})),
        traceparent: None,
    });
    // Published again as the outbox sweep does (the broker's redeliveries are
    // the other way a message arrives twice, covered by the test above).
    publisher.republish(&[envelope.clone(), envelope]).await.unwrap();
    // Let the worker consume both duplicates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.queue_depth(&format!("{}.runs", app.config.queue_prefix)).await, 0);

    let again = app.wait_run(&run_id).await;
    assert_eq!(again, first);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a duplicate delivery ran the node again"
    );
    app.teardown().await;
}

#[tokio::test]
async fn an_undecodable_message_is_dead_lettered_and_the_worker_carries_on() {
    // No scheduler: its dead-letter consumer would take the message (reaping.rs covers that).
    let app = TestApp::spawn_with(Options {
        worker: true,
        scheduler: false,
    })
    .await;
    let conn = queue::connect(&floq_tests::amqp_url()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topology = Topology::from_config(&app.config);
    ch.basic_publish(
        "".into(),
        topology.runs.as_str().into(),
        BasicPublishOptions::default(),
        b"{\"kind\": \"run_flow.v99\"}",
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.queue_depth(&topology.dead).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison message never reached the dead-letter queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flow = app.deployed_flow(quick_flow()).await;
    let run = app.wait_run(&app.start_run(&flow, json!({"n": 5})).await).await;
    assert_eq!(run["status"], "succeeded");
    app.teardown().await;
}

#[tokio::test]
async fn every_service_serves_health_readiness_and_metrics() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let worker = app.start_worker().await;
    let scheduler = app.start_scheduler().await;
    let flow = app.deployed_flow(quick_flow()).await;
    app.wait_run(&app.start_run(&flow, json!({"n": 1})).await).await;

    for base in [
        // The API's metrics are on its internal listener (webhook_safety.rs checks the public one has none).
        format!("http://{}", app.api_metrics),
        format!("http://{worker}"),
        format!("http://{scheduler}"),
    ] {
        for path in ["/healthz", "/readyz"] {
            let resp = app.client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{base}{path}");
        }
        let metrics = app
            .client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for name in [
            "floq_http_requests_total",
            "floq_http_request_duration_seconds",
            "floq_runs_enqueued_total",
            "floq_runs_completed_total",
            "floq_run_duration_seconds",
            "floq_run_queue_wait_seconds",
            "floq_node_duration_seconds",
            "floq_worker_inflight_runs",
            "floq_outbox_pending",
            "floq_scheduler_is_leader",
            "floq_queue_jobs_waiting",
            "floq_outbox_backlog",
            "floq_worker_waiting_runs",
            "floq_worker_runs_started_total",
        ] {
            assert!(metrics.contains(name), "{base} lacks {name}");
        }
    }
    app.teardown().await;
}
