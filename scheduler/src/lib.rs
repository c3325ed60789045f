//! `floq-scheduler`: the only process with cross-tenant background duties.
//! Many may run; one leads (advisory lock) and the rest stand by.
//! Duties: cron firing, the outbox sweep, sealing the audit log, retention
//! and the reaper (the leader's); consuming dead letters (every instance's).

pub mod cron_fire;
pub mod dead_letters;
mod leader;
pub mod outbox;
pub mod reaper;
pub mod retention;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use floq_shared::audit;
use floq_shared::backlog::Backlog;
use floq_shared::plugin::{Available, Plugins};
use floq_shared::queue::{Publisher, Topology};
use floq_shared::telemetry::METRICS;
use floq_shared::{Config, db, ops, queue};

pub struct Running {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub addr: SocketAddr,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// How often expired webhook signature claims are forgotten: they live for a
/// webhook's tolerance (minutes), so the hourly retention pass would let them pile up.
const SIGNATURE_TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// How often a standby tries to take the lead.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

pub async fn spawn(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    spawn_with_plugins(config, shutdown, Available::none()).await
}

/// As [`spawn`], with the plugins `FLOQ_PLUGINS` enables out of `available`.
/// The scheduler runs no plugin hook, but checks the same configuration and
/// tables as the API and the worker, so a bad setting stops every service.
pub async fn spawn_with_plugins(
    config: Config,
    shutdown: CancellationToken,
    available: Available,
) -> anyhow::Result<Running> {
    let plugins = Plugins::load(&config, &available)?;
    let pool = db::connect(&config)
        .await
        .context("cannot connect to PostgreSQL: check FLOQ_DATABASE_URL and that the server is up")?;
    if config.auto_migrate {
        db::migrate(&pool).await.context("applying migrations failed")?;
    }
    plugins.check_tables(&pool).await?;
    let topology = Topology::from_config(&config);
    let conn = queue::connect(config.amqp_url.expose())
        .await
        .context("cannot connect to RabbitMQ: check FLOQ_AMQP_URL and that the broker is up")?;
    topology
        .declare(&conn.create_channel().await?, config.queue_delivery_limit)
        .await
        .context("declaring the RabbitMQ topology failed")?;
    drop(conn);
    let publisher = Arc::new(Publisher::new(config.amqp_url.expose(), &topology));
    publisher
        .ensure_connected()
        .await
        .context("cannot open a publishing channel on RabbitMQ")?;

    let backlog = floq_shared::backlog::Backlog::new(&config);
    let sampler_shutdown = CancellationToken::new();
    let sampler = backlog.spawn(pool.clone(), sampler_shutdown.clone());
    let broker_up = {
        let publisher = publisher.clone();
        Arc::new(move || publisher.is_connected())
    };
    let ops_shutdown = CancellationToken::new();
    let pool_watch = floq_shared::telemetry::watch_pool(pool.clone(), config.db_max_connections, ops_shutdown.clone());
    let (addr, ops_task) = ops::serve(
        config.scheduler_http_addr,
        ops::router(
            ops::db_and_broker_ready(pool.clone(), broker_up),
            config.metrics_token.clone(),
        ),
        ops_shutdown.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on {} (FLOQ_SCHEDULER_HTTP_ADDR)",
            config.scheduler_http_addr
        )
    })?;
    tracing::info!(%addr, "floq-scheduler serving health and metrics");

    // Every instance consumes dead letters; failing a dead run is idempotent.
    let dead_letters = tokio::spawn(dead_letters::consume(
        pool.clone(),
        config.amqp_url.expose().to_string(),
        topology.clone(),
        config.queue_delivery_limit,
        shutdown.clone(),
    ));
    let handle = tokio::spawn(async move {
        lead_or_stand_by(&config, &pool, &publisher, &backlog, &shutdown).await;
        let _ = dead_letters.await;
        METRICS.scheduler_is_leader.set(0);
        sampler_shutdown.cancel();
        let _ = sampler.await;
        ops_shutdown.cancel();
        let _ = ops_task.await;
        let _ = pool_watch.await;
        pool.close().await;
        tracing::info!("floq-scheduler stopped");
        Ok(())
    });
    Ok(Running { addr, handle })
}

async fn lead_or_stand_by(
    config: &Config,
    pool: &db::Pool,
    publisher: &Publisher,
    backlog: &Backlog,
    shutdown: &CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match leader::try_acquire(config).await {
            Ok(Some(mut leadership)) => {
                tracing::info!("this scheduler is now the leader");
                METRICS.scheduler_is_leader.set(1);
                let mut sweep_tick = tokio::time::interval(config.outbox_sweep_interval);
                sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seal_tick = tokio::time::interval(config.audit_seal_interval);
                seal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut cron_tick = tokio::time::interval(std::time::Duration::from_millis(250));
                cron_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut retention_tick = tokio::time::interval(config.retention_interval);
                retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut claims_tick = tokio::time::interval(SIGNATURE_TRIM_INTERVAL);
                claims_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut reap_tick = tokio::time::interval(reaper::interval(config));
                reap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut reaper = reaper::Reaper::new(config);
                loop {
                    let duty = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = sweep_tick.tick() => Duty::OutboxSweep,
                        _ = seal_tick.tick() => Duty::AuditSeal,
                        _ = retention_tick.tick() => Duty::Retention,
                        _ = claims_tick.tick() => Duty::SignatureTrim,
                        _ = reap_tick.tick() => Duty::Reaper,
                        _ = cron_tick.tick() => Duty::Cron,
                    };
                    if !leadership.still_held().await {
                        tracing::warn!("lost the leadership connection; standing by");
                        break;
                    }
                    let done = match duty {
                        Duty::OutboxSweep => outbox::sweep(pool, publisher, config.outbox_sweep_after)
                            .await
                            .map(drop),
                        Duty::AuditSeal => seal_all(pool, config).await,
                        Duty::Retention => retention::enforce(pool).await.map(drop),
                        Duty::SignatureTrim => retention::trim_webhook_signatures(pool).await.map(drop),
                        Duty::Cron => cron_fire::fire_due(pool, publisher, backlog).await.map(drop),
                        Duty::Reaper => reaper.tick(pool, publisher, config).await,
                    };
                    if let Err(e) = done {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            ?duty,
                            "scheduler duty failed; retrying next tick"
                        );
                    }
                }
                METRICS.scheduler_is_leader.set(0);
                leadership.release().await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot reach PostgreSQL for leader election"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(STANDBY_RETRY) => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Duty {
    OutboxSweep,
    AuditSeal,
    Retention,
    SignatureTrim,
    Cron,
    Reaper,
}

/// Seals whatever is pending, in bounded batches.
async fn seal_all(pool: &db::Pool, config: &Config) -> anyhow::Result<()> {
    const BATCH: i64 = 5_000;
    while audit::seal::seal_pending(pool, config.audit_sink.as_ref(), BATCH).await? as i64 >= BATCH {}
    Ok(())
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_plugins(config, shutdown, Available::none()).await
}

/// As [`run`], with plugins: how a binary of its own adds them (docs/plugins.md).
pub async fn run_with_plugins(config: Config, shutdown: CancellationToken, available: Available) -> anyhow::Result<()> {
    spawn_with_plugins(config, shutdown, available).await?.handle.await?
}
