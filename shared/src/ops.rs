//! `/healthz`, `/readyz` and `/metrics`, the same on every service.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// `ready` answers whether this service's dependencies are reachable; its
/// error text names the dependency (never a URL or credential).
pub fn router(ready: ReadyCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready".to_string()).into_response(),
                        Err(what) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {what}")).into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::telemetry::render_metrics(),
                )
            }),
        )
}

/// Standard readiness: PostgreSQL answers and the broker connection is up.
pub fn db_and_broker_ready(pool: sqlx::PgPool, broker_up: Arc<dyn Fn() -> bool + Send + Sync>) -> ReadyCheck {
    Arc::new(move || {
        let pool = pool.clone();
        let broker_up = broker_up.clone();
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map_err(|_| "postgresql unreachable".to_string())?;
            if !broker_up() {
                return Err("rabbitmq unreachable".into());
            }
            Ok(())
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
