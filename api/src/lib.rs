//! `floq-api`: authenticates, authorizes, validates, writes, enqueues and
//! answers. It never executes user code and never decrypts credentials or
//! secret KV values; the one secret it opens is a webhook's own signing secret
//! ([`webhook_secret`]), to verify a signed call and to show it once.

pub mod accept;
pub mod access;
pub mod accounts;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod console;
pub mod domains;
pub mod error;
pub mod extract;
pub mod key_cache;
pub mod mcp;
pub mod middleware;
pub mod oidc;
pub mod openapi;
pub mod password;
pub mod rate;
pub mod redirects;
pub mod replay;
pub mod request;
pub mod rotate;
mod routes;
pub mod session;
pub mod state;
pub mod throttle;
pub mod webhook_secret;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use floq_shared::crypto::Keyring;
use floq_shared::plugin::{Available, Plugins};
use floq_shared::queue::{Publisher, Topology};
use floq_shared::{Config, db, ops, queue};

pub struct Running {
    pub addr: SocketAddr,
    /// The internal listener (`FLOQ_API_METRICS_ADDR`): `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// Boots the API and returns once it listens; the handle finishes after
/// `shutdown` fires and in-flight requests and accepted runs are flushed.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    spawn_with_plugins(config, shutdown, Available::none()).await
}

