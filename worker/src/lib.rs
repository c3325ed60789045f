//! `floq-worker`: the only process that runs user-defined nodes. It consumes
//! runs from RabbitMQ, executes them, records their outcome with group
//! commit, and acks only after the commit.

mod checkpoints;
mod consumer;
pub mod control;
pub mod executor;
pub mod flow_cache;
mod hooks;
mod intake;
mod lease;
pub mod nodes;
mod oauth;
mod outcome_writer;
mod reply;
pub mod sandbox;
pub mod vault;
mod wake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use floq_shared::plugin::{Available, Plugins};
use floq_shared::queue::{Publisher, Topology};
use floq_shared::{Config, db, ops};

pub struct Running {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub addr: SocketAddr,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// How long a starting worker waits for its control consumer before taking runs.
const CONTROL_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn spawn(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    spawn_with_plugins(config, shutdown, Available::none()).await
}

/// As [`spawn`], with the plugins `FLOQ_PLUGINS` enables out of `available`
/// (docs/plugins.md): their node hooks and node types. A plugin that cannot
/// be built or misses a table stops the start before any run is taken.
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
    // Fail fast at start if the broker is unreachable; later outages are retried.
    floq_shared::queue::connect(config.amqp_url.expose())
        .await
        .context("cannot connect to RabbitMQ: check FLOQ_AMQP_URL and that the broker is up")?;

    // Redirects are followed by the http_request node itself, which vets every hop.
    let http = floq_shared::egress::http_client("floq-worker").context("building the HTTP client failed")?;
    let egress = floq_shared::egress::Policy::from_config(&config);
    let flows = Arc::new(flow_cache::FlowCache::new(nodes::Implementations::with_plugins(
        &plugins,
    )));
    let sandbox = sandbox::Sandbox::new(
        config.sandbox_threads,
        sandbox::Limits {
            memory_bytes: config.sandbox_memory_bytes,
            max_abandoned: config.sandbox_max_abandoned,
            ..Default::default()
        },
    );
    let exhausted = sandbox.exhausted();
    let keyring = {
        let config = config.clone();
        // Argon2id key derivation is deliberately slow: keep it off the async workers.
        tokio::task::spawn_blocking(move || floq_shared::crypto::Keyring::from_config(&config)).await??
    };
    let worker_id = uuid::Uuid::now_v7();
    let env = Arc::new(nodes::NodeEnv {
        oauth: Arc::new(oauth::Tokens::new(
            floq_shared::oauth::Registry::new(&config.oauth_providers),
            worker_id,
        )),
        http,
        egress,
        pool: pool.clone(),
        flows: flows.clone(),
        sandbox,
        keyring: Arc::new(keyring),
        delay_max: config.delay_max,
        park_after: config.park_after,
        http_max_timeout: config.http_node_max_timeout,
        http_max_response_bytes: config.http_node_max_response_bytes,
        template_timeout: config.template_timeout,
        code_timeout: config.code_timeout,
        code_max_timeout: config.code_max_timeout,
        step_output_max_bytes: config.step_output_max_bytes,
        run_output_max_bytes: config.run_output_max_bytes,
        runner: Arc::new(executor::Executor),
        plugins,
    });
    // The lease exists before any run can carry this worker's id.
    lease::beat(&pool, worker_id)
        .await
        .context("cannot register this worker's lease in PostgreSQL")?;
    let lease_stop = CancellationToken::new();
    let lease_task = tokio::spawn(lease::keep(
        pool.clone(),
        worker_id,
        config.worker_lease,
        lease_stop.clone(),
    ));
    let (writer, writer_tasks) = outcome_writer::OutcomeWriter::start(pool.clone(), worker_id);
    let (checkpoints, checkpoint_task) = checkpoints::CheckpointWriter::start(pool.clone(), config.checkpoint_flush);
    // One publisher for continuations: parked runs waking, and the hand-back at shutdown; connects when first used.
    let publisher = Arc::new(Publisher::new(config.amqp_url.expose(), &topology));
    let parking = Arc::new(floq_shared::parking::Parking::new(
        &config.queue_prefix,
        config.park_after,
    ));
    let control = Arc::new(control::Control::default());
    let worker = Arc::new(consumer::Worker {
        id: worker_id,
        pool: pool.clone(),
        config: Arc::new(config.clone()),
        cache: flows,
        env,
        writer,
        control: control.clone(),
        checkpoints,
        publisher: publisher.clone(),
        parking: parking.clone(),
    });

