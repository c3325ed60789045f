//! PostgreSQL fail-over: the primary is killed mid-stream, its synchronous
//! streaming replica promoted, and the address the services use (a switch
//! standing in for CloudNativePG's `-rw` service or a proxy) moved to it.
//! The pools reconnect by themselves; meanwhile triggers are refused with a
//! structured `503`, never lost once accepted. Every accepted run ends
//! exactly once on the new primary.

use std::time::Duration;

use tokio::time::Instant;

use floq_tests::accounting::{self, Rule};
use floq_tests::counting::CountingServer;
use floq_tests::stack::StackOptions;

use crate::{call_then_wait, serial, stack, stream, wait_count};

async fn fail_over_mid_stream(runs: usize, pace: Duration) {
    let mut stack = stack(StackOptions {
        pg_replica: true,
        vars: vec![("FLOQ_WORKER_PREFETCH", "20".into())],
        ..Default::default()
    })
    .await;
    let server = CountingServer::start().await;
    let flow = stack.deployed_flow(call_then_wait(&server, 100, false)).await;
    let (streaming, sent) = stream(&stack, &flow, runs, 2, pace);
    wait_count(&sent, runs / 3, Duration::from_secs(120)).await;

    let from = Instant::now();
    stack.pg.kill();
    let replica = stack.replica.as_ref().expect("a replica");
    replica.promote();
    stack
        .db_switch
        .as_ref()
        .expect("the services reach the database through the switch")
        .retarget(([127, 0, 0, 1], replica.port).into());
    let to = Instant::now();
    println!(
        "fail-over: primary killed, replica promoted and serving after {:?}",
        to - from
    );

    let streamed = streaming.await.expect("stream");
    println!("{}", streamed.summary());
    // While no primary answered, the API refused with its error body (503), never silently.
    streamed.assert_refusals_structured(false);
    let acc = accounting::settle(
        &stack.pool,
        &streamed.accepted,
        &server.counter,
        &Rule::InFlightAt(vec![from, to]),
        Duration::from_secs(180),
    )
    .await;
    println!("{}", acc.line());
    acc.assert_exact();
    assert_eq!(acc.succeeded, acc.accepted, "{}", acc.line());
    crate::assert_services_running(&mut stack);
}

#[tokio::test]
async fn a_promoted_replica_takes_over_mid_stream_and_no_accepted_run_is_lost() {
    let _serial = serial().await;
    fail_over_mid_stream(120, Duration::from_millis(60)).await;
}

#[tokio::test]
#[ignore = "slow: a PostgreSQL fail-over during 1 000 runs (deploy/local/test.sh --slow)"]
async fn a_fail_over_during_1000_runs_loses_no_accepted_run() {
    let _serial = serial().await;
    fail_over_mid_stream(1000, Duration::from_millis(20)).await;
}
