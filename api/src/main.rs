use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// Under the benchmark glibc malloc took ~17% of this process's CPU (perf), mimalloc ~11%.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use floq_shared::{Config, db, telemetry};

#[derive(Parser)]
#[command(name = "floq-api", about = "floq HTTP API (and operator commands)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it with secrets masked.
    Check,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a company and its first admin, and print an API key as JSON.
    Bootstrap {
        #[arg(long)]
        company: String,
        #[arg(long)]
        email: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floq-api: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&config);
    match execute(cli.command.unwrap_or(Command::Serve), config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floq-api: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let shutdown = CancellationToken::new();
            tokio::spawn(floq_shared::ops::shutdown_on_signal(shutdown.clone()));
            floq_api::run(config, shutdown).await
        }
        Command::Migrate => {
            let pool = db::connect(&config).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!("{}", config.describe());
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::Bootstrap { company, email },
        } => {
            let pool = db::connect(&config).await?;
            db::migrate(&pool).await?;
            let out = floq_api::admin::bootstrap(&pool, &config, &company, &email).await?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
    }
}
