//! A local HTTP server that counts the calls flows make to it: what a side
//! effect done twice would show, where the run's record might not.
//!
//! `{base}/hit?run=<run id>[&delay_ms=N]` (any method) records one call with
//! its run id, its `Idempotency-Key` header if any (the stable key a node
//! sends with `http_request`'s `idempotency_header`), and when it arrived;
//! `delay_ms` holds the answer back (a slow remote API, a node to interrupt).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct Call {
    pub run: Option<String>,
    pub key: Option<String>,
    pub at: Instant,
}

#[derive(Clone, Default)]
pub struct Counter {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Calls whose answer is still held back (`delay_ms`).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct CountingServer {
    pub base: String,
    pub counter: Counter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hit(
    State(counter): State<Counter>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> &'static str {
    let call = Call {
        run: query.get("run").cloned(),
        key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        at: Instant::now(),
    };
    counter.calls.lock().expect("counter lock").push(call);
    if let Some(ms) = query.get("delay_ms").and_then(|d| d.parse().ok()) {
        counter.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        counter.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    "counted"
}

impl CountingServer {
    pub async fn start() -> Self {
        let counter = Counter::default();
        let app = axum::Router::new()
            .route("/hit", axum::routing::any(hit))
            .with_state(counter.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingServer { base, counter, task }
    }

    /// The URL a flow's `http_request` node calls: the run id rides in the query.
    pub fn hit_url(&self) -> String {
        format!("{}/hit?run={{{{ $run.id }}}}", self.base)
    }
}

impl Counter {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("counter lock").clone()
    }

    pub fn total(&self) -> usize {
        self.calls.lock().expect("counter lock").len()
    }

    /// Calls being held back right now (`delay_ms`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The calls made for one run, in order.
    pub fn for_run(&self, run: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.run.as_deref() == Some(run))
            .collect()
    }
}
