use clap::Parser;
use tokio_util::sync::CancellationToken;

// Under the benchmark glibc malloc took ~17% of this process's CPU (perf), mimalloc ~11%.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use floq_shared::{Config, telemetry};

/// Takes no arguments: everything is configured by the environment. Parsed
/// before the configuration is read so `--help` and `--version` need none.
#[derive(Parser)]
#[command(
    name = "floq-scheduler",
    version,
    about = "floq scheduler: starts scheduled runs, one leader at a time (configured by FLOQ_* variables; see README)"
)]
struct Cli {}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floq-scheduler: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Plugins are built once here too, so a bad plugin setting is a configuration error for every command.
    if let Err(e) = floq_shared::plugin::Plugins::load(&config, &floq_plugins::bundled()) {
        eprintln!("floq-scheduler: configuration error: {e}");
        return std::process::ExitCode::from(2);
    }
    let _tracing = telemetry::init_tracing(&config, "floq-scheduler");
    let shutdown = CancellationToken::new();
    tokio::spawn(floq_shared::ops::shutdown_on_signal(shutdown.clone()));
    match floq_scheduler::run_with_plugins(config, shutdown, floq_plugins::bundled()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floq-scheduler: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
