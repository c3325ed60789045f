//! Fault 5: poison messages on the runs queue, and a node that always panics
//! (fail point `node.panic`: a node whose id starts with `panic` panics in the worker).

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use reqwest::StatusCode;
use serde_json::json;

use floq_shared::queue::Topology;
use floq_tests::accounting::{self, Rule};
use floq_tests::counting::CountingServer;
use floq_tests::process::Kind;
use floq_tests::stack::StackOptions;

use crate::{call_then_wait, queue_depth, serial, stack, stream};

const POISON: [&[u8]; 5] = [
    b"\x00\xff not json at all",
    b"",
    b"{\"kind\": \"run_flow.v99\", \"run_id\": \"00000000-0000-0000-0000-000000000000\"}",
    b"{\"kind\": \"run_flow.v1\", \"run_id\": \"not a uuid\"}",
    b"[1, 2, 3]",
];

async fn poison_during_a_stream(runs: usize, rounds: usize) {
    let stack = stack(StackOptions::default()).await;
    let server = CountingServer::start().await;
    let flow = stack.deployed_flow(call_then_wait(&server, 50, false)).await;
    let (streaming, _) = stream(&stack, &flow, runs, 4, Duration::from_millis(5));
    let topology = Topology::from_config(&stack.config);
    let conn = floq_shared::queue::connect(&stack.amqp_url).await.expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    for _ in 0..rounds {
        for body in POISON {
            ch.basic_publish(
                "".into(),
                topology.runs.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("published")
            .await
            .expect("confirmed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let streamed = streaming.await.expect("stream");
    println!("{}", streamed.summary());
    streamed.assert_refusals_structured(false);
    let acc = accounting::settle(
        &stack.pool,
        &streamed.accepted,
        &server.counter,
        &Rule::Never,
        Duration::from_secs(120),
    )
    .await;
    acc.assert_exact();
    assert_eq!(acc.succeeded, runs, "{}", acc.line());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while queue_depth(&stack, &topology.runs).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "poison left on the runs queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = queue_depth(&stack, &topology.dead).await as usize;
    println!(
        "poison: published={} dead_lettered_and_waiting={dead}",
        rounds * POISON.len()
    );
    // Dead-lettered, or already taken off the dead-letter queue by its consumer (H2): never left behind.
    assert!(
        dead == rounds * POISON.len() || dead == 0,
        "{dead} of {} poison messages on the dead-letter queue",
        rounds * POISON.len()
    );
    let _ = conn.close(0, "done".into()).await;
}

#[tokio::test]
async fn poison_messages_during_a_stream_are_dead_lettered_and_every_run_finishes() {
    let _serial = serial().await;
    poison_during_a_stream(100, 2).await;
}

#[tokio::test]
#[ignore = "slow: 2 000 runs (deploy/local/test.sh --slow)"]
async fn poison_messages_during_2000_runs() {
    let _serial = serial().await;
    poison_during_a_stream(2000, 20).await;
}

/// A panic in a node fails its run with `worker_panicked` (H2); the worker
/// stays up and every other run of the stream succeeds.
#[tokio::test]
async fn a_node_that_always_panics_fails_its_runs_and_nothing_else() {
    let _serial = serial().await;
    let mut stack = stack(StackOptions::default()).await;
    stack.worker.take().expect("worker").kill9().await;
    stack.worker = Some(stack.spawn(Kind::Worker, &[("FLOQ_FAILPOINT", "node.panic")]).await);
    let server = CountingServer::start().await;
    let good = stack.deployed_flow(call_then_wait(&server, 50, false)).await;
    let bad = stack
        .deployed_flow(json!({"nodes": [{"id": "panic_here", "type": "set", "params": {"values": {"x": 1}}}]}))
        .await;
    let (streaming, _) = stream(&stack, &good, 100, 4, Duration::from_millis(5));
    let mut panicking = Vec::new();
    for i in 0..10 {
        let (status, body) = stack
            .post(&format!("/api/v1/flows/{bad}/runs"), json!({"input": {"i": i}}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        panicking.push(body["run_id"].as_str().unwrap().parse().unwrap());
    }
    let streamed = streaming.await.expect("stream");
    let mut accepted = streamed.accepted.clone();
    accepted.extend(&panicking);
    let acc = accounting::settle(
        &stack.pool,
        &accepted,
        &server.counter,
        &Rule::Never,
        Duration::from_secs(120),
    )
    .await;
    acc.assert_exact();
    assert_eq!((acc.succeeded, acc.failed), (100, 10), "{}", acc.line());
    assert_eq!(acc.failure_codes.get("worker_panicked"), Some(&10), "{}", acc.line());
    let worker = stack.worker.as_mut().expect("worker");
    assert!(worker.has_exited().is_none(), "the worker died:\n{}", worker.log_tail());
}
