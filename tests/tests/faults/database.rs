//! Fault 3: PostgreSQL restarts (a fast stop, a `kill -9` of the postmaster)
//! during a stream of runs. Requests meanwhile get `503` in the structured
//! shape, never a `500` and never a partial write; a worker that cannot
//! record an outcome does not ack it, so the run finishes once the database is back.

use std::time::Duration;

use tokio::time::Instant;

use floq_tests::accounting::{self, Rule};
use floq_tests::counting::CountingServer;
use floq_tests::stack::{Stack, StackOptions};

use crate::{call_then_wait, serial, stack, stream, wait_count};

/// Longer than the pools' acquire timeout (10 s): a request waits that long
/// for a connection, then gets its `503`. Shorter outages only delay requests.
const PAST_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(13);
const WORKER_LEASE_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug)]
enum Outage {
    Stop(Duration),
    Kill(Duration),
}

async fn outage(stack: &Stack, kind: Outage) -> (Instant, Instant) {
    let start = Instant::now();
    let down = match kind {
        Outage::Stop(down) => {
            stack.pg.stop();
            down
        }
        Outage::Kill(down) => {
            stack.pg.kill();
            down
        }
    };
    tokio::time::sleep(down).await;
    stack.pg.start_again();
    (start, Instant::now())
}

async fn database_outages(runs: usize, pace: Duration, outages: &[Outage]) {
    let mut stack = stack(StackOptions {
        vars: vec![
            ("FLOQ_WORKER_PREFETCH", "20".into()),
            // Shorter than the outages: every heartbeat is old when the database comes back, and the reaper must
            // still not take a live worker's runs.
            ("FLOQ_WORKER_LEASE_MS", WORKER_LEASE_MS.to_string()),
        ],
        ..Default::default()
    })
    .await;
    let server = CountingServer::start().await;
    // Past the running mark: when the database goes away, the worker holds runs that carry its id.
    let flow = stack.deployed_flow(call_then_wait(&server, 1500, false)).await;
    let (streaming, sent) = stream(&stack, &flow, runs, 2, pace);
    let mut deaths = Vec::new();
    for (i, kind) in outages.iter().enumerate() {
        wait_count(&sent, (i + 1) * runs / (outages.len() + 2), Duration::from_secs(120)).await;
        let (from, to) = outage(&stack, *kind).await;
        println!("database outage {kind:?}: {:?}", to - from);
        deaths.extend([from, to]);
    }
    let streamed = streaming.await.expect("stream");
    println!("{}", streamed.summary());
    streamed.assert_refusals_structured(false);
    if outages
        .iter()
        .any(|o| matches!(o, Outage::Stop(d) | Outage::Kill(d) if *d >= PAST_ACQUIRE_TIMEOUT))
    {
        assert!(
            !streamed.refused.is_empty(),
            "no request was answered 503 during the outage"
        );
    }
    let acc = accounting::settle(
        &stack.pool,
        &streamed.accepted,
        &server.counter,
        // A run whose outcome could not be recorded is delivered again and runs again.
        &Rule::InFlightAt(deaths),
        Duration::from_secs(180),
    )
    .await;
    acc.assert_exact();
    assert_eq!(acc.succeeded, acc.accepted, "{}", acc.line());
    crate::assert_no_partial_outcomes(&stack, 3).await;
    let reaped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'job.reaper' AND details->>'action' IN ('resumed', 'failed')",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("reading audit");
    assert_eq!(reaped, 0, "the reaper handed on runs of a live worker after the outage");
    // Every run the database holds, answered 202 or not, is final (settle counts the others in `unfinished`).
    crate::assert_services_running(&mut stack);
}

#[tokio::test]
async fn a_postgresql_restart_during_a_stream_answers_503_and_loses_no_run() {
    let _serial = serial().await;
    database_outages(120, Duration::from_millis(60), &[Outage::Stop(PAST_ACQUIRE_TIMEOUT)]).await;
}

#[tokio::test]
#[ignore = "slow: a stop and a kill -9 of PostgreSQL, 1 000 runs (deploy/local/test.sh --slow)"]
async fn postgresql_stopped_and_killed_during_a_stream_loses_no_run() {
    let _serial = serial().await;
    database_outages(
        1000,
        Duration::from_millis(30),
        &[
            Outage::Stop(PAST_ACQUIRE_TIMEOUT),
            Outage::Kill(Duration::from_secs(3)),
            Outage::Kill(PAST_ACQUIRE_TIMEOUT),
        ],
    )
    .await;
}
