//! The floq benchmark: boots api + worker + scheduler in-process against the
//! real PostgreSQL and RabbitMQ (durable settings: quorum queue, publisher
//! confirms, synchronous commit), fires N runs of a small templated flow
//! (`set` → `if` → `set`) through the HTTP API at a chosen concurrency, waits
//! for all of them to finish, and prints throughput and latency figures.
//!
//!   cargo run --release -p floq-tests --bin floq-bench -- --runs 20000 --concurrency 256

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;

use floq_tests::{Options, TestApp};

mod fairness;
mod templates;

// Under the benchmark glibc malloc took ~17% of this process's CPU (perf), mimalloc ~11%.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Throughput and latency of floq's run path")]
struct Args {
    /// Runs to fire.
    #[arg(long, default_value_t = 20_000)]
    runs: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Worker prefetch (runs in flight per worker).
    #[arg(long, default_value_t = 512)]
    prefetch: u16,
    /// PostgreSQL connections per service.
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
    /// The flow to run: `basic` (set → if → set, paths only) or `templated`
    /// (five nodes whose templates are JavaScript expressions).
    #[arg(long, default_value = "basic")]
    flow: String,
    /// How runs are started: `api` (POST /api/v1/flows/{id}/runs with an API key), `webhook`
    /// (POST /hooks/{token}, asynchronous) or `webhook-sync` (`?wait=30`: each request waits for
    /// its run's output, so the accept latency is the whole round trip).
    #[arg(long, default_value = "api")]
    trigger: String,
    /// Measure template evaluation alone (paths, expressions, code nodes) and exit.
    #[arg(long)]
    templates: bool,
    /// Measure fairness instead: company B's run latency while company A floods, against idle.
    #[arg(long)]
    fairness: bool,
    /// `--fairness`: A's runs that wait in a `delay`.
    #[arg(long, default_value_t = 600)]
    flood: usize,
    /// `--fairness`: how long each of those waits.
    #[arg(long, default_value_t = 5_000)]
    flood_delay_ms: u64,
    /// `--fairness`: A's quick runs sent after the delayed ones.
    #[arg(long, default_value_t = 2_000)]
    quick: usize,
    /// Slots one company may hold in the worker (default: half the prefetch, as FLOQ_WORKER_PREFETCH alone gives).
    #[arg(long)]
    company_cap: Option<u16>,
    /// Shard queues (FLOQ_QUEUE_SHARDS).
    #[arg(long, default_value_t = 8)]
    shards: u16,
    /// `--fairness`: B's runs, one at a time, idle and under the flood.
    #[arg(long, default_value_t = 50)]
    probes: usize,
}

