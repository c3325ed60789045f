//! Private PostgreSQL and RabbitMQ instances for the fault tests: their own
//! ports, data, socket, log and home directories under a scratch directory,
//! so a test may stop, restart or `kill -9` them. The machine's shared
//! instances (5432, 5672) are never touched. Both are torn down when their
//! value is dropped, also when the test panics.
//!
//! PostgreSQL: `initdb --auth=trust` and `pg_ctl` as the `postgres` user
//! (they refuse to run as root), superuser `postgres`, no password, on
//! 127.0.0.1 only. RabbitMQ: the Debian package's own server script with a
//! node name, ports and directories of its own (see
//! `/work/shared/notes/stack.md` "Services"); epmd is shared with the system node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

/// A TCP port nothing listens on right now (the OS picks it; a race with
/// another process taking it before us is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A fresh scratch directory, named after the test run so that a leftover is recognisable.
fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "floq-fault-{}-{what}-{}",
        *crate::RUN_ID,
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command to completion with its output in `log`; panics with the log's tail when it fails.
fn run_logged(mut cmd: Command, log: &Path) {
    let file = std::fs::File::create(log).expect("log file");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed ({status}):\n{}", tail(log));
}

/// The last lines of a log file, for a failure message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

pub struct PrivatePostgres {
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    bindir: PathBuf,
    as_postgres: bool,
    pub port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a throw-away cluster (well under a second).
    pub fn start() -> Self {
        let pg = Self::unstarted(pg_bindir(), is_root());
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
        run_logged(initdb, &pg.root.join("initdb.log"));
        pg.start_again();
        pg
    }

    /// A server's directories and port, before it has a data directory. As root, the files
    /// belong to `postgres` (the server refuses to run as root).
    fn unstarted(bindir: PathBuf, as_postgres: bool) -> Self {
        let root = scratch("pg");
        let (data, socket) = (root.join("data"), root.join("socket"));
        std::fs::create_dir_all(&socket).expect("socket directory");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .expect("chown");
            assert!(status.success(), "cannot chown {} to postgres", root.display());
        }
        PrivatePostgres {
            root,
            data,
            socket,
            bindir,
            as_postgres,
            port: free_port(),
        }
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started on a port of its own.
    pub fn replica_of(primary: &PrivatePostgres) -> Self {
        let replica = Self::unstarted(primary.bindir.clone(), primary.as_postgres);
        let mut backup = replica.command("pg_basebackup");
        backup
            .arg("-D")
            .arg(&replica.data)
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-X", "stream", "-R", "-c", "fast"]);
        run_logged(backup, &replica.root.join("basebackup.log"));
        replica.start_again();
        replica
    }

    /// Promotes a replica to primary (`pg_ctl promote`), waiting until it accepts writes.
    pub fn promote(&self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D").arg(&self.data).args(["-w", "-t", "60", "promote"]);
        run_logged(ctl, &self.root.join("pg_ctl-promote.log"));
    }

