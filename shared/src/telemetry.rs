//! Logging and metrics. Metric names start with `floq_`; every service serves
//! the same registry at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global tracing subscriber (JSON lines by default). Safe to call twice.
pub fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log_json {
        builder.json().flatten_event(true).with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub login_failures: prometheus::IntCounter,
    pub runs_enqueued: IntCounterVec,
    pub runs_completed: IntCounterVec,
    pub run_duration: Histogram,
    pub run_queue_wait: Histogram,
    pub node_duration: HistogramVec,
    pub worker_inflight: IntGauge,
    /// Per shard queue (`legacy`: the queue from before sharding): a company's
    /// figures are its shard's, which keeps the label set bounded.
    pub worker_shard_inflight: IntGaugeVec,
    pub worker_runs_started: IntCounterVec,
    pub worker_company_at_cap: IntCounterVec,
    pub worker_waiting: IntGauge,
    pub worker_handed_back: IntCounterVec,
    pub queue_jobs_waiting: IntGauge,
    pub outbox_backlog: IntGauge,
    pub backpressure_rejections: IntCounterVec,
    pub outbox_pending: IntGauge,
    pub scheduler_is_leader: IntGauge,
    pub audit_entries: IntCounterVec,
    pub audit_backlog: IntGauge,
    pub audit_sealed: prometheus::IntCounter,
    pub secret_decryptions: IntCounterVec,
    /// OAuth2 access-token refreshes a worker made, by outcome (`refreshed`, `invalid_grant`, `failed`, `stale`).
    pub oauth_refreshes: IntCounterVec,
    /// Rows a group commit isolated because PostgreSQL refused them (see `batch::isolate`).
    pub batch_rows_refused: IntCounterVec,
    pub sandbox_abandoned_threads: prometheus::IntCounter,
    /// Messages the dead-letter consumer handled, by why they died.
    pub dead_letters: IntCounterVec,
    /// Lost runs the reaper acted on, by what it did.
    pub runs_reaped: IntCounterVec,
    /// Checkpoints (one run's steps since its last) committed.
    pub checkpoints_written: prometheus::IntCounter,
    /// Runs parked outside the prefetch window (a long delay or retry backoff), and runs resumed from checkpoints.
    pub runs_parked: prometheus::IntCounter,
    pub runs_resumed: prometheus::IntCounter,
    /// Cancels by `event`: `queued` and `running` (what the API found), `refused` (a worker refused a
    /// delivery of a cancelled run), `stopped` (a worker stopped a run it held).
    pub run_cancels: IntCounterVec,
    /// MCP JSON-RPC requests by `method` (a known one, else `other`) and `outcome`
    /// (`ok`, or the JSON-RPC error's name); and tool calls by how their run ended.
    pub mcp_requests: IntCounterVec,
    pub mcp_tool_calls: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry.register(Box::new(c.clone())).expect("unique metric");
        c
    };
    let histogram = |name: &str, help: &str, labels: &[&str]| {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
            .expect("valid metric");
        registry.register(Box::new(h.clone())).expect("unique metric");
        h
    };
    let plain_histogram = |name: &str, help: &str| {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
            .expect("valid metric");
        registry.register(Box::new(h.clone())).expect("unique metric");
        h
    };
    let plain_counter = |name: &str, help: &str| {
        let c = prometheus::IntCounter::new(name, help).expect("valid metric");
        registry.register(Box::new(c.clone())).expect("unique metric");
        c
    };
    let gauge = |name: &str, help: &str| {
        let g = IntGauge::new(name, help).expect("valid metric");
        registry.register(Box::new(g.clone())).expect("unique metric");
        g
    };
    Metrics {
        http_requests: counter(
            "floq_http_requests_total",
            "HTTP requests served",
            &["method", "route", "status"],
        ),
        http_duration: histogram(
            "floq_http_request_duration_seconds",
            "HTTP request latency",
            &["method", "route"],
        ),
        login_failures: {
            let c = prometheus::IntCounter::new("floq_login_failures_total", "Failed sign-ins").expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        },
        runs_enqueued: counter("floq_runs_enqueued_total", "Runs accepted", &["trigger"]),
        runs_completed: counter("floq_runs_completed_total", "Runs finished", &["status"]),
        run_duration: plain_histogram("floq_run_duration_seconds", "Run execution time"),
        run_queue_wait: plain_histogram(
            "floq_run_queue_wait_seconds",
            "Time from acceptance to a worker starting the run",
        ),
        node_duration: histogram("floq_node_duration_seconds", "Node execution time", &["type", "status"]),
        worker_inflight: gauge("floq_worker_inflight_runs", "Runs a worker holds right now"),
        worker_shard_inflight: {
            let g = IntGaugeVec::new(
                Opts::new(
                    "floq_worker_shard_inflight_runs",
                    "Runs a worker executes right now, by the shard queue (of their company) they came from",
                ),
                &["shard"],
            )
            .expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        },
        worker_runs_started: counter(
            "floq_worker_runs_started_total",
            "Runs a worker started, by the shard queue (of their company) they came from",
            &["shard"],
        ),
        worker_company_at_cap: counter(
            "floq_worker_company_at_cap_total",
            "Times a worker left a slot free because the company of a waiting run held FLOQ_WORKER_COMPANY_CONCURRENCY slots, by shard",
            &["shard"],
        ),
        worker_waiting: gauge(
            "floq_worker_waiting_runs",
            "Runs a worker received and has not started yet (waiting for a slot or their company's turn)",
        ),
        worker_handed_back: counter(
            "floq_worker_handed_back_total",
            "Runs a stopping worker handed back to the queue, by whether they had started (`running`) or not (`waiting`)",
            &["state"],
        ),
        queue_jobs_waiting: gauge(
            "floq_queue_jobs_waiting",
            "Messages ready in the run queues (all shards), as last sampled",
        ),
        outbox_backlog: gauge(
            "floq_outbox_backlog",
            "Outbox rows not yet confirmed by the broker, as last sampled for backpressure",
        ),
        backpressure_rejections: counter(
            "floq_backpressure_rejections_total",
            "Triggers refused, and cron fires deferred, because a backlog bound was passed, by reason",
            &["reason"],
        ),
        outbox_pending: gauge("floq_outbox_pending", "Outbox rows not yet published"),
        scheduler_is_leader: gauge("floq_scheduler_is_leader", "1 while this scheduler leads"),
        audit_entries: counter(
            "floq_audit_entries_total",
            "Audit entries committed, by writer",
            &["writer"],
        ),
        secret_decryptions: counter(
            "floq_secret_decryptions_total",
            "Credentials and secret KV values decrypted for a node",
            &["kind"],
        ),
        oauth_refreshes: counter(
            "floq_oauth_refreshes_total",
            "OAuth2 access-token refreshes this worker made at a provider, by outcome",
            &["outcome"],
        ),
        batch_rows_refused: counter(
            "floq_batch_rows_refused_total",
            "Rows a group commit isolated because the database refused what they hold, by writer",
            &["writer"],
        ),
        dead_letters: with_zeros(
            counter(
                "floq_dead_letters_total",
                "Dead-lettered run messages handled, by reason (delivery_limit_exceeded, undecodable)",
                &["reason"],
            ),
            &["delivery_limit_exceeded", "undecodable"],
        ),
        runs_reaped: with_zeros(
            counter(
                "floq_runs_reaped_total",
                "Lost runs the reaper acted on, by action (republished, resumed, failed)",
                &["action"],
            ),
            &["republished", "resumed", "failed"],
        ),
        audit_backlog: gauge("floq_audit_backlog", "Audit entries waiting for the batched writer"),
        audit_sealed: {
            let c = prometheus::IntCounter::new("floq_audit_sealed_total", "Audit entries sealed into the hash chain")
                .expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        },
        sandbox_abandoned_threads: {
            let c = prometheus::IntCounter::new(
                "floq_sandbox_abandoned_threads_total",
                "Sandbox threads abandoned (and replaced) because native code ignored the script deadline",
            )
            .expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        },
        checkpoints_written: plain_counter(
            "floq_checkpoints_written_total",
            "Checkpoints of runs past the running mark committed",
        ),
        runs_parked: plain_counter(
            "floq_runs_parked_total",
            "Runs parked outside the prefetch window by a long delay or retry backoff",
        ),
        runs_resumed: plain_counter("floq_runs_resumed_total", "Runs resumed after their checkpointed nodes"),
        run_cancels: counter(
            "floq_run_cancels_total",
            "Run cancels: asked of queued or running runs (API), refused deliveries and stopped runs (worker)",
            &["event"],
        ),
        mcp_requests: counter(
            "floq_mcp_requests_total",
            "MCP JSON-RPC requests, by method and outcome",
            &["method", "outcome"],
        ),
        mcp_tool_calls: counter(
            "floq_mcp_tool_calls_total",
            "MCP tool calls, by outcome (succeeded, failed, cancelled, pending, invalid_arguments, refused)",
            &["outcome"],
        ),
        registry,
    }
});

/// Shows each of a counter's label values from the start (at 0), so alerts on rare events see a series.
fn with_zeros(counter: IntCounterVec, values: &[&str]) -> IntCounterVec {
    for value in values {
        counter.with_label_values(&[*value]);
    }
    counter
}

pub fn render_metrics() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut buf)
        .expect("text encoding never fails");
    String::from_utf8(buf).expect("prometheus text is utf-8")
}
