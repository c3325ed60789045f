//! One floq service as a process of its own, for the fault tests
//! (`tests/tests/faults/`) that `kill -9` or SIGTERM it: `floq-node api|worker|scheduler`,
//! configured by the same `FLOQ_*` variables as the real binaries. It is the
//! service's own `run`, with the fail points compiled in (FLOQ_FAILPOINT).

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use floq_shared::{Config, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let service = std::env::args().nth(1).unwrap_or_default();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floq-node: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _tracing = telemetry::init_tracing(&config, &format!("floq-{service}"));
    let shutdown = CancellationToken::new();
    tokio::spawn(floq_shared::ops::shutdown_on_signal(shutdown.clone()));
    let result = match service.as_str() {
        "api" => floq_api::run_with_plugins(config, shutdown, floq_plugins::bundled()).await,
        "worker" => floq_worker::run_with_plugins(config, shutdown, floq_plugins::bundled()).await,
        "scheduler" => floq_scheduler::run_with_plugins(config, shutdown, floq_plugins::bundled()).await,
        other => {
            eprintln!("floq-node: unknown service {other:?}: expected api, worker or scheduler");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floq-node {service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