    fn command(&self, tool: &str) -> Command {
        let bin = self.bindir.join(tool);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(bin);
            cmd
        } else {
            Command::new(bin)
        }
    }

    /// The URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server on its port again (after [`stop`](Self::stop) or [`kill`](Self::kill)).
    pub fn start_again(&self) {
        let mut ctl = self.command("pg_ctl");
        // fsync off: the machine is shared and only processes crash here, never the OS.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.socket.display()
        );
        ctl.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.root.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run_logged(ctl, &self.root.join("pg_ctl.log"));
    }

    /// A clean, fast shutdown (`pg_ctl stop -m fast`): clients are disconnected.
    pub fn stop(&self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", "fast", "stop"]);
        run_logged(ctl, &self.root.join("pg_ctl-stop.log"));
    }

    /// `kill -9` of the postmaster; its backends exit on their own and the next
    /// start runs crash recovery.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            kill("-KILL", pid);
            for _ in 0..200 {
                if !alive(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("postgres.log")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = ctl.status();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The newest installed server binaries (Debian keeps them out of PATH).
fn pg_bindir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin")
}

pub struct PrivateRabbit {
    root: PathBuf,
    node: String,
    pub port: u16,
    dist_port: u16,
}

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

impl PrivateRabbit {
    /// Creates and starts a node of its own (about 6 s).
    pub fn start() -> Self {
        let root = scratch("rabbit");
        for dir in ["mnesia", "log", "home"] {
            std::fs::create_dir_all(root.join(dir)).expect("rabbit directory");
        }
        std::fs::write(root.join("rabbitmq.conf"), "loopback_users = none\n").expect("rabbitmq.conf");
        std::fs::write(root.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        std::fs::write(root.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        let tag = &Uuid::new_v4().simple().to_string()[..12];
        let rabbit = PrivateRabbit {
            node: format!("floqfault{tag}@localhost"),
            port: free_port(),
            dist_port: free_port(),
            root,
        };
        rabbit.start_again();
        rabbit
    }

    /// `n` nodes of one RabbitMQ cluster (a shared Erlang cookie; the others
    /// joined to the first before anything is declared, so quorum queues get
    /// a member on each node).
    pub fn start_cluster(n: usize) -> Vec<Self> {
        let cookie = Uuid::new_v4().simple().to_string().to_uppercase();
        let nodes: Vec<Self> = (0..n)
            .map(|_| {
                let root = scratch("rabbit");
                for dir in ["mnesia", "log", "home"] {
                    std::fs::create_dir_all(root.join(dir)).expect("rabbit directory");
                }
                std::fs::write(root.join("rabbitmq.conf"), "loopback_users = none\n").expect("rabbitmq.conf");
                std::fs::write(root.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
                std::fs::write(root.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
                let cookie_file = root.join("home/.erlang.cookie");
                std::fs::write(&cookie_file, &cookie).expect("erlang cookie");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&cookie_file, std::fs::Permissions::from_mode(0o400)).expect("cookie mode");
                let tag = &Uuid::new_v4().simple().to_string()[..12];
                let node = PrivateRabbit {
                    node: format!("floqcluster{tag}@localhost"),
                    port: free_port(),
                    dist_port: free_port(),
                    root,
                };
                node.start_again();
                node
            })
            .collect();
        for node in &nodes[1..] {
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", nodes[0].node.as_str()],
                vec!["start_app"],
            ] {
                let mut cmd = node.command("rabbitmqctl");
                cmd.args(["-n", &node.node]).args(&args);
                run_logged(cmd, &node.root.join("join.log"));
            }
        }
        nodes
    }

    /// This node's Erlang name (`name@localhost`).
    pub fn name(&self) -> &str {
        &self.node
    }

    /// The node leading each quorum queue whose name starts with `prefix`, as the cluster reports it.
    pub fn queue_leaders(&self, prefix: &str) -> Vec<(String, String)> {
        let mut cmd = self.command("rabbitmqctl");
        cmd.args([
            "-n",
            &self.node,
            "list_queues",
            "name",
            "leader",
            "--formatter",
            "json",
            "--quiet",
        ]);
        let out = cmd.output().expect("rabbitmqctl list_queues");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter()
            .filter_map(|r| Some((r["name"].as_str()?.to_string(), r["leader"].as_str()?.to_string())))
            .filter(|(name, _)| name.starts_with(prefix))
            .collect()
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(Path::new(RABBIT_BIN).join(tool));
        let r = &self.root;
        cmd.env("HOME", r.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", r.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", r.join("log"))
            .env("RABBITMQ_PID_FILE", r.join("rabbit.pid"))
            .env("RABBITMQ_CONFIG_FILE", r.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", r.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", r.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}");
        cmd
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node again on the same directories (its durable queues and messages come back).
    pub fn start_again(&self) {
        let _ = std::fs::remove_file(self.root.join("rabbit.pid"));
        let mut server = self.command("rabbitmq-server");
        server.arg("-detached");
        run_logged(server, &self.root.join("start.log"));
        let pid_file = self.root.join("rabbit.pid");
        let mut wait = self.command("rabbitmqctl");
        wait.args(["-n", &self.node, "wait", "--timeout", "60"]).arg(&pid_file);
        run_logged(wait, &self.root.join("wait.log"));
        let mut ready = self.command("rabbitmqctl");
        ready.args(["-n", &self.node, "await_startup", "--timeout", "60"]);
        run_logged(ready, &self.root.join("await.log"));
    }

    /// A clean stop (`rabbitmqctl stop`): clients get a connection close.
    pub fn stop(&self) {
        let mut stop = self.command("rabbitmqctl");
        stop.args(["-n", &self.node, "stop"]).arg(self.root.join("rabbit.pid"));
        run_logged(stop, &self.root.join("stop.log"));
    }

    /// `kill -9` of the Erlang VM: clients see their TCP connections reset.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            kill("-KILL", pid);
            for _ in 0..200 {
                if !alive(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    /// Freezes the VM (SIGSTOP): its sockets stay open and silent, a half-open
    /// connection as clients see it; [`resume`](Self::resume) thaws it.
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            kill("-STOP", pid);
        }
    }

    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            kill("-CONT", pid);
        }
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.root.join("rabbit.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        // A throw-away node: no clean stop needed, and a frozen one could not do one.
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
