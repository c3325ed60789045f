//! No run stays unfinished without a reason: dead-lettered messages fail
//! their runs, the reaper republishes queued runs whose message was lost and
//! hands on (or fails) runs whose worker's lease expired, and a panicking
//! run fails alone while its worker carries on.

use std::time::Duration;

use floq_shared::queue::Topology;
use floq_tests::{Options, TestApp};
use lapin::options::{BasicPublishOptions, QueuePurgeOptions};
use serde_json::{Value, json};
use uuid::Uuid;

fn quick_flow() -> Value {
    json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}}]})
}

fn off() -> Options {
    Options {
        worker: false,
        scheduler: false,
    }
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A counter's value in a `/metrics` text (0 when absent). The registry is
/// shared by every test of this process, so callers assert at least what they caused.
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the app's outbox is empty: every accepted run's message was published.
async fn all_published(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "outbox never drained");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn purge_runs_queue(app: &TestApp) -> u32 {
    let conn = floq_shared::queue::connect(&floq_tests::amqp_url()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topology = Topology::from_config(&app.config);
    let mut purged = 0;
    for queue in topology.run_queues() {
        purged += ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    }
    purged
}

#[tokio::test]
async fn a_message_past_the_delivery_limit_fails_its_run_and_stays_replayable() {
    let mut app = TestApp::spawn_configured(off(), |c| c.queue_delivery_limit = 2).await;
    let flow = app.deployed_flow(quick_flow()).await;
    // A version no worker can compile: each delivery is returned to the queue until the limit.
    sqlx::query("UPDATE flow_versions SET definition = $1 WHERE flow_id = $2")
        .bind(json!({"nodes": [{"id": "a", "type": "no_such_type"}], "edges": []}))
        .bind(Uuid::parse_str(&flow).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    app.start_worker().await;
    let scheduler = app.start_scheduler().await;
    let run = app.wait_run(&app.start_run(&flow, json!({"n": 1})).await).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "delivery_limit_exceeded", "{run}");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("delivered") && message.contains("FLOQ_QUEUE_DELIVERY_LIMIT"),
        "{message}"
    );
    let topology = Topology::from_config(&app.config);
    assert_eq!(app.queue_depth(&topology.dead).await, 0, "the dead letter was acked");
    let text = metrics(scheduler).await;
    assert!(
        counter(&text, "floq_dead_letters_total{reason=\"delivery_limit_exceeded\"}") >= 1,
        "{text}"
    );
    // Dead runs are failed runs: replay finds them.
    let (status, answer) = app
        .post(
            "/api/v1/runs/replay",
            &app.admin.api_key,
            json!({"error_code": "delivery_limit_exceeded", "dry_run": true}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(answer["matched"], 1, "{answer}");
    app.teardown().await;
}

#[tokio::test]
async fn an_undecodable_message_naming_a_run_fails_that_run_and_one_naming_none_is_dropped() {
    let mut app = TestApp::spawn_with(off()).await;
    let flow = app.deployed_flow(quick_flow()).await;
    let run = app.start_run(&flow, json!({"n": 1})).await;
    all_published(&app).await;
    assert_eq!(purge_runs_queue(&app).await, 1);
    let conn = floq_shared::queue::connect(&floq_tests::amqp_url()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topology = Topology::from_config(&app.config);
    let later = json!({"kind": "run_flow.v99", "run_id": run, "company_id": app.admin.company_id});
    for body in [
        later.to_string().into_bytes(),
        b"{\"kind\": \"run_flow.v99\"}".to_vec(),
        b"\xff".to_vec(),
    ] {
        ch.basic_publish(
            "".into(),
            topology.runs.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    app.start_worker().await;
    app.start_scheduler().await;
    let failed = app.wait_run(&run).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "undecodable", "{failed}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.queue_depth(&topology.dead).await != 0 || app.queue_depth(&topology.runs).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "dead letters were not consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker carries on.
    let ok = app.wait_run(&app.start_run(&flow, json!({"n": 2})).await).await;
    assert_eq!(ok["status"], "succeeded");
    app.teardown().await;
}

#[tokio::test]
async fn the_reaper_republishes_a_queued_run_whose_message_was_lost() {
    let mut app = TestApp::spawn_configured(off(), |c| {
        c.reaper_queued_after = Duration::from_secs(1);
        c.worker_lease = Duration::from_millis(600);
    })
    .await;
    let scheduler = app.start_scheduler().await;
    let flow = app.deployed_flow(quick_flow()).await;
    let run = app.start_run(&flow, json!({"n": 3})).await;
    all_published(&app).await;
    assert_eq!(purge_runs_queue(&app).await, 1, "the run's message was lost");
    app.start_worker().await;
    let done = app.wait_run(&run).await;
    assert_eq!(
        (done["status"].as_str(), done["output"].clone()),
        (Some("succeeded"), json!({"n": 3}))
    );
    let text = metrics(scheduler).await;
    assert!(
        counter(&text, "floq_runs_reaped_total{action=\"republished\"}") >= 1,
        "{text}"
    );
    let (action,): (Value,) = sqlx::query_as(
        "SELECT details FROM audit_log WHERE company_id = $1 AND action = 'job.reaper' AND resource_id = $2",
    )
    .bind(app.admin.company_id)
    .bind(&run)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(action["action"], "republished");
    app.teardown().await;
}

#[tokio::test]
async fn a_running_run_whose_worker_lease_expired_is_resumed_or_failed_worker_lost() {
    let mut app = TestApp::spawn_configured(off(), |c| {
        c.worker_lease = Duration::from_millis(600);
        c.queue_delivery_limit = 3;
    })
    .await;
    let flow = app.deployed_flow(quick_flow()).await;
    let resumed = app.start_run(&flow, json!({"n": 4})).await;
    let exhausted = app.start_run(&flow, json!({"n": 5})).await;
    all_published(&app).await;
    assert_eq!(purge_runs_queue(&app).await, 2);
    // Both held by a worker that died an hour ago; the second on its last attempt.
    let dead_worker = Uuid::now_v7();
    sqlx::query("INSERT INTO workers (id, heartbeat_at) VALUES ($1, now() - interval '1 hour')")
        .bind(dead_worker)
        .execute(&app.pool)
        .await
        .unwrap();
    for (run, attempt) in [(&resumed, 1), (&exhausted, 3)] {
        sqlx::query(
            "UPDATE runs SET status = 'running', started_at = now(), worker_id = $2, attempt = $3 WHERE id = $1::uuid",
        )
        .bind(run)
        .bind(dead_worker)
        .bind(attempt)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.start_worker().await;
    let scheduler = app.start_scheduler().await;
    let done = app.wait_run(&resumed).await;
    assert_eq!(
        (done["status"].as_str(), done["output"].clone()),
        (Some("succeeded"), json!({"n": 4}))
    );
    assert_eq!(done["attempt"], 2);
    let lost = app.wait_run(&exhausted).await;
    assert_eq!(lost["status"], "failed");
    assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
    let text = metrics(scheduler).await;
    assert!(
        counter(&text, "floq_runs_reaped_total{action=\"resumed\"}") >= 1,
        "{text}"
    );
    assert!(
        counter(&text, "floq_runs_reaped_total{action=\"failed\"}") >= 1,
        "{text}"
    );

    // The live worker's lease is renewed, and a long run carries its id.
    let (beats,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM workers WHERE heartbeat_at > now() - interval '5 seconds'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(beats, 1);
    // Leases are nobody's tenant data: a tenant transaction cannot read them.
    let mut tx = floq_shared::db::tenant_tx(&app.pool, app.admin.company_id)
        .await
        .unwrap();
    let err = sqlx::query("SELECT 1 FROM workers LIMIT 1")
        .execute(&mut *tx)
        .await
        .expect_err("floq_app reads workers");
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(tx);
    app.teardown().await;
}

#[tokio::test]
async fn a_long_run_records_its_worker_and_is_not_reaped_while_the_lease_is_renewed() {
    let app = TestApp::spawn_configured(Options::default(), |c| {
        c.worker_lease = Duration::from_millis(600);
        c.running_mark_after = Duration::from_millis(50);
    })
    .await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "wait", "type": "delay", "params": {"ms": 1500}}]}))
        .await;
    let run = app.start_run(&flow, json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let worker_id = loop {
        let (status, worker): (String, Option<Uuid>) =
            sqlx::query_as("SELECT status, worker_id FROM runs WHERE id = $1::uuid")
                .bind(&run)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if let Some(worker) = worker {
            assert_eq!(status, "running");
            break worker;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never showed its worker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (known,): (i64,) = sqlx::query_as("SELECT count(*) FROM workers WHERE id = $1")
        .bind(worker_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(known, 1);
    let done = app.wait_run(&run).await;
    assert_eq!(
        (done["status"].as_str(), done["attempt"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{done}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_panicking_run_fails_worker_panicked_and_the_worker_carries_on() {
    let app = TestApp::spawn().await;
    let flow = app.deployed_flow(quick_flow()).await;
    let panicked = app
        .wait_run(&app.start_run(&flow, json!({"floq_fail_point": "panic"})).await)
        .await;
    assert_eq!(panicked["status"], "failed");
    assert_eq!(panicked["error"]["code"], "worker_panicked", "{panicked}");
    assert!(!panicked["error"]["message"].as_str().unwrap().contains("fail point"));
    let ok = app.wait_run(&app.start_run(&flow, json!({"n": 1})).await).await;
    assert_eq!(ok["status"], "succeeded");
    app.teardown().await;
}
