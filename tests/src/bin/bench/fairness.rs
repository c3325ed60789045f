//! `floq-bench --fairness`: how long company B's trivial runs take while
//! company A floods (runs that wait in a `delay`, and a stream of quick
//! runs), against the same runs of B on an idle system. B's company is
//! chosen on another shard queue than A's (see `company_on_another_shard`).
//!
//!   cargo run --release -p floq-tests --bin floq-bench -- --fairness --flood 600 --flood-delay-ms 5000

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use floq_tests::TestApp;

pub struct Load {
    /// A's runs that wait in a `delay`.
    pub flood: usize,
    pub flood_delay_ms: u64,
    /// A's quick runs sent beside them.
    pub quick: usize,
    /// B's runs, one at a time, in each phase.
    pub probes: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn start(client: &reqwest::Client, base: &str, key: &str, flow: &str, input: Value) -> anyhow::Result<Uuid> {
    let resp = client
        .post(format!("{base}/api/v1/flows/{flow}/runs"))
        .bearer_auth(key)
        .json(&json!({ "input": input }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::ACCEPTED,
        "run refused: {}",
        resp.status()
    );
    let body: Value = resp.json().await?;
    Ok(body["run_id"].as_str().unwrap_or_default().parse()?)
}

/// Request sent → run finished, for `n` of B's runs started one after another.
async fn probe(app: &TestApp, key: &str, flow: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let sent: DateTime<Utc> = Utc::now();
        let run = start(&app.client, &app.base, key, flow, json!({ "n": i })).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let finished: DateTime<Utc> = loop {
            let done: Option<(String, Option<DateTime<Utc>>)> =
                sqlx::query_as("SELECT status, finished_at FROM runs WHERE id = $1")
                    .bind(run)
                    .fetch_optional(&app.pool)
                    .await?;
            if let Some((_, Some(at))) = done {
                break at;
            }
            anyhow::ensure!(Instant::now() < deadline, "B's run {run} did not finish in 120 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push((finished - sent).num_microseconds().unwrap_or(0) as f64 / 1e6);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

async fn unfinished(app: &TestApp, company: Uuid) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE company_id = $1 AND status IN ('queued', 'running')")
            .bind(company)
            .fetch_one(&app.pool)
            .await?,
    )
}

pub async fn bench(app: &TestApp, load: Load) -> anyhow::Result<()> {
    let quick_def = json!({"nodes": [{"id": "a", "type": "set", "params": {"values": {"n": "{{ $input.n }}"}}}]});
    let slow_def = json!({"nodes": [{"id": "wait", "type": "delay", "params": {"ms": load.flood_delay_ms}}]});
    let b = app.company_on_another_shard().await;
    let a_slow = app.deployed_flow(slow_def).await;
    let a_quick = app.deployed_flow(quick_def.clone()).await;
    let b_flow = app.deployed_flow_as(&b.api_key, quick_def).await;
    println!(
        "floq-bench --fairness: company A floods {} runs waiting {} ms and {} quick runs; company B sends {} single trivial runs (idle, then under the flood); prefetch {}, company cap {}",
        load.flood,
        load.flood_delay_ms,
        load.quick,
        load.probes,
        app.config.worker_prefetch,
        app.config.worker_company_concurrency
    );
    // Warm the caches (flow versions, connections) before measuring.
    probe(app, &b.api_key, &b_flow, 5).await?;
    let idle = probe(app, &b.api_key, &b_flow, load.probes).await?;

    let flood_started = Instant::now();
    let key = app.admin.api_key.clone();
    let flood = {
        let (client, base) = (app.client.clone(), app.base.clone());
        let (a_slow, a_quick, key) = (a_slow.clone(), a_quick.clone(), key.clone());
        let slow = load.flood;
        let quick = load.quick;
        tokio::spawn(async move {
            let slow_runs = futures_util::stream::iter(0..slow)
                .map(|n| start(&client, &base, &key, &a_slow, json!({ "n": n })))
                .buffer_unordered(32)
                .filter_map(|r| async move { r.ok() })
                .count()
                .await;
            let quick_runs = futures_util::stream::iter(0..quick)
                .map(|n| start(&client, &base, &key, &a_quick, json!({ "n": n })))
                .buffer_unordered(8)
                .filter_map(|r| async move { r.ok() })
                .count()
                .await;
            (slow_runs, quick_runs)
        })
    };
    // Let A's flood reach the worker first.
    while unfinished(app, app.admin.company_id).await? < (load.flood / 2) as i64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loaded = probe(app, &b.api_key, &b_flow, load.probes).await?;
    let a_waiting = unfinished(app, app.admin.company_id).await?;
    let (slow_sent, quick_sent) = flood.await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while unfinished(app, app.admin.company_id).await? > 0 {
        anyhow::ensure!(Instant::now() < deadline, "A's flood did not finish in 600 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flood_elapsed = flood_started.elapsed().as_secs_f64();

    let ms = |s: f64| s * 1e3;
    println!(
        "B idle:        p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        ms(*idle.last().unwrap_or(&f64::NAN))
    );
    println!(
        "B under flood: p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   ({:.1}x / {:.1}x idle)",
        ms(percentile(&loaded, 0.5)),
        ms(percentile(&loaded, 0.99)),
        ms(*loaded.last().unwrap_or(&f64::NAN)),
        percentile(&loaded, 0.5) / percentile(&idle, 0.5),
        percentile(&loaded, 0.99) / percentile(&idle, 0.99),
    );
    println!(
        "A: {slow_sent} delayed + {quick_sent} quick runs accepted; {a_waiting} still unfinished when B's last probe finished; all done {flood_elapsed:.1} s after the flood began"
    );
    Ok(())
}
