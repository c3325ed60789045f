//! floq services as processes of their own (the `floq-node` bin of this
//! crate), for faults that need a real process: `kill -9`, SIGTERM, an
//! `abort()` at a fail point. A process is killed when its value is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::private::tail;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Api,
    Worker,
    Scheduler,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Api => "api",
            Kind::Worker => "worker",
            Kind::Scheduler => "scheduler",
        }
    }

    /// The variable naming the listener that serves this service's `/healthz`.
    fn health_var(self) -> &'static str {
        match self {
            Kind::Api => "FLOQ_API_METRICS_ADDR",
            Kind::Worker => "FLOQ_WORKER_HTTP_ADDR",
            Kind::Scheduler => "FLOQ_SCHEDULER_HTTP_ADDR",
        }
    }
}

/// The `floq-node` binary: set by the integration test (`env!("CARGO_BIN_EXE_floq-node")`
/// exists only there), else found beside the test binary's `deps/` directory.
pub static NODE_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn node_bin() -> PathBuf {
    NODE_BIN
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            let dir = exe.parent().and_then(Path::parent).expect("target directory");
            dir.join("floq-node")
        })
        .clone()
}

pub struct NodeProcess {
    pub kind: Kind,
    child: Child,
    pub pid: u32,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub health: SocketAddr,
    pub log: PathBuf,
}

impl NodeProcess {
    /// Starts `floq-node <kind>` with exactly `vars` as its `FLOQ_*`
    /// environment, its output in `log_dir/<kind>-<n>.log`, and waits until
    /// it answers `/healthz` (bounded: a service that cannot start fails the test with its log).
    pub async fn start(kind: Kind, vars: &HashMap<String, String>, log_dir: &Path) -> Self {
        let health: SocketAddr = vars
            .get(kind.health_var())
            .and_then(|a| a.parse().ok())
            .filter(|a: &SocketAddr| a.port() != 0)
            .unwrap_or_else(|| panic!("{} must name a fixed port", kind.health_var()));
        let log = (1..)
            .map(|n| log_dir.join(format!("{}-{n}.log", kind.as_str())))
            .find(|p| !p.exists())
            .expect("a log name");
        let file = std::fs::File::create(&log).expect("process log");
        let mut cmd = Command::new(node_bin());
        cmd.arg(kind.as_str())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("floq-node starts");
        let pid = child.id().expect("a running child has a pid");
        let mut node = NodeProcess {
            kind,
            child,
            pid,
            health,
            log,
        };
        node.wait_healthy().await;
        node
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!(
                    "floq-node {} exited ({status}) before it was healthy; its log:\n{}",
                    self.kind.as_str(),
                    tail(&self.log)
                );
            }
            let url = format!("http://{}/healthz", self.health);
            if client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "floq-node {} not healthy after 60 s; its log:\n{}",
                self.kind.as_str(),
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` and reap.
    pub async fn kill9(mut self) -> ExitStatus {
        self.child.kill().await.expect("SIGKILL delivered");
        self.child.wait().await.expect("reaped")
    }

    /// Sends SIGTERM (the service starts its graceful shutdown).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Waits (bounded) for the process to end on its own; `None` if it did not within `bound`.
    pub async fn exited_within(&mut self, bound: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(bound, self.child.wait())
            .await
            .ok()
            .map(|s| s.expect("reaped"))
    }

    /// Whether the process has ended (an abort at a fail point, a crash).
    pub fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("child status")
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}
