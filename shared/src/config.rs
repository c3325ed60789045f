//! One typed configuration, loaded once from `FLOQ_*` environment variables.
//!
//! Nothing else in floq reads the environment. A bad value stops start-up with
//! one line naming the variable; secrets live in [`Secret`] and never print.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A value that must never reach a log line, an error or `config check`
/// output; zeroized when dropped.
#[derive(Clone)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(zeroize::Zeroizing::new(value.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: Secret,
    pub db_max_connections: u32,
    pub amqp_url: Secret,
    pub queue_prefix: String,
    pub jwt_secret: Secret,
    /// `FLOQ_ENC_KEY_SECRET` and `FLOQ_ENC_KEY_SALT`: the primary encryption key's material.
    pub enc_key: (Secret, Secret),
    /// `FLOQ_ENC_OLD_KEYS`: `secret:salt` pairs still accepted for decryption (rotation).
    pub enc_old_keys: Vec<(Secret, Secret)>,
    pub api_key_ttl: Duration,
    pub auth_cache_ttl: Duration,
    pub session_ttl: Duration,
    pub cors_origins: Vec<String>,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Platform mail (invitations, password resets): `smtp://`, `smtps://` or
    /// `smtp+starttls://`, credentials in the URL. None: those features answer
    /// `mail_not_configured`, everything else works.
    pub smtp_url: Option<Secret>,
    pub mail_from: String,
    /// Where mailed links point (the browser-facing origin of this deployment).
    pub public_url: String,
    pub invitation_ttl: Duration,
    pub password_reset_ttl: Duration,
    pub http_addr: SocketAddr,
    pub worker_http_addr: SocketAddr,
    pub scheduler_http_addr: SocketAddr,
    /// `FLOQ_API_METRICS_ADDR`: the API's internal listener for `/metrics` (and health);
    /// the public `FLOQ_HTTP_ADDR` never serves metrics.
    pub api_metrics_addr: SocketAddr,
    /// `FLOQ_METRICS_TOKEN`: when set, every service's `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    pub body_limit_bytes: usize,
    pub auto_migrate: bool,
    pub worker_prefetch: u16,
    pub queue_delivery_limit: u32,
    /// `FLOQ_QUEUE_SHARDS`: run queues `{prefix}.runs.{n}`; a company's runs all go to one (by a hash of its id).
    pub queue_shards: u16,
    /// `FLOQ_WORKER_COMPANY_CONCURRENCY`: runs of one company a worker executes at once (default half the prefetch).
    pub worker_company_concurrency: u16,
    /// `FLOQ_BACKLOG_MAX`: queued messages plus unpublished outbox rows past which triggers answer `503`.
    pub backlog_max: u64,
    /// `FLOQ_COMPANY_BACKLOG_MAX`: one company's queued runs past which its triggers answer `429`.
    pub company_backlog_max: u64,
    /// `FLOQ_SHUTDOWN_GRACE_MS`: how long a stopping worker lets in-flight runs finish before handing them back.
    pub shutdown_grace: Duration,
    pub outbox_sweep_after: Duration,
    pub outbox_sweep_interval: Duration,
    pub running_mark_after: Duration,
    /// `FLOQ_REAPER_QUEUED_AFTER_MS`: a run still `queued` this long after its message was published is republished.
    pub reaper_queued_after: Duration,
    /// `FLOQ_WORKER_LEASE_MS`: a worker whose heartbeat is older than this has lost its runs.
    pub worker_lease: Duration,
    /// `FLOQ_REPLAY_MAX`: the most runs one replay request may start.
    pub replay_max: u32,
    /// How long a completed step of a run past the running mark may wait to be checkpointed.
    pub checkpoint_flush: Duration,
    /// A top-level `delay` or retry backoff longer than this parks its run outside the prefetch window.
    pub park_after: Duration,
    pub delay_max: Duration,
    /// The longest `deadline_ms` a flow definition may set.
    pub flow_deadline_max: Duration,
    pub http_node_max_timeout: Duration,
    pub http_node_max_response_bytes: usize,
    pub sandbox_threads: usize,
    pub sandbox_memory_bytes: usize,
    /// Sandbox threads stuck in uninterruptible native code at once before the worker drains and exits.
    pub sandbox_max_abandoned: usize,
    /// Largest JSON output of one node, and of all of a run's steps together.
    pub step_output_max_bytes: usize,
    pub run_output_max_bytes: usize,
    pub template_timeout: Duration,
    pub code_timeout: Duration,
    pub code_max_timeout: Duration,
    pub audit_sink: Option<AuditSink>,
    pub audit_seal_interval: Duration,
    pub retention_interval: Duration,
    /// Trigger rate limits (runs per second, and bursts), per flow and per company, per API replica.
    pub trigger_rate_per_flow: u32,
    pub trigger_burst_per_flow: u32,
    pub trigger_rate_per_company: u32,
    pub trigger_burst_per_company: u32,
    /// The longest a synchronous webhook call (`?wait=` or the flow's setting) waits for its run.
    pub webhook_max_wait: Duration,
    /// Synchronous webhook calls one API replica holds at once; past it calls answer `202` at once.
    pub webhook_max_waiting: usize,
    /// `FLOQ_MCP_CALL_TIMEOUT_SECONDS`: how long an MCP `tools/call` waits for its run before answering its id.
    pub mcp_call_timeout: Duration,
    /// MCP requests per second (and bursts) per API key and per company, per API replica.
    pub mcp_rate_per_key: u32,
    pub mcp_burst_per_key: u32,
    pub mcp_rate_per_company: u32,
    pub mcp_burst_per_company: u32,
    /// `FLOQ_MCP_PAGE_SIZE`: tools per `tools/list` page.
    pub mcp_page_size: u32,
    pub audit_min_age_days: u32,
    pub audit_min_entries: u64,
    /// `FLOQ_EGRESS_ALLOW`: restricted addresses (loopback, private, …) flows may still reach.
    pub egress_allow: Vec<crate::egress::Allow>,
    /// `FLOQ_SSO_EGRESS_ALLOW`: restricted addresses the API's OpenID Connect calls (discovery,
    /// JWKS, token) may reach; separate from `FLOQ_EGRESS_ALLOW` so an internal identity
    /// provider is not opened to flows.
    pub sso_egress_allow: Vec<crate::egress::Allow>,
    /// `FLOQ_SSO_DNS_SERVER`: the resolver (`ip:port`) domain verification asks for TXT
    /// records; unset: the system's resolvers.
    pub sso_dns_server: Option<SocketAddr>,
    /// `FLOQ_SSO_ENTRA_AUTHORITY`: where the `entra` preset finds Microsoft Entra ID
    /// (default `https://login.microsoftonline.com`; a national cloud's authority, or a test's).
    pub sso_entra_authority: String,
    /// `FLOQ_OAUTH_PROVIDERS_FILE`: the operator's OAuth2 providers (a JSON
    /// array, see docs/secrets.md), checked at start; added to the built-ins.
    pub oauth_providers: Vec<crate::oauth::Provider>,
    /// `FLOQ_PLUGINS`: the plugins enabled, in the order their hooks run (docs/plugins.md).
    pub plugins: Vec<String>,
    /// `FLOQ_PLUGIN_<NAME>_<SETTING>`: each enabled plugin's own settings.
    pub plugin_settings: crate::plugin::PluginSettings,
    pub log_filter: String,
    pub log_json: bool,
    /// OpenTelemetry traces over OTLP/HTTP, off unless `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set (docs/operations.md).
    pub otel: Option<Otel>,
}