/// An accepted run: its id, when its request was sent, and the accept latency in seconds.
type Sent = (String, DateTime<Utc>, f64);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.templates {
        return templates::bench().await;
    }
    let app = TestApp::spawn_configured(Options::default(), |c| {
        c.worker_prefetch = args.prefetch;
        c.worker_company_concurrency = args.company_cap.unwrap_or(args.prefetch.div_ceil(2));
        c.queue_shards = args.shards;
        c.db_max_connections = args.db_connections;
        // Measure the run path, not the trigger rate limits.
        c.trigger_rate_per_flow = 1_000_000;
        c.trigger_burst_per_flow = 10_000_000;
        c.trigger_rate_per_company = 1_000_000;
        c.trigger_burst_per_company = 10_000_000;
        // The benchmark's flows make no outbound calls: nothing to open.
        c.egress_allow.clear();
    })
    .await;
    if args.fairness {
        let load = fairness::Load {
            flood: args.flood,
            flood_delay_ms: args.flood_delay_ms,
            quick: args.quick,
            probes: args.probes,
        };
        let result = fairness::bench(&app, load).await;
        app.teardown().await;
        return result;
    }
    let definition = match args.flow.as_str() {
        "basic" => json!({
            "nodes": [
                {"id": "shape", "type": "set", "params": {"values": {"user": "{{ $input.user }}", "n": "{{ $input.n }}"}}},
                {"id": "check", "type": "if", "params": {"condition": "{{ $node.shape.output.n }}"}},
                {"id": "done", "type": "set", "params": {"values": {"greeting": "hello {{ $node.shape.output.user }}"}}}
            ],
            "edges": [{"from": "shape", "to": "check"}, {"from": "check", "port": "true", "to": "done"}]
        }),
        "templated" => json!({
            "nodes": [
                {"id": "a", "type": "set", "params": {"values": {"user": "{{ $input.user.toUpperCase() }}", "n": "{{ $input.n * 2 }}"}}},
                {"id": "b", "type": "if", "params": {"condition": "{{ $node.a.output.n % 2 === 0 }}"}},
                {"id": "c", "type": "set", "params": {"values": {"tag": "{{ `user-${$node.a.output.n}` }}"}}},
                {"id": "d", "type": "set", "params": {"values": {"len": "{{ $node.a.output.user.length + $node.c.output.tag.length }}"}}},
                {"id": "e", "type": "set", "params": {"values": {"greeting": "hello {{ $node.a.output.user.toLowerCase() }} ({{ $node.d.output.len }})"}}}
            ],
            "edges": [{"from": "a", "to": "b"}, {"from": "b", "port": "true", "to": "c"}, {"from": "c", "to": "d"}, {"from": "d", "to": "e"}]
        }),
        other => anyhow::bail!("unknown --flow `{other}`: basic or templated"),
    };
    let flow = app.deployed_flow(definition).await;
    let sync = args.trigger == "webhook-sync";
    let (url, authorized) = match args.trigger.as_str() {
        "api" => (format!("{}/api/v1/flows/{flow}/runs", app.base), true),
        "webhook" | "webhook-sync" => {
            let (_, hook) = app
                .request(
                    reqwest::Method::PUT,
                    &format!("/api/v1/flows/{flow}/webhook"),
                    &app.admin.api_key,
                    Some(json!({})),
                )
                .await;
            let path = hook["path"].as_str().unwrap_or_default().to_string();
            let wait = if sync { "?wait=30" } else { "" };
            (format!("{}{path}{wait}", app.base), false)
        }
        other => anyhow::bail!("unknown --trigger `{other}`: api, webhook or webhook-sync"),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let key = app.admin.api_key.clone();

    println!(
        "floq-bench: {} runs of the {} flow by {}, concurrency {}, prefetch {}, {} db connections per service",
        args.runs, args.flow, args.trigger, args.concurrency, args.prefetch, args.db_connections
    );
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::with_capacity(args.runs)));
    let timed_out = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let failures = futures_util::stream::iter(0..args.runs)
        .map(|n| {
            let (client, url, key, sent) = (client.clone(), url.clone(), key.clone(), sent.clone());
            let timed_out = timed_out.clone();
            async move {
                let at = Utc::now();
                let t = Instant::now();
                let input = json!({"user": format!("user-{n}"), "n": n + 1});
                let request = if authorized {
                    client.post(&url).bearer_auth(&key).json(&json!({"input": input}))
                } else {
                    client.post(&url).json(&input)
                };
                let resp = request.send().await;
                let latency = t.elapsed().as_secs_f64();
                match resp {
                    // A synchronous answer carries the run's output; its id is in a header.
                    Ok(r) if sync && r.status() == reqwest::StatusCode::OK => {
                        let id = r.headers().get("x-floq-run-id").and_then(|v| v.to_str().ok());
                        let id = id.unwrap_or_default().to_string();
                        sent.lock().await.push((id, at, latency));
                        0
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                        if sync {
                            timed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let id = body["run_id"].as_str().unwrap_or_default().to_string();
                        sent.lock().await.push((id, at, latency));
                        0
                    }
                    _ => 1,
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .fold(0usize, |acc, f| async move { acc + f })
        .await;
    let accept_elapsed = started.elapsed().as_secs_f64();
    let sent = Arc::try_unwrap(sent).expect("all requests done").into_inner();

    let (mut last_done, mut last_progress) = (0, Instant::now());
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed')")
            .fetch_one(&app.pool)
            .await?;
        if done as usize >= sent.len() {
            break;
        }
        if done > last_done {
            (last_done, last_progress) = (done, Instant::now());
        } else if last_progress.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("stalled: {done} of {} runs finished and none for 30 s", sent.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total_elapsed = started.elapsed().as_secs_f64();

    let finished: Vec<(uuid::Uuid, String, DateTime<Utc>)> = sqlx::query_as("SELECT id, status, finished_at FROM runs")
        .fetch_all(&app.pool)
        .await?;
    let by_id: std::collections::HashMap<String, (String, DateTime<Utc>)> = finished
        .into_iter()
        .map(|(id, s, f)| (id.to_string(), (s, f)))
        .collect();
    let mut accept: Vec<f64> = sent.iter().map(|(_, _, l)| *l).collect();
    let mut e2e: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at, _)| {
            by_id
                .get(id)
                .map(|(_, f)| (*f - *at).num_microseconds().unwrap_or(0) as f64 / 1e6)
        })
        .collect();
    let succeeded = by_id.values().filter(|(s, _)| s == "succeeded").count();
    accept.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);

    println!("accepted:   {} ({} rejected/failed requests)", sent.len(), failures);
    println!("succeeded:  {succeeded}");
    if sync {
        let n = timed_out.load(std::sync::atomic::Ordering::Relaxed);
        println!("sync calls answered 202 (wait ran out): {n}");
    }
    println!(
        "accepted runs/s:   {:>8.0}  ({:.2} s)",
        sent.len() as f64 / accept_elapsed,
        accept_elapsed
    );
    println!(
        "completed runs/s:  {:>8.0}  ({:.2} s, first request to last run finished)",
        sent.len() as f64 / total_elapsed,
        total_elapsed
    );
    println!(
        "{}     p50 {:>7.1} ms   p99 {:>7.1} ms",
        if sync { "reply latency " } else { "accept latency" },
        percentile(&accept, 0.50) * 1e3,
        percentile(&accept, 0.99) * 1e3
    );
    println!(
        "end-to-end        p50 {:>7.1} ms   p99 {:>7.1} ms   (request sent -> run finished)",
        percentile(&e2e, 0.50) * 1e3,
        percentile(&e2e, 0.99) * 1e3
    );
    // Every request, run and node is audited; the scheduler must seal the stream as fast as it comes.
    let sealing = Instant::now();
    let (entries, sealed) = loop {
        let (entries, sealed): (i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM audit_log), (SELECT count(*) FROM audit_seals)")
                .fetch_one(&app.pool)
                .await?;
        if entries == sealed || sealing.elapsed() > Duration::from_secs(120) {
            break (entries, sealed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "audit entries:     {entries} ({:.1} per run, {:.0}/s), all sealed {:.2} s after the last run ({sealed} sealed)",
        entries as f64 / sent.len() as f64,
        entries as f64 / total_elapsed,
        sealing.elapsed().as_secs_f64()
    );
    app.teardown().await;
    Ok(())
}
