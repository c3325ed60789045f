//! Scale-out on a real RabbitMQ cluster: three private nodes on 127.0.0.1
//! (quorum queues with a member on each), two API, two worker and two
//! scheduler processes given every node in `FLOQ_AMQP_URL`, runs streamed
//! through both APIs, and the node leading the runs queue stopped
//! mid-stream (and not brought back). No accepted run may be lost or
//! recorded twice; throughput must come back on the two nodes left. Prints
//! the accounting and the recovery time.

use std::time::Duration;

use tokio::time::Instant;

use floq_tests::accounting::{self, Rule};
use floq_tests::counting::CountingServer;
use floq_tests::private::free_port;
use floq_tests::process::Kind;
use floq_tests::stack::StackOptions;

use crate::{call_then_wait, serial, stack, stream, wait_count};

async fn leader_stopped_mid_stream(runs: usize, pace: Duration) {
    let mut stack = stack(StackOptions {
        rabbit_cluster: 3,
        vars: vec![("FLOQ_WORKER_PREFETCH", "20".into())],
        ..Default::default()
    })
    .await;
    // The second of each service, on ports of its own.
    let api2_port = free_port();
    let api2 = stack
        .spawn(
            Kind::Api,
            &[
                ("FLOQ_HTTP_ADDR", &format!("127.0.0.1:{api2_port}")),
                ("FLOQ_API_METRICS_ADDR", &format!("127.0.0.1:{}", free_port())),
            ],
        )
        .await;
    let worker2 = stack
        .spawn(
            Kind::Worker,
            &[("FLOQ_WORKER_HTTP_ADDR", &format!("127.0.0.1:{}", free_port()))],
        )
        .await;
    let scheduler2 = stack
        .spawn(
            Kind::Scheduler,
            &[("FLOQ_SCHEDULER_HTTP_ADDR", &format!("127.0.0.1:{}", free_port()))],
        )
        .await;

    let server = CountingServer::start().await;
    let flow = stack.deployed_flow(call_then_wait(&server, 100, false)).await;
    let (first, sent) = stream(&stack, &flow, runs / 2, 2, pace);
    let base1 = std::mem::replace(&mut stack.base, format!("http://127.0.0.1:{api2_port}"));
    let (second, _) = stream(&stack, &flow, runs - runs / 2, 2, pace);
    stack.base = base1;

    wait_count(&sent, runs / 6, Duration::from_secs(120)).await;
    let runs_queue = format!("{}.runs", stack.config.queue_prefix);
    let leaders = stack.cluster[0].queue_leaders(&runs_queue);
    assert!(!leaders.is_empty(), "no run queue found on the cluster");
    // The node leading the most run queues (every shard's, when they share one).
    let leader = {
        let mut counts: Vec<(usize, &str)> = stack
            .cluster
            .iter()
            .map(|n| (leaders.iter().filter(|(_, l)| l == n.name()).count(), n.name()))
            .collect();
        counts.sort();
        counts.last().expect("three nodes").1.to_string()
    };
    let finished_before = stack.finished_runs().await;
    let stopped_at = Instant::now();
    let node = stack
        .cluster
        .iter()
        .find(|n| n.name() == leader)
        .expect("the leader is ours");
    node.stop();
    println!(
        "stopped {leader}, leading {} of {} run queue(s), after {finished_before} finished runs",
        leaders.iter().filter(|(_, l)| *l == leader).count(),
        leaders.len()
    );
    // Recovered once 20 more runs finished on the nodes left.
    let mut recovered = None;
    while stopped_at.elapsed() < Duration::from_secs(120) {
        if stack.finished_runs().await >= finished_before + 20 {
            recovered = Some(stopped_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = recovered.expect("runs finish again within 120 s of the leader stopping");
    println!("recovery: 20 more runs finished {recovered:?} after the leader stopped");
    let stopped_done = Instant::now();

    let mut streamed = first.await.expect("stream");
    let other = second.await.expect("stream");
    streamed.accepted.extend(other.accepted);
    streamed.refused.extend(other.refused);
    println!("{}", streamed.summary());
    let acc = accounting::settle(
        &stack.pool,
        &streamed.accepted,
        &server.counter,
        &Rule::InFlightAt(vec![stopped_at, stopped_done]),
        Duration::from_secs(180),
    )
    .await;
    println!("{}", acc.line());
    acc.assert_exact();
    assert_eq!(acc.succeeded, acc.accepted, "{}", acc.line());
    let leaders_after = stack.cluster[0]
        .queue_leaders(&runs_queue)
        .into_iter()
        .chain(stack.cluster[1].queue_leaders(&runs_queue))
        .filter(|(_, l)| *l == leader)
        .count();
    assert_eq!(leaders_after, 0, "a run queue is still led by the stopped node");
    drop((api2, worker2, scheduler2));
}

#[tokio::test]
async fn stopping_the_node_leading_the_runs_queue_of_a_3_node_cluster_loses_no_run() {
    let _serial = serial().await;
    leader_stopped_mid_stream(120, Duration::from_millis(60)).await;
}

#[tokio::test]
#[ignore = "slow: a 3-node RabbitMQ cluster, 1 000 runs through two APIs (deploy/local/test.sh --slow)"]
async fn stopping_the_runs_queue_leader_during_1000_runs_loses_no_run_and_throughput_recovers() {
    let _serial = serial().await;
    leader_stopped_mid_stream(1000, Duration::from_millis(20)).await;
}
