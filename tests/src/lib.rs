//! Test support: boots api + worker + scheduler in-process against the real
//! PostgreSQL and RabbitMQ, each app with its own database (cloned from a
//! migrated template) and its own queue prefix, so tests run in parallel.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod accounting;
pub mod counting;
pub mod dns;
pub mod forward;
pub mod idp;
pub mod oauth_server;
pub mod openapi;
pub mod private;
pub mod process;
pub mod smtp_sink;
pub mod stack;

pub use floq_api::admin::Bootstrapped;
use floq_shared::Config;
use floq_shared::plugin::Available;

pub fn admin_database_url() -> String {
    std::env::var("FLOQ_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("FLOQ_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn database_url(name: &str) -> String {
    let base = admin_database_url();
    let cut = base.rfind('/').expect("database URL has a path");
    format!("{}/{name}", &base[..cut])
}

/// Names every database and queue prefix this test process makes, so that a
/// test run removes its own and only its own leftovers: `FLOQ_TEST_RUN_ID`
/// from `deploy/local/test.sh`, else one of our own. It starts with the Unix
/// time, which lets a later run tell a stale leftover from a live one.
pub static RUN_ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("FLOQ_TEST_RUN_ID")
        .ok()
        .filter(|id| valid_run_id(id))
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("{secs}_{}", &Uuid::new_v4().simple().to_string()[..4])
        })
});

/// `<unix seconds>_<4 hex>`, the shape test.sh's clean-up recognises.
fn valid_run_id(id: &str) -> bool {
    id.split_once('_').is_some_and(|(secs, tag)| {
        (9..=11).contains(&secs.len())
            && secs.bytes().all(|b| b.is_ascii_digit())
            && tag.len() == 4
            && tag.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// The template's name changes whenever a migration changes.
/// The role is part of it: a template is cloned by the role that built it.
fn template_name() -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    let role = url::Url::parse(&admin_database_url())
        .map(|u| u.username().to_string())
        .unwrap_or_default();
    let role = std::iter::once(role.into_bytes());
    for bytes in role.chain(floq_shared::db::MIGRATOR.iter().map(|m| m.checksum.to_vec())) {
        for b in bytes.iter() {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
    }
    format!("floq_tmpl_{hash:016x}")
}

async fn ensure_template() -> anyhow::Result<String> {
    let name = template_name();
    let mut admin = PgConnection::connect(&admin_database_url()).await?;
    // One process builds the template; the others wait here, then reuse it.
    sqlx::query("SELECT pg_advisory_lock(hashtext('floq-test-template'))")
        .execute(&mut admin)
        .await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {building} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .execute(&mut admin)
            .await?;
        let pool = PgPool::connect(&database_url(&building)).await?;
        floq_shared::db::migrate(&pool).await?;
        pool.close().await;
        // A template any CREATEDB role may clone (test.sh's role need not own
        // it), and a birth date for test.sh's clean-up of stale ones.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for statement in [
            format!("COMMENT ON DATABASE {building} IS 'floq test template, created {secs}'"),
            format!("ALTER DATABASE {building} RENAME TO {name}"),
            format!("ALTER DATABASE {name} IS_TEMPLATE true"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await?;
        }
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('floq-test-template'))")
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(name)
}

async fn create_database() -> anyhow::Result<String> {
    let template = ensure_template().await?;
    let name = format!("floq_t_{}_{}", *RUN_ID, Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_database_url()).await?;
    let mut attempt = 0;
    loop {
        // Concurrent clones of one template can collide briefly; retry.
        match sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {template}"
        )))
        .execute(&mut admin)
        .await
        {
            Ok(_) => break,
            Err(e) if attempt < 20 => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(name)
}

pub struct Service {
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Waits for the service to end on its own (a worker whose sandbox is exhausted) and returns how it ended.
    pub async fn finished(self) -> anyhow::Result<()> {
        self.handle.await.expect("service task panicked")
    }

    /// As a crash: the service's main task is dropped mid-work (its in-flight
    /// runs with it), so its broker connection closes and the deliveries it
    /// held return to the queue, marked redelivered; nothing is drained or
    /// acked.
    pub fn abort(self) {
        self.handle.abort();
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("service task panicked")
            .expect("service failed");
    }
}

#[derive(Clone, Copy)]
pub struct Options {
    pub worker: bool,
    pub scheduler: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            scheduler: true,
        }
    }
}

