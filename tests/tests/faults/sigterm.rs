//! Fault 7: SIGTERM a worker with runs in flight. It stops taking work and
//! ends cleanly; what it holds either finishes (runs shorter than the grace
//! period) or is checkpointed and handed back within `FLOQ_SHUTDOWN_GRACE_MS`
//! (H4) for another worker to resume, with no side effect done twice.

use std::time::Duration;

use floq_tests::accounting::{self, Rule};
use floq_tests::counting::CountingServer;
use floq_tests::process::Kind;
use floq_tests::stack::StackOptions;

use crate::{call_then_wait, serial, stack, stream};

struct Plan {
    runs: usize,
    wait_ms: u64,
    /// `FLOQ_SHUTDOWN_GRACE_MS`, when the test needs it (H4).
    grace_ms: Option<u64>,
    /// How long the terminated worker may take to exit.
    exit_bound: Duration,
}

async fn sigterm_mid_stream(plan: Plan) {
    let mut vars = vec![("FLOQ_WORKER_PREFETCH", "20".to_string())];
    if let Some(grace) = plan.grace_ms {
        vars.push(("FLOQ_SHUTDOWN_GRACE_MS", grace.to_string()));
    }
    let mut stack = stack(StackOptions {
        vars,
        ..Default::default()
    })
    .await;
    let server = CountingServer::start().await;
    let flow = stack.deployed_flow(call_then_wait(&server, plan.wait_ms, false)).await;
    let (streaming, _) = stream(&stack, &flow, plan.runs, 4, Duration::ZERO);
    // Terminated while it holds runs past their call and inside their wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.counter.total() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "no run called the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut worker = stack.worker.take().expect("worker");
    let finished_before = stack.finished_runs().await;
    worker.sigterm();
    let status = worker.exited_within(plan.exit_bound).await.unwrap_or_else(|| {
        panic!(
            "the worker did not exit within {:?}:\n{}",
            plan.exit_bound,
            worker.log_tail()
        )
    });
    assert!(status.success(), "a clean exit ({status}):\n{}", worker.log_tail());
    let finished_after = stack.finished_runs().await;
    println!("sigterm: runs finished before={finished_before} when the worker had exited={finished_after}");
    stack.worker = Some(stack.spawn(Kind::Worker, &[]).await);

    let streamed = streaming.await.expect("stream");
    println!("{}", streamed.summary());
    streamed.assert_refusals_structured(false);
    let acc = accounting::settle(
        &stack.pool,
        &streamed.accepted,
        &server.counter,
        &Rule::Never,
        Duration::from_secs(180),
    )
    .await;
    acc.assert_exact();
    assert_eq!(acc.succeeded, plan.runs, "{}", acc.line());
    crate::assert_no_partial_outcomes(&stack, 3).await;
}

/// Today's drain: runs shorter than the drain bound finish before the worker exits.
#[tokio::test]
async fn a_sigterm_worker_finishes_what_it_holds_and_nothing_runs_twice() {
    let _serial = serial().await;
    sigterm_mid_stream(Plan {
        runs: 100,
        wait_ms: 1000,
        grace_ms: None,
        exit_bound: Duration::from_secs(45),
    })
    .await;
}

/// Runs far longer than the grace period: the worker exits within it,
/// handing them back checkpointed; the next worker resumes them after their call.
#[tokio::test]
async fn a_sigterm_worker_hands_long_runs_back_within_its_grace_period() {
    let _serial = serial().await;
    sigterm_mid_stream(Plan {
        runs: 200,
        wait_ms: 20_000,
        grace_ms: Some(2000),
        exit_bound: Duration::from_secs(10),
    })
    .await;
}
