//! Fairness between companies, and the worker's shutdown hand-back: shard
//! queues, per-company slots, continuations instead of redeliveries.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

use floq_shared::queue::{self, Envelope, Publisher, Topology};
use floq_tests::{Options, TestApp};

fn quick_flow() -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}}]})
}

fn delay_flow(ms: u64) -> Value {
    json!({"nodes": [{"id": "wait", "type": "delay", "params": {"ms": ms}}]})
}

async fn unfinished(app: &TestApp, company: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE company_id = $1 AND status IN ('queued', 'running')")
        .bind(company)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// A worker with 8 slots, 4 per company: 40 runs of company A that each wait
/// 2 s (and a stream of A's quick runs behind them) hold at most 4 slots, so
/// company B's trivial run finishes while nearly all of A's still wait. Before
/// sharding and per-company slots B's run queued behind all of A's.
#[tokio::test]
async fn a_companys_run_finishes_while_another_companys_backlog_waits() {
    let app = TestApp::spawn_configured(Options::default(), |c| {
        c.worker_prefetch = 8;
        c.worker_company_concurrency = 4;
        c.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let other = app.company_on_another_shard().await;
    let slow = app.deployed_flow(delay_flow(2_000)).await;
    let quick = app.deployed_flow(quick_flow()).await;
    let flood = 40;
    for n in 0..flood {
        app.start_run(&slow, json!({"n": n})).await;
    }
    for n in 0..20 {
        app.start_run(&quick, json!({"n": n})).await;
    }
    let theirs = app.deployed_flow_as(&other.api_key, quick_flow()).await;
    let run = app.start_run_as(&other.api_key, &theirs, json!({"n": 1})).await;
    let done = app.wait_run_as(&other.api_key, &run).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let waiting = unfinished(&app, app.admin.company_id).await;
    assert!(
        waiting >= flood - 8,
        "company B's run finished, but only {waiting} of company A's were still unfinished"
    );
    app.teardown().await;
}

/// A message left in `{prefix}.runs`, the queue from before sharding, still runs.
#[tokio::test]
async fn a_run_left_in_the_queue_from_before_sharding_still_runs() {
    let mut app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let flow = app.deployed_flow(quick_flow()).await;
    let run = app.start_run(&flow, json!({"n": 7})).await;
    // Move the run's message from its shard to the old queue, as an upgrade would find it.
    let topology = Topology::from_config(&app.config);
    let conn = queue::connect(&floq_tests::amqp_url()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let shard = topology.queue_for(app.admin.company_id).to_string();
    let message = loop {
        if let Some(m) = ch
            .basic_get(shard.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ch.basic_publish(
        "".into(),
        topology.runs.as_str().into(),
        BasicPublishOptions::default(),
        &message.delivery.data,
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    message.delivery.acker.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(app.queue_depth(&shard).await, 0);
    app.start_worker().await;
    let done = app.wait_run(&run).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], json!({"n": 7}), "{done}");
    app.teardown().await;
}

/// SIGTERM with a run in flight past the grace: the worker stops, the run is
/// handed back as a continuation (`floq.resumed`, its delivery not counted),
/// and another worker finishes it.
#[tokio::test]
async fn a_stopping_worker_hands_back_what_outlives_its_grace() {
    let mut app = TestApp::spawn_configured(
        Options {
            worker: false,
            scheduler: true,
        },
        |c| c.shutdown_grace = Duration::from_millis(300),
    )
    .await;
    app.start_worker().await;
    let flow = app.deployed_flow(delay_flow(3_000)).await;
    let run = app.start_run(&flow, json!({})).await;
    // Running: past the mark, so its worker holds it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = app.get(&format!("/api/v1/runs/{run}"), &app.admin.api_key).await;
        if body["status"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never running: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.worker.take().unwrap().stop().await;
    let (_, body) = app.get(&format!("/api/v1/runs/{run}"), &app.admin.api_key).await;
    assert_eq!(body["status"], "running", "the run was cut short, not finished: {body}");

    let topology = Topology::from_config(&app.config);
    let shard = topology.queue_for(app.admin.company_id).to_string();
    let conn = queue::connect(&floq_tests::amqp_url()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let handed = ch
        .basic_get(shard.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the run was handed back to its queue");
    let properties = &handed.delivery.properties;
    assert_eq!(
        properties.kind().as_ref().map(|k| k.as_str()),
        Some(queue::RESUMED),
        "handed back as a continuation"
    );
    assert!(!handed.delivery.redelivered, "a new message, not a redelivery");
    let counted = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    // The broker counts failed deliveries per message: the continuation starts afresh.
    assert!(
        matches!(counted, None | Some(lapin::types::AMQPValue::LongLongInt(0))),
        "the hand-back counted a delivery: {counted:?}"
    );
    // Put it back as the worker did, and let another worker finish it.
    let envelope: Envelope = serde_json::from_slice(&handed.delivery.data).unwrap();
    Publisher::new(&floq_tests::amqp_url(), &topology)
        .resume(&[envelope])
        .await
        .unwrap();
    handed.delivery.acker.ack(BasicAckOptions::default()).await.unwrap();
    app.start_worker().await;
    let done = app.wait_run(&run).await;
    assert_eq!(done["status"], "succeeded", "{done}");
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
        metrics.contains("floq_worker_handed_back_total{state=\"running\"}"),
        "{metrics}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn runs_of_one_company_all_travel_on_its_shard() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let other = app.company_on_another_shard().await;
    let flow = app.deployed_flow(quick_flow()).await;
    for n in 0..3 {
        app.start_run(&flow, json!({ "n": n })).await;
    }
    let theirs = app.deployed_flow_as(&other.api_key, quick_flow()).await;
    let (status, _) = app
        .post(
            &format!("/api/v1/flows/{theirs}/runs"),
            &other.api_key,
            json!({"input": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let topology = Topology::from_config(&app.config);
    let (ours, theirs) = (
        topology.queue_for(app.admin.company_id).to_string(),
        topology.queue_for(other.company_id).to_string(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.queue_depth(&ours).await != 3 || app.queue_depth(&theirs).await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "runs not on their shards");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.queue_depth(&topology.runs).await,
        0,
        "nothing goes to the old queue"
    );
    app.teardown().await;
}
