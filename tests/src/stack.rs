//! A floq deployment for the fault tests: a private PostgreSQL (always),
//! RabbitMQ private or shared, and api, worker and scheduler as processes
//! (`floq-node`) on fixed ports of their own, so each can be killed and
//! started again where it was. Everything goes when the value is dropped:
//! processes killed, private servers stopped and removed, the queues a
//! shared broker got deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::private::{PrivatePostgres, PrivateRabbit, free_port};
use crate::process::{Kind, NodeProcess};
use floq_api::admin::Bootstrapped;
use floq_shared::Config;

#[derive(Clone, Default)]
pub struct StackOptions {
    /// A RabbitMQ node of the test's own (about 6 s to start), for a test that stops or kills the broker.
    pub private_rabbit: bool,
    /// A private RabbitMQ cluster of this many nodes instead (quorum queues with a member on each);
    /// the services get every node in `FLOQ_AMQP_URL`.
    pub rabbit_cluster: usize,
    /// A streaming replica of the database, synchronous (a commit waits for it), with the services
    /// reaching the primary through [`Stack::db_switch`], so a test can fail over to the replica.
    pub pg_replica: bool,
    /// Extra or overriding `FLOQ_*` variables for every service.
    pub vars: Vec<(&'static str, String)>,
}

pub struct Stack {
    pub rabbit: Option<PrivateRabbit>,
    /// The nodes of a private cluster (`StackOptions::rabbit_cluster`).
    pub cluster: Vec<PrivateRabbit>,
    pub amqp_url: String,
    /// Every service's `FLOQ_*` environment.
    pub vars: HashMap<String, String>,
    pub config: Config,
    /// The superuser on the private database: sees every tenant's rows.
    pub pool: PgPool,
    pub admin: Bootstrapped,
    pub client: reqwest::Client,
    pub base: String,
    pub api: Option<NodeProcess>,
    pub worker: Option<NodeProcess>,
    pub scheduler: Option<NodeProcess>,
    pub logs: PathBuf,
    /// Where the services reach the database with `pg_replica`: the primary, until a fail-over retargets it.
    pub db_switch: Option<crate::forward::Switch>,
    // Dropped last: the processes above go before their servers.
    pub pg: PrivatePostgres,
    pub replica: Option<PrivatePostgres>,
}

impl Stack {
    /// Starts the servers, migrates and bootstraps (company Acme, admin
    /// `admin@acme.test`), then api, worker and scheduler.
    pub async fn start(options: StackOptions) -> Self {
        let pg = PrivatePostgres::start();
        let mut admin_conn = PgConnection::connect(&pg.url("postgres"))
            .await
            .expect("private PostgreSQL");
        sqlx::query("CREATE DATABASE floq")
            .execute(&mut admin_conn)
            .await
            .expect("create database");
        admin_conn.close().await.expect("close");
        let replica = options.pg_replica.then(|| PrivatePostgres::replica_of(&pg));
        let db_switch = match &replica {
            Some(_) => {
                // Synchronous from now on: what the primary acknowledged, the replica has.
                let mut conn = PgConnection::connect(&pg.url("postgres")).await.expect("primary");
                sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'")
                    .execute(&mut conn)
                    .await
                    .expect("synchronous replication");
                sqlx::query("SELECT pg_reload_conf()")
                    .execute(&mut conn)
                    .await
                    .expect("reload");
                conn.close().await.expect("close");
                Some(crate::forward::switch(([127, 0, 0, 1], pg.port).into()).await)
            }
            None => None,
        };
        let database_url = match &db_switch {
            Some(s) => format!("postgres://postgres@127.0.0.1:{}/floq", s.port),
            None => pg.url("floq"),
        };
        let rabbit = options.private_rabbit.then(PrivateRabbit::start);
        let cluster = if options.rabbit_cluster > 0 {
            PrivateRabbit::start_cluster(options.rabbit_cluster)
        } else {
            vec![]
        };
        let amqp_url = if cluster.is_empty() {
            rabbit.as_ref().map_or_else(crate::amqp_url, PrivateRabbit::amqp_url)
        } else {
            cluster
                .iter()
                .map(PrivateRabbit::amqp_url)
                .collect::<Vec<_>>()
                .join(",")
        };
        let prefix = format!("t{}_{}", *crate::RUN_ID, Uuid::new_v4().simple());
        let api_port = free_port();
        let mut vars: HashMap<String, String> = [
            ("FLOQ_DATABASE_URL", database_url),
            ("FLOQ_AMQP_URL", amqp_url.clone()),
            ("FLOQ_JWT_SECRET", format!("test-secret-{}", Uuid::new_v4().simple())),
            ("FLOQ_ENC_KEY_SECRET", crate::TEST_ENC_KEY.0.clone()),
            ("FLOQ_ENC_KEY_SALT", crate::TEST_ENC_KEY.1.clone()),
            ("FLOQ_QUEUE_PREFIX", prefix),
            ("FLOQ_HTTP_ADDR", format!("127.0.0.1:{api_port}")),
            ("FLOQ_API_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("FLOQ_WORKER_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("FLOQ_SCHEDULER_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("FLOQ_DB_MAX_CONNECTIONS", "8".into()),
            ("FLOQ_OUTBOX_SWEEP_AFTER_MS", "1000".into()),
            ("FLOQ_OUTBOX_SWEEP_INTERVAL_MS", "200".into()),
            ("FLOQ_AUDIT_SEAL_INTERVAL_MS", "200".into()),
            ("FLOQ_AUTO_MIGRATE", "false".into()),
            ("FLOQ_EGRESS_ALLOW", "127.0.0.1".into()),
            (
                "FLOQ_LOG",
                std::env::var("TEST_LOG").map_or_else(|_| "warn".into(), |_| "debug".into()),
            ),
            ("FLOQ_LOG_FORMAT", "pretty".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in options.vars {
            vars.insert(k.to_string(), v);
        }
        let config = Config::from_vars(vars.clone()).expect("fault-test config is valid");
        let pool = PgPool::connect(config.database_url.expose()).await.expect("pool");
        floq_shared::db::migrate(&pool).await.expect("migrations");
        let admin = floq_api::admin::bootstrap(&pool, &config, "Acme", "admin@acme.test")
            .await
            .expect("bootstrap");
        let logs = std::env::temp_dir().join(format!(
            "floq-fault-{}-logs-{}",
            *crate::RUN_ID,
            &Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&logs).expect("log directory");
        let mut stack = Stack {
            pg,
            replica,
            db_switch,
            rabbit,
            cluster,
            amqp_url,
            vars,
            config,
            pool,
            admin,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: format!("http://127.0.0.1:{api_port}"),
            api: None,
            worker: None,
            scheduler: None,
            logs,
        };
        stack.api = Some(stack.spawn(Kind::Api, &[]).await);
        stack.worker = Some(stack.spawn(Kind::Worker, &[]).await);
        stack.scheduler = Some(stack.spawn(Kind::Scheduler, &[]).await);
        stack
    }

    /// A service process with the stack's variables plus `extra` (a fail point, say); waits until healthy.
    pub async fn spawn(&self, kind: Kind, extra: &[(&str, &str)]) -> NodeProcess {
        let mut vars = self.vars.clone();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        NodeProcess::start(kind, &vars, &self.logs).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin.api_key)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin.api_key)
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates and deploys a flow; returns its id.
    pub async fn deployed_flow(&self, definition: Value) -> String {
        let (status, flow) = self
            .post("/api/v1/flows", json!({"name": "fault flow", "definition": definition}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{flow}");
        let id = flow["id"].as_str().expect("flow id").to_string();
        let (status, body) = self.post(&format!("/api/v1/flows/{id}/deploy"), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        id
    }

    /// Starts a run; `Ok(run id)` on `202`, else the status and body (a fault's answer).
    pub async fn try_start_run(&self, flow: &str, input: Value) -> Result<Uuid, (Option<StatusCode>, Value)> {
        let sent = self
            .client
            .post(format!("{}/api/v1/flows/{flow}/runs", self.base))
            .bearer_auth(&self.admin.api_key)
            .json(&json!({"input": input}))
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Err((None, Value::String(e.to_string()))),
        };
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == StatusCode::ACCEPTED {
            Ok(body["run_id"].as_str().and_then(|id| id.parse().ok()).expect("run id"))
        } else {
            Err((Some(status), body))
        }
    }

    pub async fn start_run(&self, flow: &str, input: Value) -> Uuid {
        self.try_start_run(flow, input)
            .await
            .unwrap_or_else(|e| panic!("run not accepted: {e:?}"))
    }

    /// Runs `succeeded`/`failed`/`cancelled` so far.
    pub async fn finished_runs(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed', 'cancelled')")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(0)
    }

    /// Waits (bounded) until `n` runs are final; panics with the services' logs if they are not.
    pub async fn wait_finished(&self, n: i64, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        while self.finished_runs().await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} runs finished within {bound:?}; logs in {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Processes first (kill_on_drop), then a shared broker's queues; the private servers drop after.
        self.api.take();
        self.worker.take();
        self.scheduler.take();
        if self.rabbit.is_none() && self.cluster.is_empty() {
            let url = self.amqp_url.clone();
            let topology = floq_shared::queue::Topology::from_config(&self.config);
            let parking = floq_shared::parking::Parking::new(&self.config.queue_prefix, self.config.park_after);
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(crate::remove_queues(&url, &topology, &parking));
                }
            })
            .join();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        } else {
            eprintln!("fault test failed: service logs kept in {}", self.logs.display());
        }
    }
}