pub struct TestApp {
    pub base: String,
    /// The API's internal listener (`FLOQ_API_METRICS_ADDR`): `/metrics` and health.
    pub api_metrics: std::net::SocketAddr,
    pub config: Config,
    pub db_name: String,
    /// A pool on the test database as the tests' role, which has `BYPASSRLS`
    /// (test.sh's `floq_test`) or is a superuser: it sees every tenant's rows.
    /// The services under test still work as `floq_app` and the duty roles.
    pub pool: PgPool,
    pub admin: Bootstrapped,
    pub client: reqwest::Client,
    pub api: Option<Service>,
    pub worker: Option<Service>,
    pub scheduler: Option<Service>,
    /// The plugins every service of this app is started with; `config.plugins` enables some.
    pub available: Available,
    torn_down: bool,
}

/// Enables plugins in `config` as `FLOQ_PLUGINS` and `FLOQ_PLUGIN_*`
/// variables would, with the same checks.
pub fn enable_plugins(config: &mut Config, plugins: &str, settings: &[(&str, &str)]) {
    config.plugins = floq_shared::plugin::settings::enabled(Some(plugins)).expect("plugin names");
    let vars = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    config.plugin_settings =
        floq_shared::plugin::PluginSettings::from_vars(&vars, &config.plugins).expect("plugin settings");
}

/// The `{code, message}` of a finished run's failed step (asserting it failed).
pub fn failed_step(run: &Value) -> (String, String) {
    assert_eq!(run["status"], "failed", "{run}");
    let step = run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["status"] == "failed")
        .expect("a failed step");
    (
        step["error"]["code"].as_str().expect("code").to_string(),
        step["error"]["message"].as_str().expect("message").to_string(),
    )
}

/// One encryption key per test process (each test still gets its own database).
pub static TEST_ENC_KEY: std::sync::LazyLock<(String, String)> =
    std::sync::LazyLock::new(floq_shared::crypto::generate);

/// Asserts an error answer whole: exactly `{"error": {code, message,
/// details, request_id}}` with these values and a non-empty request id, so
/// a field that leaks in or goes missing fails the test.
#[track_caller]
pub fn assert_error(body: &Value, code: &str, message: &str, details: Value) {
    let request_id = &body["error"]["request_id"];
    assert!(
        request_id.as_str().is_some_and(|id| !id.is_empty()),
        "no request id: {body}"
    );
    assert_eq!(
        *body,
        json!({"error": {"code": code, "message": message, "details": details, "request_id": request_id}}),
    );
}

