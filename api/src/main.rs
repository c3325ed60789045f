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
    /// Print a fresh FLOQ_ENC_KEY_SECRET and FLOQ_ENC_KEY_SALT (needs no configuration).
    GenKeys,
    /// Re-encrypt every secret under the primary key (resumable; safe while serving).
    RotateKeys {
        /// Rows per transaction.
        #[arg(long, default_value_t = 100)]
        batch: i64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Admin {
        command: AdminCommand::GenKeys,
    }) = cli.command
    {
        let (secret, salt) = floq_shared::crypto::generate();
        println!("FLOQ_ENC_KEY_SECRET={secret}\nFLOQ_ENC_KEY_SALT={salt}");
        return std::process::ExitCode::SUCCESS;
    }
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
        Command::Admin {
            command: AdminCommand::RotateKeys { batch },
        } => {
            let pool = db::connect(&config).await?;
            let keyring =
                tokio::task::spawn_blocking(move || floq_shared::crypto::Keyring::from_config(&config)).await??;
            let rotated = floq_api::rotate::rotate(&pool, &keyring, batch.clamp(1, 10_000)).await?;
            println!("{}", serde_json::to_string(&rotated)?);
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::GenKeys,
        } => unreachable!("handled before the configuration is read"),
    }
}
