//! `/healthz`, `/readyz` and `/metrics`, the same on every service. Health
//! is public everywhere; metrics are served only on internal listeners, and
//! behind a bearer token when `FLOQ_METRICS_TOKEN` is set.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Secret;

/// What `/readyz` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Serving, with a dependency down that the service can do without for a
    /// while (the API accepts into the outbox while the broker is away). An
    /// orchestrator keeps routing to it, so it does not pull every replica at once.
    Degraded(Vec<&'static str>),
    /// Not serving: names the dependency.
    NotReady(String),
}

pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Readiness> + Send>> + Send + Sync>;

/// `/healthz`, `/readyz` and `/metrics`: what the worker and scheduler serve
/// on their internal listeners, and the API on `FLOQ_API_METRICS_ADDR`.
pub fn router(ready: ReadyCheck, metrics_token: Option<Secret>) -> Router {
    health_router(ready).merge(metrics_router(metrics_token))
}

/// `/healthz` and `/readyz`, public on every listener. `ready` answers whether
/// this service's dependencies are reachable, as `{"status": "ready" |
/// "degraded" | "not_ready", ...}`: `200` unless not ready (`503`). What it
/// names is a dependency, never a URL or credential.
pub fn health_router(ready: ReadyCheck) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                match ready().await {
                    Readiness::Ready => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
                    Readiness::Degraded(down) => {
                        (StatusCode::OK, Json(json!({"status": "degraded", "unreachable": down}))).into_response()
                    }
                    Readiness::NotReady(what) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({"status": "not_ready", "reason": what})),
                    )
                        .into_response(),
                }
            }
        }),
    )
}

/// `/metrics`. With a token (`FLOQ_METRICS_TOKEN`) a scrape must send
/// `Authorization: Bearer <token>`: metrics name tenants' flows and reveal
/// load, so even an internal listener should not hand them to anyone who
/// can reach it.
pub fn metrics_router(token: Option<Secret>) -> Router {
    let expected = token.map(|t| Arc::new(Sha256::digest(t.expose().as_bytes())));
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let expected = expected.clone();
            async move {
                if let Some(expected) = expected
                    && !bearer_matches(&headers, &expected)
                {
                    return unauthorized();
                }
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::telemetry::render_metrics(),
                )
                    .into_response()
            }
        }),
    )
}

/// Compares digests, so the time taken says nothing about how much of the token was right.
fn bearer_matches(headers: &HeaderMap, expected: &[u8]) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"error": {
            "code": "unauthorized",
            "message": "/metrics requires Authorization: Bearer <FLOQ_METRICS_TOKEN>",
            "details": null,
        }})),
    )
        .into_response()
}

/// Standard readiness: PostgreSQL answers and the broker connection is up.
pub fn db_and_broker_ready(pool: sqlx::PgPool, broker_up: Arc<dyn Fn() -> bool + Send + Sync>) -> ReadyCheck {
    readiness(pool, broker_up, false)
}

/// As [`db_and_broker_ready`], but a broker outage only degrades: the API
/// keeps accepting runs into the outbox (up to `FLOQ_BACKLOG_MAX`).
pub fn db_ready_broker_optional(pool: sqlx::PgPool, broker_up: Arc<dyn Fn() -> bool + Send + Sync>) -> ReadyCheck {
    readiness(pool, broker_up, true)
}

fn readiness(pool: sqlx::PgPool, broker_up: Arc<dyn Fn() -> bool + Send + Sync>, broker_optional: bool) -> ReadyCheck {
    Arc::new(move || {
        let pool = pool.clone();
        let broker_up = broker_up.clone();
        Box::pin(async move {
            if sqlx::query("SELECT 1").execute(&pool).await.is_err() {
                return Readiness::NotReady("postgresql unreachable".into());
            }
            match (broker_up(), broker_optional) {
                (true, _) => Readiness::Ready,
                (false, true) => Readiness::Degraded(vec!["rabbitmq"]),
                (false, false) => Readiness::NotReady("rabbitmq unreachable".into()),
            }
        })
    })
}

/// Serves the ops router on `addr` until `shutdown` fires; returns the bound address.
pub async fn serve(
    addr: std::net::SocketAddr,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let protected = crate::egress::register_listener(bound);
    let handle = tokio::spawn(async move {
        let _protected = protected;
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((bound, handle))
}

/// Fires `shutdown` on SIGTERM or Ctrl-C.
pub async fn shutdown_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
