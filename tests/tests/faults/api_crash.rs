//! Fault 4: the API dies between the commit of accepted runs and their
//! publish (fail point `accept.before_publish`, cargo feature `failpoints`:
//! `abort()` with committed, answered runs not yet sent). The scheduler's
//! outbox sweep publishes them; a new API takes the rest of the stream.

use std::time::Duration;

use floq_tests::accounting::{self, Rule};
use floq_tests::counting::CountingServer;
use floq_tests::process::Kind;
use floq_tests::stack::StackOptions;

use crate::{call_then_wait, serial, stack, stream};

async fn crash_before_publish(runs: usize, crash_at_batch: u32) {
    let mut stack = stack(StackOptions::default()).await;
    // The API of the stream: armed to abort at its n-th publish.
    let failpoint = format!("accept.before_publish@{crash_at_batch}");
    stack.api.take().expect("api").kill9().await;
    stack.api = Some(stack.spawn(Kind::Api, &[("FLOQ_FAILPOINT", &failpoint)]).await);
    let server = CountingServer::start().await;
    let flow = stack.deployed_flow(call_then_wait(&server, 100, false)).await;
    let (streaming, _) = stream(&stack, &flow, runs, 4, Duration::from_millis(10));

    let t0 = tokio::time::Instant::now();
    let api = stack.api.as_mut().expect("api");
    let status = api
        .exited_within(Duration::from_secs(120))
        .await
        .expect("the fail point aborted the API");
    assert!(!status.success(), "the API aborted: {status}");
    let log = std::fs::read_to_string(&api.log).unwrap_or_default();
    let unpublished: usize = log
        .lines()
        .find_map(|l| l.split("aborting with ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the fail point's line in the API log");
    println!(
        "[{:?}] the API aborted at publish batch {crash_at_batch} with {unpublished} committed runs unpublished",
        t0.elapsed()
    );
    assert!(unpublished >= 1);
    // A new API on the same address takes the rest of the stream.
    stack.api = Some(stack.spawn(Kind::Api, &[]).await);

    println!("[{:?}] a new API is up", t0.elapsed());
    let streamed = streaming.await.expect("stream");
    println!("[{:?}] {}", t0.elapsed(), streamed.summary());
    streamed.assert_refusals_structured(true);
    let acc = accounting::settle(
        &stack.pool,
        &streamed.accepted,
        &server.counter,
        &Rule::Never,
        Duration::from_secs(120),
    )
    .await;
    acc.assert_exact();
    assert_eq!(acc.succeeded, acc.accepted, "{}", acc.line());
    // Runs committed but never answered (the crash cut their 202) finished too (`unfinished` is 0), and
    // every committed run called exactly once.
    assert_eq!(acc.calls, acc.runs_in_db, "{}", acc.line());
    crate::assert_no_partial_outcomes(&stack, 3).await;
}

#[tokio::test]
async fn an_api_killed_between_commit_and_publish_loses_no_accepted_run() {
    let _serial = serial().await;
    crash_before_publish(120, 10).await;
}

#[tokio::test]
#[ignore = "slow: 2 000 runs (deploy/local/test.sh --slow)"]
async fn an_api_killed_between_commit_and_publish_during_2000_runs() {
    let _serial = serial().await;
    crash_before_publish(2000, 200).await;
}