pub fn test_config(db_name: &str, prefix: &str) -> Config {
    let vars: HashMap<String, String> = [
        ("FLOQ_DATABASE_URL", database_url(db_name)),
        ("FLOQ_AMQP_URL", amqp_url()),
        ("FLOQ_JWT_SECRET", format!("test-secret-{}", Uuid::new_v4().simple())),
        ("FLOQ_ENC_KEY_SECRET", TEST_ENC_KEY.0.clone()),
        ("FLOQ_ENC_KEY_SALT", TEST_ENC_KEY.1.clone()),
        ("FLOQ_QUEUE_PREFIX", prefix.to_string()),
        ("FLOQ_HTTP_ADDR", "127.0.0.1:0".into()),
        ("FLOQ_WORKER_HTTP_ADDR", "127.0.0.1:0".into()),
        ("FLOQ_SCHEDULER_HTTP_ADDR", "127.0.0.1:0".into()),
        ("FLOQ_API_METRICS_ADDR", "127.0.0.1:0".into()),
        ("FLOQ_DB_MAX_CONNECTIONS", "8".into()),
        ("FLOQ_OUTBOX_SWEEP_AFTER_MS", "1000".into()),
        ("FLOQ_OUTBOX_SWEEP_INTERVAL_MS", "200".into()),
        ("FLOQ_AUDIT_SEAL_INTERVAL_MS", "200".into()),
        ("FLOQ_AUTO_MIGRATE", "false".into()),
        // Tests serve what flows call on loopback; the platform's own database,
        // broker and listeners stay denied whatever this opens.
        ("FLOQ_EGRESS_ALLOW", "127.0.0.1".into()),
        (
            "FLOQ_LOG",
            if std::env::var("TEST_LOG").is_ok() {
                "debug"
            } else {
                "off"
            }
            .into(),
        ),
        ("FLOQ_LOG_FORMAT", "pretty".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Config::from_vars(vars).expect("test config is valid")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        Self::spawn_configured(options, |_| {}).await
    }

    pub async fn spawn_configured(options: Options, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_plugged(options, floq_plugins::bundled(), tweak).await
    }

    /// As [`TestApp::spawn_configured`], every service offered `available`
    /// (what `FLOQ_PLUGINS` may enable; see [`enable_plugins`]).
    pub async fn spawn_plugged(options: Options, available: Available, tweak: impl FnOnce(&mut Config)) -> Self {
        let db_name = create_database().await.expect("creating the test database");
        let prefix = format!("t{}_{}", *RUN_ID, Uuid::new_v4().simple());
        let mut config = test_config(&db_name, &prefix);
        tweak(&mut config);
        std::mem::forget(floq_shared::telemetry::init_tracing(&config, "floq-test"));
        let pool = PgPool::connect(config.database_url.expose()).await.expect("test pool");
        let admin = floq_api::admin::bootstrap(&pool, &config, "Acme", "admin@acme.test")
            .await
            .expect("bootstrap");
        let api_shutdown = CancellationToken::new();
        let api = floq_api::spawn_with_plugins(config.clone(), api_shutdown.clone(), available.clone())
            .await
            .expect("api starts");
        let mut app = TestApp {
            base: format!("http://{}", api.addr),
            api_metrics: api.metrics_addr,
            config,
            db_name,
            pool,
            admin,
            client: reqwest::Client::new(),
            api: Some(Service {
                shutdown: api_shutdown,
                handle: api.handle,
            }),
            worker: None,
            scheduler: None,
            available,
            torn_down: false,
        };
        if options.worker {
            app.start_worker().await;
        }
        if options.scheduler {
            app.start_scheduler().await;
        }
        app
    }

    pub async fn start_worker(&mut self) -> std::net::SocketAddr {
        let shutdown = CancellationToken::new();
        let w = floq_worker::spawn_with_plugins(self.config.clone(), shutdown.clone(), self.available.clone())
            .await
            .expect("worker starts");
        self.worker = Some(Service {
            shutdown,
            handle: w.handle,
        });
        w.addr
    }

    pub async fn start_scheduler(&mut self) -> std::net::SocketAddr {
        let shutdown = CancellationToken::new();
        let s = floq_scheduler::spawn_with_plugins(self.config.clone(), shutdown.clone(), self.available.clone())
            .await
            .expect("scheduler starts");
        self.scheduler = Some(Service {
            shutdown,
            handle: s.handle,
        });
        s.addr
    }

    /// A second API replica on the same database and broker (as behind a load
    /// balancer): its base URL and the service, to `stop()` before `teardown`.
    pub async fn start_api_replica(&self) -> (String, Service) {
        self.start_api_replica_configured(|_| {}).await.0
    }

    /// As [`TestApp::start_api_replica`], with `tweak` applied to its
    /// configuration (a broker it cannot reach, say); also returns the
    /// address of its internal listener (`/metrics`, health).
    pub async fn start_api_replica_configured(
        &self,
        tweak: impl FnOnce(&mut Config),
    ) -> ((String, Service), std::net::SocketAddr) {
        let mut config = self.config.clone();
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let api = floq_api::spawn_with_plugins(config, shutdown.clone(), self.available.clone())
            .await
            .expect("api replica starts");
        (
            (
                format!("http://{}", api.addr),
                Service {
                    shutdown,
                    handle: api.handle,
                },
            ),
            api.metrics_addr,
        )
    }

    /// Another company (with its own admin) whose runs travel on another
    /// shard queue than the main company's, so a test of fairness between
    /// companies does not depend on how two random ids hash.
    pub async fn company_on_another_shard(&self) -> Bootstrapped {
        let topology = floq_shared::queue::Topology::from_config(&self.config);
        let ours = topology.shard_of(self.admin.company_id);
        for n in 0..64 {
            let company = floq_api::admin::bootstrap(
                &self.pool,
                &self.config,
                &format!("Initech {n}"),
                &format!("admin{n}@initech.test"),
            )
            .await
            .expect("bootstrap");
            if topology.shard_of(company.company_id) != ours || topology.shards.len() == 1 {
                return company;
            }
        }
        panic!("64 companies all hashed to one shard");
    }

    /// Stops the API and starts it again with `tweak` applied to the
    /// configuration (a new `FLOQ_JWT_SECRET`, new encryption keys,
    /// `FLOQ_AUTO_MIGRATE`), as an operator's redeploy would; `base` follows
    /// the new listener. API keys are signed with `FLOQ_JWT_SECRET`, so when
    /// that changes the main admin gets a fresh key.
    pub async fn restart_api(&mut self, tweak: impl FnOnce(&mut Config)) {
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
        let jwt_before = self.config.jwt_secret.expose().to_string();
        tweak(&mut self.config);
        let shutdown = CancellationToken::new();
        let api = floq_api::spawn_with_plugins(self.config.clone(), shutdown.clone(), self.available.clone())
            .await
            .expect("api restarts");
        self.base = format!("http://{}", api.addr);
        self.api_metrics = api.metrics_addr;
        self.api = Some(Service {
            shutdown,
            handle: api.handle,
        });
        if self.config.jwt_secret.expose() != jwt_before {
            let issued = floq_api::admin::issue_key(
                &self.pool,
                &self.config,
                "admin@acme.test",
                Some(self.admin.company_id),
                None,
                "api",
            )
            .await
            .expect("a key under the new FLOQ_JWT_SECRET");
            self.admin.api_key = issued.api_key;
        }
    }

    /// Another company with its own admin, in the same deployment.
    pub async fn other_company(&self) -> Bootstrapped {
        floq_api::admin::bootstrap(&self.pool, &self.config, "Globex", "admin@globex.test")
            .await
            .expect("bootstrap")
    }

    /// A member of the main company with exactly these roles.
    pub async fn member(&self, roles: &[&str]) -> Bootstrapped {
        let email = format!("{}@acme.test", Uuid::new_v4().simple());
        floq_api::admin::add_member(&self.pool, &self.config, self.admin.company_id, &email, roles)
            .await
            .expect("add member")
    }

    pub async fn request(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// Creates a credential through the API and returns its id.
    pub async fn credential(&self, key: &str, kind: &str, data: Value) -> String {
        let (status, body) = self
            .post(
                "/api/v1/credentials",
                key,
                json!({"name": format!("cred-{}", Uuid::new_v4().simple()), "type": kind, "data": data}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("credential id").to_string()
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, key, Some(body)).await
    }

    /// Creates and deploys a flow as the main admin; returns its id.
    pub async fn deployed_flow(&self, definition: Value) -> String {
        let key = self.admin.api_key.clone();
        self.deployed_flow_as(&key, definition).await
    }

    /// Creates and deploys a flow as the holder of `key`.
    pub async fn deployed_flow_as(&self, key: &str, definition: Value) -> String {
        let (status, flow) = self
            .post(
                "/api/v1/flows",
                key,
                json!({"name": "test flow", "definition": definition}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{flow}");
        let id = flow["id"].as_str().expect("flow id").to_string();
        let (status, body) = self.post(&format!("/api/v1/flows/{id}/deploy"), key, json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        id
    }

    pub async fn start_run(&self, flow_id: &str, input: Value) -> String {
        self.start_run_as(&self.admin.api_key, flow_id, input).await
    }

    pub async fn start_run_as(&self, key: &str, flow_id: &str, input: Value) -> String {
        let (status, body) = self
            .post(&format!("/api/v1/flows/{flow_id}/runs"), key, json!({"input": input}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["run_id"].as_str().expect("run id").to_string()
    }

    /// Deploys `definition`, runs it with `input` and returns the finished run.
    pub async fn run_flow(&self, definition: Value, input: Value) -> Value {
        let flow = self.deployed_flow(definition).await;
        let run = self.start_run(&flow, input).await;
        self.wait_run(&run).await
    }

    /// Deploys and runs a flow as the holder of `key` (another company's admin, say).
    pub async fn run_flow_as(&self, key: &str, definition: Value, input: Value) -> Value {
        let flow = self.deployed_flow_as(key, definition).await;
        let run = self.start_run_as(key, &flow, input).await;
        self.wait_run_as(key, &run).await
    }

    /// Polls until the run is `succeeded`, `failed` or `cancelled`.
    pub async fn wait_run(&self, run_id: &str) -> Value {
        self.wait_run_as(&self.admin.api_key, run_id).await
    }

    pub async fn wait_run_as(&self, key: &str, run_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, run) = self.get(&format!("/api/v1/runs/{run_id}"), key).await;
            assert_eq!(status, StatusCode::OK, "{run}");
            if matches!(run["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return run;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run_id} did not finish: {run}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Grants `level` on an entity to a user or group, as the main admin.
    pub async fn grant(
        &self,
        subject_type: &str,
        subject_id: impl ToString,
        entity_type: &str,
        entity_id: impl ToString,
        level: &str,
    ) {
        let (status, body) = self
            .post(
                "/api/v1/grants",
                &self.admin.api_key,
                json!({"subject_type": subject_type, "subject_id": subject_id.to_string(),
                       "entity_type": entity_type, "entity_id": entity_id.to_string(), "level": level}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Messages waiting in one of this app's queues.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let conn = floq_shared::queue::connect(&amqp_url()).await.expect("broker");
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("queue exists");
        q.message_count()
    }

    /// Stops every service, deletes the queues and drops the database.
    /// The parking queues of this app's prefix (removed with it).
    fn parking(&self) -> floq_shared::parking::Parking {
        floq_shared::parking::Parking::new(&self.config.queue_prefix, self.config.park_after)
    }

    pub async fn teardown(mut self) {
        for service in [self.api.take(), self.worker.take(), self.scheduler.take()]
            .into_iter()
            .flatten()
        {
            service.stop().await;
        }
        self.pool.close().await;
        remove_resources(
            &self.db_name,
            &floq_shared::queue::Topology::from_config(&self.config),
            &self.parking(),
        )
        .await;
        self.torn_down = true;
    }
}

/// A test that fails before `teardown` still removes its database and queues:
/// on a thread of its own, because this may run inside the test's runtime.
impl Drop for TestApp {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let (db_name, topology, parking) = (
            self.db_name.clone(),
            floq_shared::queue::Topology::from_config(&self.config),
            self.parking(),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(remove_resources(&db_name, &topology, &parking));
            }
        })
        .join();
    }
}

async fn remove_resources(db_name: &str, t: &floq_shared::queue::Topology, parking: &floq_shared::parking::Parking) {
    remove_queues(&amqp_url(), t, parking).await;
    if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// Deletes the queues and exchanges of `t` and its parking queues on the broker at `url`.
pub async fn remove_queues(url: &str, t: &floq_shared::queue::Topology, parking: &floq_shared::parking::Parking) {
    if let Ok(conn) = floq_shared::queue::connect(url).await
        && let Ok(ch) = conn.create_channel().await
    {
        let parked = std::iter::once(parking.wake.as_str()).chain(parking.delays.iter().map(|(_, q)| q.as_str()));
        for q in t.run_queues().chain([t.dead.as_str()]).chain(parked) {
            let _ = ch.queue_delete(q.into(), QueueDeleteOptions::default()).await;
        }
        for exchange in [&t.dead_exchange, &t.control] {
            let _ = ch
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = conn.close(0, "test done".into()).await;
    }
}