    let broker_up = Arc::new(AtomicBool::new(false));
    let ready = {
        let broker_up = broker_up.clone();
        ops::db_and_broker_ready(pool.clone(), Arc::new(move || broker_up.load(Ordering::Relaxed)))
    };
    let ops_shutdown = CancellationToken::new();
    let pool_watch = floq_shared::telemetry::watch_pool(pool.clone(), config.db_max_connections, ops_shutdown.clone());
    let (addr, ops_task) = ops::serve(
        config.worker_http_addr,
        ops::router(ready, config.metrics_token.clone()),
        ops_shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on {} (FLOQ_WORKER_HTTP_ADDR)", config.worker_http_addr))?;
    tracing::info!(%addr, "floq-worker serving health and metrics");

    // A sandbox with too many threads stuck in native code drains this worker like a shutdown, then fails it.
    let stop = shutdown.child_token();
    {
        let (stop, exhausted) = (stop.clone(), exhausted.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = exhausted.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
    }
    let listener = tokio::spawn(control.clone().listen(
        config.amqp_url.expose().to_string(),
        topology.clone(),
        pool.clone(),
        stop.clone(),
    ));
    let waker = tokio::spawn(wake::consume(
        config.amqp_url.expose().to_string(),
        parking,
        publisher.clone(),
        config.park_after,
        stop.clone(),
    ));
    // The lease lapses with this task, also when it is dropped unfinished (as a crashed process's would).
    let lease_held = lease_stop.clone().drop_guard();
    let handle = tokio::spawn(async move {
        let _lease_held = lease_held;
        // Cancels are heard (and the recent ones reloaded) before the first run is taken; a control consumer that
        // cannot start soon does not keep the worker from working (it keeps retrying).
        if tokio::time::timeout(CONTROL_READY_WAIT, control.ready()).await.is_err() {
            tracing::warn!("the control consumer is not up yet; consuming runs anyway");
        }
        let connection = intake::consume(worker.clone(), topology, publisher, stop, broker_up).await;
        let _ = listener.await;
        let _ = waker.await;
        // Every run task is done: release the writer so it flushes and stops.
        drop(worker);
        let mut writer_tasks = writer_tasks;
        while writer_tasks.join_next().await.is_some() {}
        let _ = checkpoint_task.await;
        // Only now: the writer's acks for runs that finished during the drain travel on it.
        drop(connection);
        // The lease lapses with the process; runs still held were handed back or return to the queue.
        lease_stop.cancel();
        let _ = lease_task.await;
        // Whatever it held was finished or handed back: the next worker need not wait for the lease to lapse.
        if let Err(e) = lease::release(&pool, worker_id).await {
            tracing::warn!(error = %e, "cannot give this worker's lease up; its handed-back runs wait for it to lapse");
        }
        ops_shutdown.cancel();
        let _ = ops_task.await;
        let _ = pool_watch.await;
        pool.close().await;
        if exhausted.is_cancelled() {
            tracing::error!(
                "floq-worker stopped: its sandbox has more threads stuck in native code than \
                 FLOQ_SANDBOX_MAX_ABANDONED allows; exiting so that the supervisor restarts it"
            );
            anyhow::bail!(
                "the sandbox is exhausted: more threads stuck in uninterruptible native code than \
                 FLOQ_SANDBOX_MAX_ABANDONED allows; restart the worker"
            );
        }
        tracing::info!("floq-worker stopped");
        Ok(())
    });
    Ok(Running { addr, handle })
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_plugins(config, shutdown, Available::none()).await
}

/// As [`run`], with plugins: how a binary of its own adds them (docs/plugins.md).
pub async fn run_with_plugins(config: Config, shutdown: CancellationToken, available: Available) -> anyhow::Result<()> {
    spawn_with_plugins(config, shutdown, available).await?.handle.await?
}