/// As [`spawn`], with the plugins `FLOQ_PLUGINS` enables out of `available`
/// (docs/plugins.md): a plugin that cannot be built or misses a table stops
/// the start before the API listens.
pub async fn spawn_with_plugins(
    config: Config,
    shutdown: CancellationToken,
    available: Available,
) -> anyhow::Result<Running> {
    let plugins = Plugins::load(&config, &available)?;
    let pool = db::connect(&config)
        .await
        .context("cannot connect to PostgreSQL: check FLOQ_DATABASE_URL and that the server is up")?;
    let keyring = {
        let config = config.clone();
        // Argon2id key derivation is deliberately slow: keep it off the async workers.
        tokio::task::spawn_blocking(move || Keyring::from_config(&config)).await??
    };
    if config.auto_migrate {
        migrate(&pool, &config, &keyring).await?;
    }
    plugins.check_tables(&pool).await?;
    let topology = Topology::from_config(&config);
    // A broker that is down at start only degrades the API: runs wait in the
    // outbox (up to FLOQ_BACKLOG_MAX) and the backlog sampler declares the
    // topology once it reaches the broker.
    let publisher = Arc::new(Publisher::new(config.amqp_url.expose(), &topology).with_replies());
    match declare(&config, &topology, &publisher).await {
        Ok(()) => {}
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "RabbitMQ is unreachable at start (check FLOQ_AMQP_URL); accepting runs into the outbox meanwhile"
        ),
    }
    let backlog = floq_shared::backlog::Backlog::new(&config);
    let sampler_shutdown = CancellationToken::new();
    let pool_watch =
        floq_shared::telemetry::watch_pool(pool.clone(), config.db_max_connections, sampler_shutdown.clone());
    let sampler = backlog.spawn(pool.clone(), sampler_shutdown.clone());

    let (acceptor, accept_tasks) = accept::Acceptor::start(pool.clone(), publisher.clone(), backlog.clone());
    let key_cache = Arc::new(key_cache::KeyCache::new(config.auth_cache_ttl));
    let listener_shutdown = CancellationToken::new();
    let key_listener = {
        let (cache, pool, stop) = (key_cache.clone(), pool.clone(), listener_shutdown.clone());
        tokio::spawn(async move { cache.listen(pool, stop).await })
    };
    let (audit, audit_task) = floq_shared::audit::Writer::start(pool.clone(), "api");
    let state = state::AppState {
        pool: pool.clone(),
        keys: Arc::new(auth::Keys::new(config.jwt_secret.expose())),
        key_cache,
        config: Arc::new(config.clone()),
        acceptor,
        audit,
        keyring: Arc::new(keyring),
        trigger_limits: Arc::new(rate::TriggerLimits::new(&config)),
        mcp_limits: Arc::new(rate::McpLimits::new(&config)),
        publisher: publisher.clone(),
        oidc: Arc::new(oidc::Oidc::new(&config).context("building the single sign-on HTTP client failed")?),
        oauth: Arc::new(state::OAuth {
            registry: floq_shared::oauth::Registry::new(&config.oauth_providers),
            http: floq_shared::egress::http_client("floq-api").context("building the HTTP client failed")?,
            egress: floq_shared::egress::Policy::from_config(&config),
        }),
        plugins,
        public_origin: auth::public_origin(&config.public_url).into(),
        shutdown: shutdown.clone(),
    };
    // The sampler reaches the broker every 500 ms; the publisher connects only when it publishes.
    let broker_up = {
        let backlog = backlog.clone();
        Arc::new(move || backlog.broker_up())
    };
    let ready = ops::db_ready_broker_optional(pool.clone(), broker_up);
    let (routes, _) = routes::router().split_for_parts();
    let app = Router::new()
        .merge(routes)
        .merge(console::router())
        .fallback(|| async { error::ApiError::not_found("route") })
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::envelope,
        ))
        .layer(middleware::cors(&config.cors_origins))
        // Health is public; metrics are not: they are served only on the internal listener.
        .merge(ops::health_router(ready.clone()));

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (FLOQ_HTTP_ADDR)", config.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "floq-api listening");
    let protected = floq_shared::egress::register_listener(addr);
    let metrics_shutdown = CancellationToken::new();
    let (metrics_addr, metrics_task) = ops::serve(
        config.api_metrics_addr,
        ops::router(ready, config.metrics_token.clone()),
        metrics_shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on {} (FLOQ_API_METRICS_ADDR)", config.api_metrics_addr))?;
    tracing::info!(addr = %metrics_addr, "floq-api serving metrics and health");
    let handle = tokio::spawn(async move {
        let _protected = protected;
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("HTTP server failed")?;
        // The router (and every Acceptor clone in it) is gone: committers drain and stop.
        let mut accept_tasks = accept_tasks;
        while accept_tasks.join_next().await.is_some() {}
        // Every request has ended, so every audit writer clone is gone: wait for the queue to drain.
        let _ = audit_task.await;
        listener_shutdown.cancel();
        let _ = key_listener.await;
        metrics_shutdown.cancel();
        let _ = metrics_task.await;
        sampler_shutdown.cancel();
        let _ = sampler.await;
        let _ = pool_watch.await;
        pool.close().await;
        tracing::info!("floq-api stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        metrics_addr,
        handle,
    })
}

/// Declares the topology and opens the publishing channel.
async fn declare(config: &Config, topology: &Topology, publisher: &Publisher) -> anyhow::Result<()> {
    let conn = queue::connect(config.amqp_url.expose())
        .await
        .context("cannot connect to RabbitMQ")?;
    topology
        .declare(&conn.create_channel().await?, config.queue_delivery_limit)
        .await
        .context("declaring the RabbitMQ topology failed")?;
    let _ = conn.close(0, "declared".into()).await;
    publisher
        .ensure_connected()
        .await
        .context("cannot open a publishing channel on RabbitMQ")?;
    Ok(())
}

/// Everything migrating means for the API: the schema, then the one-time
/// backfill that needs configuration SQL cannot see (the signing secrets of
/// webhooks from before migration 0020, derived from `FLOQ_JWT_SECRET`). Run
/// by `floq-api migrate`, `admin bootstrap` and start-up with
/// `FLOQ_AUTO_MIGRATE`; idempotent and safe with replicas starting together.
pub async fn migrate(pool: &db::Pool, config: &Config, keyring: &Keyring) -> anyhow::Result<()> {
    db::migrate(pool).await.context("applying migrations failed")?;
    let stored = webhook_secret::backfill(
        pool,
        config.jwt_secret.expose(),
        keyring,
        webhook_secret::BACKFILL_BATCH,
    )
    .await
    .context("storing the signing secrets of webhooks from before migration 0020 failed")?;
    if stored > 0 {
        tracing::info!(
            webhooks = stored,
            "stored the signing secrets of webhooks from before migration 0020"
        );
    }
    Ok(())
}

/// The OpenAPI document of every route the API serves (also at `GET /api/v1/openapi.json`).
pub fn document() -> utoipa::openapi::OpenApi {
    openapi::complete(routes::router().into_openapi())
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_plugins(config, shutdown, Available::none()).await
}

/// As [`run`], with plugins: how a binary of its own adds them (docs/plugins.md).
pub async fn run_with_plugins(config: Config, shutdown: CancellationToken, available: Available) -> anyhow::Result<()> {
    spawn_with_plugins(config, shutdown, available).await?.handle.await?
}
