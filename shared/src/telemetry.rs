//! Logging and metrics. Metric names start with `floq_`; every service serves
//! the same registry at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::Config;

/// Keeps the trace exporter alive; dropping it sends the spans still batched.
#[must_use = "dropping it stops exporting traces"]
pub struct Tracing {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global tracing subscriber (JSON lines by default) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OpenTelemetry layer exporting
/// spans as `service` (or `OTEL_SERVICE_NAME`). Safe to call twice: the
/// first subscriber stays.
pub fn init_tracing(config: &Config, service: &str) -> Tracing {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if config.log_json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let provider = config
        .otel
        .as_ref()
        .and_then(|otel| match tracer_provider(otel, service) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("{service}: traces are off: the OTLP exporter could not be built: {e}");
                None
            }
        });
    // Spans of floq's own code, whatever FLOQ_LOG says: traces and logs are filtered apart.
    let traces = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("floq"))
            .with_filter(tracing_subscriber::filter::Targets::new().with_targets(
                ["floq_api", "floq_worker", "floq_scheduler", "floq_shared"].map(|t| (t, tracing::Level::INFO)),
            ))
    });
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .is_ok();
    Tracing {
        provider: if installed { provider } else { None },
    }
}

fn tracer_provider(
    otel: &crate::config::Otel,
    service: &str,
) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let headers = otel
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otel.traces_endpoint.clone())
        .with_timeout(otel.timeout)
        .with_headers(headers)
        .build()?;
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_scheduled_delay(otel.schedule_delay)
        .build();
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(otel.service_name.clone().unwrap_or_else(|| service.to_string()))
        .build();
    // Always on, whatever a caller's `traceparent` flags say: a tenant cannot switch off the
    // tracing of its own requests and runs (the trace id and parent are still continued).
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// A W3C `traceparent` as a propagator's carrier.
struct Carrier(Option<String>);

impl opentelemetry::propagation::Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

impl opentelemetry::propagation::Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// Makes `span` a child of the remote span a W3C `traceparent` names (an
/// HTTP header, or what a run's message carries); a missing or malformed
/// one leaves it a root.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let Some(traceparent) = traceparent else {
        return;
    };
    let cx =
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Carrier(Some(traceparent.to_string())));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The current span's W3C `traceparent`, when traces are exported.
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier(None);
    opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0
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
    /// n8n's `workflow_execution_duration_seconds` under our prefix: runs by how they ended and what started them.
    pub workflow_execution_duration: HistogramVec,
    /// Runs finished per company: the first [`COMPANY_LABELS_MAX`] companies a process sees get their own
    /// label, later ones count as `other`, so the series stay bounded.
    pub company_runs: IntCounterVec,
    pub queue_consumers: IntGauge,
    pub audit_seal_lag: prometheus::Gauge,
    pub sandbox_threads: IntGauge,
    pub sandbox_threads_busy: IntGauge,
    pub db_pool_connections: IntGaugeVec,
    pub db_pool_max_connections: IntGauge,
    pub database_up: IntGauge,
    pub broker_up: IntGauge,
    pub broker_reconnects: IntCounterVec,
}

/// Companies with a label of their own in `floq_company_runs_total` (per process).
pub const COMPANY_LABELS_MAX: usize = 100;

static COMPANIES_LABELLED: LazyLock<std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>> =
    LazyLock::new(Default::default);

/// The `company` label of `company_id`: its id while fewer than [`COMPANY_LABELS_MAX`] have one, else `other`.
pub fn company_label(company_id: uuid::Uuid) -> String {
    let mut seen = COMPANIES_LABELLED.lock().expect("company labels lock");
    if seen.contains(&company_id) || (seen.len() < COMPANY_LABELS_MAX && seen.insert(company_id)) {
        company_id.to_string()
    } else {
        "other".into()
    }
}

/// Counts one finished run: by outcome and trigger, and per company.
pub fn run_finished(company_id: uuid::Uuid, status: &str, trigger: &str, seconds: f64) {
    METRICS
        .workflow_execution_duration
        .with_label_values(&[status, trigger])
        .observe(seconds);
    METRICS
        .company_runs
        .with_label_values(&[company_label(company_id).as_str(), status])
        .inc();
}

/// Samples a service's database pool every few seconds (`floq_db_pool_*`, `floq_database_up`) until `stop`.
pub fn watch_pool(
    pool: crate::db::Pool,
    max: u32,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    METRICS.db_pool_max_connections.set(i64::from(max));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let idle = pool.num_idle() as i64;
            let size = i64::from(pool.size());
            METRICS.db_pool_connections.with_label_values(&["idle"]).set(idle);
            METRICS
                .db_pool_connections
                .with_label_values(&["in_use"])
                .set((size - idle).max(0));
            let up = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&pool),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            METRICS.database_up.set(i64::from(up));
        }
    })
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
        backpressure_rejections: with_zeros(
            counter(
                "floq_backpressure_rejections_total",
                "Triggers refused, and cron fires deferred, because a backlog bound was passed, by reason",
                &["reason"],
            ),
            &["backlog_full", "company_backlog_full"],
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
        mcp_tool_calls: with_zeros(
            counter(
                "floq_mcp_tool_calls_total",
                "MCP tool calls, by outcome (succeeded, failed, cancelled, pending, invalid_arguments, refused)",
                &["outcome"],
            ),
            &[
                "succeeded",
                "failed",
                "cancelled",
                "pending",
                "invalid_arguments",
                "refused",
            ],
        ),
        workflow_execution_duration: histogram(
            "floq_workflow_execution_duration_seconds",
            "Run execution time, by status and trigger (n8n's workflow_execution_duration_seconds)",
            &["status", "trigger"],
        ),
        company_runs: counter(
            "floq_company_runs_total",
            "Runs finished per company (the first 100 a process sees; later ones as `other`), by status",
            &["company", "status"],
        ),
        queue_consumers: gauge(
            "floq_queue_consumers",
            "Consumers on the run queues (all shards), as last sampled",
        ),
        audit_seal_lag: {
            let g = prometheus::Gauge::new(
                "floq_audit_seal_lag_seconds",
                "Age of the oldest audit entry not yet sealed into its chain (0 when all are sealed), as of the last seal pass",
            )
            .expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        },
        sandbox_threads: gauge("floq_sandbox_threads", "Sandbox threads in this worker"),
        sandbox_threads_busy: gauge(
            "floq_sandbox_threads_busy",
            "Sandbox threads running a script right now",
        ),
        db_pool_connections: {
            let g = IntGaugeVec::new(
                Opts::new(
                    "floq_db_pool_connections",
                    "Database pool connections, by state (idle, in_use)",
                ),
                &["state"],
            )
            .expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        },
        db_pool_max_connections: gauge(
            "floq_db_pool_max_connections",
            "The database pool's size limit (FLOQ_DB_MAX_CONNECTIONS)",
        ),
        database_up: gauge(
            "floq_database_up",
            "1 while this service's last database probe succeeded",
        ),
        broker_up: gauge("floq_broker_up", "1 while this service's broker connection is up"),
        broker_reconnects: with_zeros(
            counter(
                "floq_broker_reconnects_total",
                "Broker connections re-established after one was lost, by connection (consumer, sampler)",
                &["connection"],
            ),
            &["consumer", "sampler"],
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
