use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// Under the benchmark glibc malloc took ~17% of this process's CPU (perf), mimalloc ~11%.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use floq_shared::{Config, db, telemetry};

#[derive(Parser)]
#[command(name = "floq-api", version, about = "floq HTTP API (and operator commands)")]
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
    /// Print a new API key (the token alone, on stdout) for an existing member of a company.
    IssueKey {
        #[arg(long)]
        email: String,
        /// The company's id; needed only when the identity belongs to several.
        #[arg(long, value_name = "ID")]
        company: Option<String>,
        /// Lifetime in seconds (60 to 31536000; default FLOQ_API_KEY_TTL).
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<String>,
        /// api or mcp.
        #[arg(long, default_value = "api")]
        scope: String,
    },
    /// Set an identity's password, read from the first line of standard input, and end its sessions.
    SetPassword {
        #[arg(long)]
        email: String,
    },
    /// Mark an e-mail domain a company's SSO connection claims as verified (instead of its DNS TXT record).
    VerifyDomain {
        /// The company's id.
        #[arg(long, value_name = "ID")]
        company: String,
        #[arg(long)]
        domain: String,
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
    // Plugins are built once here too, so a bad plugin setting is a configuration error for every command.
    if let Err(e) = floq_shared::plugin::Plugins::load(&config, &floq_plugins::bundled()) {
        eprintln!("floq-api: configuration error: {e}");
        return std::process::ExitCode::from(2);
    }
    let _tracing = telemetry::init_tracing(&config, "floq-api");
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
            floq_api::run_with_plugins(config, shutdown, floq_plugins::bundled()).await
        }
        Command::Migrate => {
            let pool = db::connect(&config).await?;
            let keyring = keyring(&config).await?;
            floq_api::migrate(&pool, &config, &keyring).await?;
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
            let keyring = keyring(&config).await?;
            floq_api::migrate(&pool, &config, &keyring).await?;
            let out = floq_api::admin::bootstrap(&pool, &config, &company, &email).await?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::IssueKey {
                    email,
                    company,
                    ttl,
                    scope,
                },
        } => {
            // Arguments are checked before connecting, so a typo answers at once.
            let company = company
                .map(|c| c.trim().parse::<uuid::Uuid>())
                .transpose()
                .map_err(|_| anyhow::anyhow!("--company must be a company id (a UUID)"))?;
            let ttl = ttl
                .map(|t| t.trim().parse::<u64>())
                .transpose()
                .map_err(|_| anyhow::anyhow!("--ttl must be a whole number of seconds"))?;
            let pool = db::connect(&config).await?;
            let issued = floq_api::admin::issue_key(&pool, &config, &email, company, ttl, &scope).await?;
            println!("{}", issued.api_key);
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::SetPassword { email },
        } => {
            let password = first_line_of_stdin()?;
            let pool = db::connect(&config).await?;
            let done = floq_api::admin::set_password(&pool, &email, password).await?;
            eprintln!(
                "password set for {}; {} session(s) ended",
                email.trim(),
                done.sessions_revoked
            );
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::VerifyDomain { company, domain },
        } => {
            let pool = db::connect(&config).await?;
            let connection = floq_api::admin::verify_domain(&pool, &company, &domain).await?;
            eprintln!("{} verified for SSO connection {connection}", domain.trim());
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::RotateKeys { batch },
        } => {
            let pool = db::connect(&config).await?;
            let keyring = keyring(&config).await?;
            let rotated = floq_api::rotate::rotate(&pool, &keyring, batch.clamp(1, 10_000)).await?;
            println!("{}", serde_json::to_string(&rotated)?);
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::GenKeys,
        } => unreachable!("handled before the configuration is read"),
    }
}

/// Every configured encryption key (Argon2id: derived off the async workers).
async fn keyring(config: &Config) -> anyhow::Result<floq_shared::crypto::Keyring> {
    let config = config.clone();
    Ok(tokio::task::spawn_blocking(move || floq_shared::crypto::Keyring::from_config(&config)).await??)
}

/// The password on the first line of standard input, without its line ending
/// (so `echo`, a here-string or a file all work; other whitespace is kept).
fn first_line_of_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("cannot read the password from standard input: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    anyhow::ensure!(
        !password.is_empty(),
        "no password on standard input (give it as the first line)"
    );
    Ok(password.to_string())
}