/// The standard `OTEL_*` settings floq honours.
#[derive(Clone)]
pub struct Otel {
    /// Where spans are posted: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`.
    pub traces_endpoint: String,
    /// `OTEL_SERVICE_NAME`; each binary's own name when unset.
    pub service_name: Option<String>,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,…`, percent-decoded): often a vendor's API key.
    pub headers: Vec<(String, Secret)>,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms, default 5000): how long spans wait to be sent in a batch.
    pub schedule_delay: Duration,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (ms, default 10000) for each export.
    pub timeout: Duration,
}

impl Config {
    /// Loads from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Loads from an explicit map (tests build configs this way, never touching the environment).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let v = Vars(vars);
        let jwt_secret = v.required("FLOQ_JWT_SECRET")?;
        if jwt_secret.len() < 32 {
            return Err(ConfigError {
                var: "FLOQ_JWT_SECRET",
                problem: "must be at least 32 characters (try `openssl rand -hex 32`)".into(),
            });
        }
        let queue_prefix = v.string("FLOQ_QUEUE_PREFIX", "floq");
        if queue_prefix.is_empty()
            || !queue_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError {
                var: "FLOQ_QUEUE_PREFIX",
                problem: "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
            });
        }
        let database_url = v.string("FLOQ_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/floq");
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            return Err(ConfigError {
                var: "FLOQ_DATABASE_URL",
                problem: "must be a postgres:// URL".into(),
            });
        }
        let amqp_url = v.string("FLOQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        // A cluster's nodes are listed separated by commas (`queue::connect`).
        if crate::queue::nodes(&amqp_url).next().is_none()
            || crate::queue::nodes(&amqp_url).any(|u| !u.starts_with("amqp://") && !u.starts_with("amqps://"))
        {
            return Err(ConfigError {
                var: "FLOQ_AMQP_URL",
                problem: "must be an amqp:// or amqps:// URL, or several separated by commas (a cluster's nodes)"
                    .into(),
            });
        }
        let plugins = crate::plugin::settings::enabled(v.get("FLOQ_PLUGINS"))?;
        Ok(Self {
            database_url: Secret::new(database_url),
            db_max_connections: v.parse_in("FLOQ_DB_MAX_CONNECTIONS", 16, 1..=1000)?,
            amqp_url: Secret::new(amqp_url),
            queue_prefix,
            jwt_secret: Secret::new(jwt_secret),
            enc_key: v.key_material()?,
            enc_old_keys: v.old_keys("FLOQ_ENC_OLD_KEYS")?,
            api_key_ttl: v.seconds("FLOQ_API_KEY_TTL", 86_400)?,
            session_ttl: v.seconds("FLOQ_SESSION_TTL", 3_600)?,
            cors_origins: v.origins("FLOQ_CORS_ORIGINS")?,
            trusted_proxies: v.ip_list("FLOQ_TRUSTED_PROXIES")?,
            smtp_url: v.smtp_url("FLOQ_SMTP_URL")?,
            mail_from: v.mail_from("FLOQ_MAIL_FROM")?,
            public_url: v.public_url("FLOQ_PUBLIC_URL")?,
            invitation_ttl: v.seconds("FLOQ_INVITATION_TTL", 7 * 86_400)?,
            password_reset_ttl: v.seconds("FLOQ_PASSWORD_RESET_TTL", 3_600)?,
            auth_cache_ttl: Duration::from_millis(v.parse_in("FLOQ_AUTH_CACHE_TTL_MS", 30_000, 0..=3_600_000)?),
            http_addr: v.parse("FLOQ_HTTP_ADDR", "127.0.0.1:8080")?,
            worker_http_addr: v.parse("FLOQ_WORKER_HTTP_ADDR", "127.0.0.1:8081")?,
            scheduler_http_addr: v.parse("FLOQ_SCHEDULER_HTTP_ADDR", "127.0.0.1:8082")?,
            api_metrics_addr: v.parse("FLOQ_API_METRICS_ADDR", "127.0.0.1:8083")?,
            metrics_token: v.token("FLOQ_METRICS_TOKEN")?,
            body_limit_bytes: v.parse_in("FLOQ_BODY_LIMIT_BYTES", 1 << 20, 1024..=(64 << 20))?,
            auto_migrate: v.parse("FLOQ_AUTO_MIGRATE", "true")?,
            worker_prefetch: v.parse_in("FLOQ_WORKER_PREFETCH", 256, 1..=10_000)?,
            queue_delivery_limit: v.parse_in("FLOQ_QUEUE_DELIVERY_LIMIT", 5, 1..=1000)?,
            queue_shards: v.parse_in("FLOQ_QUEUE_SHARDS", 8, 1..=256)?,
            worker_company_concurrency: {
                let prefetch: u16 = v.parse_in("FLOQ_WORKER_PREFETCH", 256, 1..=10_000)?;
                v.parse_in("FLOQ_WORKER_COMPANY_CONCURRENCY", prefetch.div_ceil(2), 1..=10_000)?
            },
            backlog_max: v.parse_in("FLOQ_BACKLOG_MAX", 1_000_000, 1..=u64::MAX)?,
            company_backlog_max: v.parse_in("FLOQ_COMPANY_BACKLOG_MAX", 200_000, 1..=u64::MAX)?,
            shutdown_grace: v.millis("FLOQ_SHUTDOWN_GRACE_MS", 30_000)?,
            outbox_sweep_after: v.millis("FLOQ_OUTBOX_SWEEP_AFTER_MS", 5_000)?,
            outbox_sweep_interval: v.millis("FLOQ_OUTBOX_SWEEP_INTERVAL_MS", 1_000)?,
            running_mark_after: v.millis("FLOQ_RUNNING_MARK_AFTER_MS", 500)?,
            reaper_queued_after: Duration::from_millis(v.parse_in(
                "FLOQ_REAPER_QUEUED_AFTER_MS",
                600_000,
                1_000..=86_400_000,
            )?),
            worker_lease: Duration::from_millis(v.parse_in("FLOQ_WORKER_LEASE_MS", 30_000, 300..=3_600_000)?),
            replay_max: v.parse_in("FLOQ_REPLAY_MAX", 1_000, 1..=100_000)?,
            checkpoint_flush: Duration::from_millis(v.parse_in("FLOQ_CHECKPOINT_FLUSH_MS", 1000, 10..=60_000)?),
            park_after: v.millis("FLOQ_PARK_AFTER_MS", 5_000)?,
            delay_max: v.millis("FLOQ_DELAY_MAX_MS", 300_000)?,
            flow_deadline_max: v.millis("FLOQ_FLOW_DEADLINE_MAX_MS", 3_600_000)?,
            http_node_max_timeout: v.millis("FLOQ_HTTP_NODE_MAX_TIMEOUT_MS", 30_000)?,
            http_node_max_response_bytes: v.parse_in(
                "FLOQ_HTTP_NODE_MAX_RESPONSE_BYTES",
                5 << 20,
                1024..=(256 << 20),
            )?,
            sandbox_threads: v.parse_in(
                "FLOQ_SANDBOX_THREADS",
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                1..=256,
            )?,
            sandbox_memory_bytes: v.parse_in("FLOQ_SANDBOX_MEMORY_MB", 64usize, 8..=4096)? << 20,
            sandbox_max_abandoned: v.parse_in("FLOQ_SANDBOX_MAX_ABANDONED", 8, 0..=1024)?,
            step_output_max_bytes: v.parse_in("FLOQ_STEP_OUTPUT_MAX_BYTES", 1 << 20, 1024..=(256 << 20))?,
            run_output_max_bytes: v.parse_in("FLOQ_RUN_OUTPUT_MAX_BYTES", 16 << 20, 1024..=(1 << 30))?,
            template_timeout: Duration::from_millis(v.parse_in("FLOQ_TEMPLATE_TIMEOUT_MS", 250, 1..=60_000)?),
            code_timeout: Duration::from_millis(v.parse_in("FLOQ_CODE_TIMEOUT_MS", 5_000, 1..=3_600_000)?),
            code_max_timeout: Duration::from_millis(v.parse_in("FLOQ_CODE_MAX_TIMEOUT_MS", 60_000, 1..=3_600_000)?),
            audit_sink: v.audit_sink("FLOQ_AUDIT_SINK")?,
            audit_seal_interval: v.millis("FLOQ_AUDIT_SEAL_INTERVAL_MS", 1_000)?,
            retention_interval: v.seconds("FLOQ_RETENTION_INTERVAL", 3_600)?,
            trigger_rate_per_flow: v.parse_in("FLOQ_TRIGGER_RATE_PER_FLOW", 10_000, 1..=1_000_000)?,
            trigger_burst_per_flow: v.parse_in("FLOQ_TRIGGER_BURST_PER_FLOW", 20_000, 1..=10_000_000)?,
            trigger_rate_per_company: v.parse_in("FLOQ_TRIGGER_RATE_PER_COMPANY", 20_000, 1..=1_000_000)?,
            trigger_burst_per_company: v.parse_in("FLOQ_TRIGGER_BURST_PER_COMPANY", 40_000, 1..=10_000_000)?,
            webhook_max_wait: Duration::from_secs(v.parse_in("FLOQ_WEBHOOK_MAX_WAIT_SECONDS", 30, 1..=3_600)?),
            webhook_max_waiting: v.parse_in("FLOQ_WEBHOOK_MAX_WAITING", 10_000, 0..=1_000_000)?,
            mcp_call_timeout: Duration::from_secs(v.parse_in("FLOQ_MCP_CALL_TIMEOUT_SECONDS", 30, 1..=3_600)?),
            mcp_rate_per_key: v.parse_in("FLOQ_MCP_RATE_PER_KEY", 50, 1..=1_000_000)?,
            mcp_burst_per_key: v.parse_in("FLOQ_MCP_BURST_PER_KEY", 100, 1..=10_000_000)?,
            mcp_rate_per_company: v.parse_in("FLOQ_MCP_RATE_PER_COMPANY", 500, 1..=1_000_000)?,
            mcp_burst_per_company: v.parse_in("FLOQ_MCP_BURST_PER_COMPANY", 1_000, 1..=10_000_000)?,
            mcp_page_size: v.parse_in("FLOQ_MCP_PAGE_SIZE", 100, 1..=1_000)?,
            audit_min_age_days: v.parse_in("FLOQ_AUDIT_MIN_AGE_DAYS", 30, 1..=36_500)?,
            audit_min_entries: v.parse_in("FLOQ_AUDIT_MIN_ENTRIES", 10_000, 1..=u64::MAX)?,
            egress_allow: crate::egress::parse_allow_list(v.get("FLOQ_EGRESS_ALLOW").unwrap_or("")).map_err(
                |problem| ConfigError {
                    var: "FLOQ_EGRESS_ALLOW",
                    problem,
                },
            )?,
            sso_egress_allow: crate::egress::parse_allow_list(v.get("FLOQ_SSO_EGRESS_ALLOW").unwrap_or("")).map_err(
                |problem| ConfigError {
                    var: "FLOQ_SSO_EGRESS_ALLOW",
                    problem,
                },
            )?,
            sso_dns_server: match v.get("FLOQ_SSO_DNS_SERVER").map(str::trim).filter(|s| !s.is_empty()) {
                None => None,
                Some(raw) => Some(raw.parse().map_err(|_| ConfigError {
                    var: "FLOQ_SSO_DNS_SERVER",
                    problem: format!("must be an address with a port (`127.0.0.1:53`), got `{raw}`"),
                })?),
            },
            sso_entra_authority: v
                .string("FLOQ_SSO_ENTRA_AUTHORITY", "https://login.microsoftonline.com")
                .trim_end_matches('/')
                .to_string(),
            oauth_providers: match v.get("FLOQ_OAUTH_PROVIDERS_FILE") {
                None => vec![],
                Some(path) => crate::oauth::providers::load_file(path).map_err(|problem| ConfigError {
                    var: "FLOQ_OAUTH_PROVIDERS_FILE",
                    problem,
                })?,
            },
            plugin_settings: crate::plugin::PluginSettings::from_vars(&v.0, &plugins)?,
            plugins,
            log_filter: v.string("FLOQ_LOG", "info"),
            log_json: match v.string("FLOQ_LOG_FORMAT", "json").as_str() {
                "json" => true,
                "pretty" => false,
                other => {
                    return Err(ConfigError {
                        var: "FLOQ_LOG_FORMAT",
                        problem: format!("must be `json` or `pretty`, got `{other}`"),
                    });
                }
            },
            otel: otel(&v)?,
        })
    }

    /// Every address a floq service of this configuration listens on; flows may never reach them.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        vec![
            self.http_addr,
            self.api_metrics_addr,
            self.worker_http_addr,
            self.scheduler_http_addr,
        ]
    }

    /// The effective configuration with secrets masked, one `NAME=value` per line.
    pub fn describe(&self) -> String {
        format!("{self:#?}")
    }
}

/// `config check` shows where spans go, never credentials in the URL (user info, query).
impl fmt::Debug for Otel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = url::Url::parse(&self.traces_endpoint).map_or_else(
            |_| "***".to_string(),
            |u| {
                format!(
                    "{}://{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port().map_or(String::new(), |p| format!(":{p}"))
                ) + u.path()
            },
        );
        f.debug_struct("Otel")
            .field("traces_endpoint", &endpoint)
            .field("service_name", &self.service_name)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("schedule_delay", &self.schedule_delay)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn otel(v: &Vars) -> Result<Option<Otel>, ConfigError> {
    if v.get("OTEL_SDK_DISABLED")
        .is_some_and(|d| d.eq_ignore_ascii_case("true"))
    {
        return Ok(None);
    }
    let traces_endpoint = match (
        v.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        v.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(traces), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.to_string()),
        (None, Some(base)) => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("{}/v1/traces", base.trim_end_matches('/')),
        ),
        (None, None) => return Ok(None),
    };
    let (var, endpoint) = traces_endpoint;
    match url::Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
        _ => {
            return Err(ConfigError {
                var,
                problem: "must be an http:// or https:// URL".into(),
            });
        }
    }
    for var in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        if let Some(protocol) = v.get(var)
            && protocol != "http/protobuf"
        {
            return Err(ConfigError {
                var,
                problem: format!("floq exports OTLP over `http/protobuf` only, not `{protocol}`"),
            });
        }
    }
    let mut headers = Vec::new();
    for pair in v
        .get("OTEL_EXPORTER_OTLP_HEADERS")
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ConfigError {
                var: "OTEL_EXPORTER_OTLP_HEADERS",
                problem: "must be `key=value` pairs separated by commas".into(),
            });
        };
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8_lossy()
            .into_owned();
        headers.push((key.trim().to_string(), Secret::new(value)));
    }
    Ok(Some(Otel {
        traces_endpoint: endpoint,
        service_name: v.get("OTEL_SERVICE_NAME").map(str::to_string),
        headers,
        schedule_delay: Duration::from_millis(v.parse_in("OTEL_BSP_SCHEDULE_DELAY", 5000, 1..=600_000)?),
        timeout: Duration::from_millis(v.parse_in("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, 1..=600_000)?),
    }))
}

/// Where the scheduler also writes every sealed audit entry, one JSON line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(std::path::PathBuf),
}

fn check_hex(var: &'static str, value: &str, len: usize) -> Result<(), ConfigError> {
    if value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ConfigError {
            var,
            problem: format!("must be {len} hexadecimal characters (generate with `floq-api admin gen-keys`)"),
        })
    }
}

struct Vars(HashMap<String, String>);

impl Vars {
    fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    fn required(&self, var: &'static str) -> Result<String, ConfigError> {
        self.get(var).map(str::to_string).ok_or(ConfigError {
            var,
            problem: "is required but not set".into(),
        })
    }

    /// An optional bearer token: long enough not to guess, and only characters a
    /// header carries unchanged (no spaces, no commas).
    fn token(&self, var: &'static str) -> Result<Option<Secret>, ConfigError> {
        let Some(raw) = self.get(var) else { return Ok(None) };
        let printable = raw.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if raw.len() < 16 || raw.len() > 512 || !printable {
            return Err(ConfigError {
                var,
                problem: "must be 16 to 512 visible ASCII characters without commas (try `openssl rand -hex 32`)"
                    .into(),
            });
        }
        Ok(Some(Secret::new(raw)))
    }

    fn key_material(&self) -> Result<(Secret, Secret), ConfigError> {
        let secret = self.required("FLOQ_ENC_KEY_SECRET")?;
        let salt = self.required("FLOQ_ENC_KEY_SALT")?;
        check_hex("FLOQ_ENC_KEY_SECRET", &secret, crate::crypto::SECRET_HEX_LEN)?;
        check_hex("FLOQ_ENC_KEY_SALT", &salt, crate::crypto::SALT_HEX_LEN)?;
        Ok((Secret::new(secret), Secret::new(salt)))
    }

    fn old_keys(&self, var: &'static str) -> Result<Vec<(Secret, Secret)>, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(vec![]);
        };
        raw.split(',')
            .map(|pair| {
                let (secret, salt) = pair.trim().split_once(':').ok_or(ConfigError {
                    var,
                    problem: "must be a comma-separated list of `secret:salt` pairs".into(),
                })?;
                check_hex(var, secret, crate::crypto::SECRET_HEX_LEN)?;
                check_hex(var, salt, crate::crypto::SALT_HEX_LEN)?;
                Ok((Secret::new(secret), Secret::new(salt)))
            })
            .collect()
    }

    fn audit_sink(&self, var: &'static str) -> Result<Option<AuditSink>, ConfigError> {
        match self.get(var) {
            None | Some("off") => Ok(None),
            Some("stdout") => Ok(Some(AuditSink::Stdout)),
            Some(other) => match other.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Some(AuditSink::File(path.into()))),
                _ => Err(ConfigError {
                    var,
                    problem: format!("must be `off`, `stdout` or `file:/path`, got `{other}`"),
                }),
            },
        }
    }

    fn parse<T: std::str::FromStr>(&self, var: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        let raw = self.get(var).unwrap_or(default);
        raw.parse().map_err(|e| ConfigError {
            var,
            problem: format!("cannot parse `{raw}`: {e}"),
        })
    }

    fn parse_in<T>(&self, var: &'static str, default: T, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value = self.parse(var, &default.to_string())?;
        if !range.contains(&value) {
            return Err(ConfigError {
                var,
                problem: format!("must be between {} and {}, got {value}", range.start(), range.end()),
            });
        }
        Ok(value)
    }

    /// A comma-separated list of `scheme://host[:port]` origins; `*` is refused
    /// because credentials (cookies) are allowed.
    fn origins(&self, var: &'static str) -> Result<Vec<String>, ConfigError> {
        let Some(raw) = self.get(var) else { return Ok(vec![]) };
        raw.split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|raw| {
                let o = raw.trim_end_matches('/');
                let ok = (o.starts_with("https://") || o.starts_with("http://"))
                    && !o.contains(['*', ' '])
                    && o.splitn(4, '/').count() == 3;
                if ok {
                    Ok(o.to_string())
                } else {
                    Err(ConfigError {
                        var,
                        problem: format!(
                            "`{raw}` is not an origin like https://app.example.com (no paths, no wildcards)"
                        ),
                    })
                }
            })
            .collect()
    }

    fn smtp_url(&self, var: &'static str) -> Result<Option<Secret>, ConfigError> {
        let Some(raw) = self.get(var).map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        // Never echo the value: it may hold the relay's password.
        let ok = ["smtp://", "smtps://", "smtp+starttls://"]
            .iter()
            .any(|s| raw.starts_with(s) && raw.len() > s.len());
        if !ok {
            return Err(ConfigError {
                var,
                problem: "must be an smtp://, smtps:// or smtp+starttls:// URL".into(),
            });
        }
        Ok(Some(Secret::new(raw)))
    }

    fn mail_from(&self, var: &'static str) -> Result<String, ConfigError> {
        let raw = self.string(var, "floq <no-reply@floq.localhost>");
        raw.parse::<lettre::message::Mailbox>().map_err(|_| ConfigError {
            var,
            problem: format!("`{raw}` is not a mailbox like `floq <no-reply@example.com>`"),
        })?;
        Ok(raw)
    }

    fn public_url(&self, var: &'static str) -> Result<String, ConfigError> {
        let raw = self.string(var, "http://127.0.0.1:8080");
        let url = raw.trim_end_matches('/');
        let ok = (url.starts_with("https://") || url.starts_with("http://"))
            && url.split_once("//").is_some_and(|(_, rest)| !rest.is_empty())
            && !url.contains([' ', '?', '#']);
        if !ok {
            return Err(ConfigError {
                var,
                problem: format!("`{raw}` is not a URL like https://floq.example.com"),
            });
        }
        Ok(url.to_string())
    }

    fn ip_list(&self, var: &'static str) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        let Some(raw) = self.get(var) else { return Ok(vec![]) };
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse().map_err(|_| ConfigError {
                    var,
                    problem: format!("`{s}` is not an IP address"),
                })
            })
            .collect()
    }

    fn millis(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.parse_in(var, default, 1..=86_400_000)?))
    }

    fn seconds(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.parse_in(var, default, 1..=31_536_000)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, String> {
        HashMap::from([
            ("FLOQ_JWT_SECRET".into(), "x".repeat(40)),
            ("FLOQ_ENC_KEY_SECRET".into(), "a".repeat(256)),
            ("FLOQ_ENC_KEY_SALT".into(), "b".repeat(64)),
        ])
    }

    #[test]
    fn encryption_key_material_is_checked_at_start() {
        let mut vars = base();
        vars.insert("FLOQ_ENC_KEY_SALT".into(), "b".repeat(63));
        let e = Config::from_vars(vars).unwrap_err();
        assert_eq!(e.var, "FLOQ_ENC_KEY_SALT");
        let mut vars = base();
        vars.remove("FLOQ_ENC_KEY_SECRET");
        assert_eq!(Config::from_vars(vars).unwrap_err().var, "FLOQ_ENC_KEY_SECRET");
        let mut vars = base();
        vars.insert(
            "FLOQ_ENC_OLD_KEYS".into(),
            format!("{}:{}", "c".repeat(256), "d".repeat(64)),
        );
        assert_eq!(Config::from_vars(vars).unwrap().enc_old_keys.len(), 1);
        let mut vars = base();
        vars.insert("FLOQ_ENC_OLD_KEYS".into(), "nope".into());
        assert_eq!(Config::from_vars(vars).unwrap_err().var, "FLOQ_ENC_OLD_KEYS");
    }

    #[test]
    fn defaults_load_when_only_the_secret_is_set() {
        let c = Config::from_vars(base()).unwrap();
        assert_eq!(c.queue_prefix, "floq");
        assert_eq!(c.body_limit_bytes, 1 << 20);
        assert_eq!((c.queue_shards, c.worker_company_concurrency), (8, 128));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn the_company_concurrency_follows_the_prefetch_unless_set() {
        let mut vars = base();
        vars.insert("FLOQ_WORKER_PREFETCH".into(), "51".into());
        assert_eq!(Config::from_vars(vars.clone()).unwrap().worker_company_concurrency, 26);
        vars.insert("FLOQ_WORKER_COMPANY_CONCURRENCY".into(), "3".into());
        assert_eq!(Config::from_vars(vars.clone()).unwrap().worker_company_concurrency, 3);
        vars.insert("FLOQ_QUEUE_SHARDS".into(), "0".into());
        assert_eq!(Config::from_vars(vars).unwrap_err().var, "FLOQ_QUEUE_SHARDS");
    }

    #[test]
    fn platform_mail_is_optional_and_checked() {
        let c = Config::from_vars(base()).unwrap();
        assert!(c.smtp_url.is_none());
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        let mut vars = base();
        vars.insert("FLOQ_SMTP_URL".into(), "http://user:hunter2@relay".into());
        let e = Config::from_vars(vars).unwrap_err();
        assert_eq!(e.var, "FLOQ_SMTP_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let mut vars = base();
        vars.insert("FLOQ_MAIL_FROM".into(), "not a mailbox".into());
        assert_eq!(Config::from_vars(vars).unwrap_err().var, "FLOQ_MAIL_FROM");
        let mut vars = base();
        vars.insert("FLOQ_PUBLIC_URL".into(), "floq.example.com".into());
        assert_eq!(Config::from_vars(vars).unwrap_err().var, "FLOQ_PUBLIC_URL");
        let mut vars = base();
        vars.insert("FLOQ_SMTP_URL".into(), "smtps://u:p@relay.example.com".into());
        vars.insert("FLOQ_PUBLIC_URL".into(), "https://floq.example.com/".into());
        let c = Config::from_vars(vars).unwrap();
        assert!(c.smtp_url.is_some());
        assert!(!c.describe().contains("u:p@"), "the relay's credentials never print");
        assert_eq!(c.public_url, "https://floq.example.com");
    }

    #[test]
    fn a_missing_secret_names_the_variable() {
        let e = Config::from_vars(HashMap::new()).unwrap_err();
        assert_eq!(e.to_string(), "FLOQ_JWT_SECRET: is required but not set");
    }

    #[test]
    fn a_malformed_value_names_the_variable() {
        let mut vars = base();
        vars.insert("FLOQ_WORKER_PREFETCH".into(), "lots".into());
        let e = Config::from_vars(vars).unwrap_err();
        assert!(
            e.to_string().starts_with("FLOQ_WORKER_PREFETCH: cannot parse `lots`"),
            "{e}"
        );
    }

    #[test]
    fn cors_origins_refuse_wildcards_and_paths() {
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/ui",
            "app.example.com",
        ] {
            let mut vars = base();
            vars.insert("FLOQ_CORS_ORIGINS".into(), bad.into());
            let e = Config::from_vars(vars).unwrap_err();
            assert_eq!(e.var, "FLOQ_CORS_ORIGINS", "{bad}");
        }
        let mut vars = base();
        vars.insert(
            "FLOQ_CORS_ORIGINS".into(),
            "https://a.example.com/, http://localhost:5173".into(),
        );
        let c = Config::from_vars(vars).unwrap();
        assert_eq!(c.cors_origins, vec!["https://a.example.com", "http://localhost:5173"]);
    }

    #[test]
    fn a_bad_egress_entry_names_the_variable_and_the_entry() {
        let mut vars = base();
        vars.insert("FLOQ_EGRESS_ALLOW".into(), "127.0.0.1, http://nope".into());
        let e = Config::from_vars(vars).unwrap_err();
        assert_eq!(e.var, "FLOQ_EGRESS_ALLOW");
        assert!(e.problem.contains("http://nope"), "{e}");
    }

    #[test]
    fn a_bad_oauth_provider_file_names_the_variable_and_the_entry() {
        let dir = std::env::temp_dir().join(format!("floq-oauth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("providers.json");
        std::fs::write(
            &file,
            r#"[{"id": "Bad Id", "name": "x", "authorize_url": "https://a.example/a",
                                   "token_url": "https://a.example/t", "api_origins": ["https://a.example"]}]"#,
        )
        .unwrap();
        let mut vars = base();
        vars.insert("FLOQ_OAUTH_PROVIDERS_FILE".into(), file.display().to_string());
        let e = Config::from_vars(vars.clone()).unwrap_err();
        assert_eq!(e.var, "FLOQ_OAUTH_PROVIDERS_FILE");
        assert!(e.problem.contains("[0].id"), "{e}");
        std::fs::write(
            &file,
            r#"[{"id": "acme", "name": "Acme", "authorize_url": "https://a.example/a",
                                   "token_url": "https://a.example/t", "api_origins": ["https://a.example"]}]"#,
        )
        .unwrap();
        assert_eq!(Config::from_vars(vars.clone()).unwrap().oauth_providers[0].id, "acme");
        vars.insert(
            "FLOQ_OAUTH_PROVIDERS_FILE".into(),
            dir.join("missing.json").display().to_string(),
        );
        assert!(Config::from_vars(vars).unwrap_err().problem.contains("cannot read"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn secrets_never_print() {
        let mut vars = base();
        vars.insert("FLOQ_METRICS_TOKEN".into(), "m".repeat(32));
        let c = Config::from_vars(vars).unwrap();
        assert!(!c.describe().contains(&"x".repeat(40)));
        assert!(!c.describe().contains(&"m".repeat(32)));
    }

    #[test]
    fn metrics_listen_apart_and_a_metrics_token_is_checked() {
        let c = Config::from_vars(base()).unwrap();
        assert_eq!(c.api_metrics_addr.to_string(), "127.0.0.1:8083");
        assert!(c.metrics_token.is_none());
        for bad in ["short", "has a space in it here", "comma,comma,comma,comma"] {
            let mut vars = base();
            vars.insert("FLOQ_METRICS_TOKEN".into(), bad.into());
            assert_eq!(Config::from_vars(vars).unwrap_err().var, "FLOQ_METRICS_TOKEN", "{bad}");
        }
    }
}
