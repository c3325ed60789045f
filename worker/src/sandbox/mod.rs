//! The worker's JavaScript sandbox: a pool of OS threads, each owning one QuickJS runtime with one hardened
//! context, created once and reused for every script the thread runs.
//!
//! Isolation between scripts rests on the context being hardened before any user code runs (no `eval`/`Function`,
//! every reachable built-in and `globalThis` deep-frozen, see `prelude.rs`), on each script being compiled as a
//! function that cannot retain state, and on the runtime's memory, stack and wall-clock limits.

mod engine;
mod helpers;
mod prelude;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use self::engine::{Engine, Flow};
use floq_shared::script::ScriptKind;
use floq_shared::telemetry::METRICS;

/// Interrupted by the wall-clock cap.
pub const CODE_TIMEOUT: &str = "sandbox_timeout";
/// Out of memory, string too long, or the JS call stack exhausted.
pub const CODE_MEMORY: &str = "sandbox_memory";
/// The script threw, or did not compile.
pub const CODE_ERROR: &str = "sandbox_error";
/// The result is not JSON (function, symbol, BigInt, cycle, Promise) or is larger than the output limit.
pub const CODE_OUTPUT: &str = "sandbox_output";

/// Native stack of each pool thread; QuickJS recursion is bounded by `Limits::stack_bytes` well below it.
const NATIVE_STACK_BYTES: usize = 8 << 20;
/// How long past a task's combined deadlines the caller waits before declaring the thread stuck. Interrupts end
/// scripts within milliseconds; this only catches native loops QuickJS does not interrupt.
const STUCK_GRACE: Duration = Duration::from_millis(500);
/// Per-job allowance on top of its deadline for compiling, serialising and recovering.
const PER_JOB_SLACK: Duration = Duration::from_millis(20);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Heap cap of each thread's runtime.
    pub memory_bytes: usize,
    /// JS stack cap of each thread's runtime.
    pub stack_bytes: usize,
    /// Largest accepted result, as UTF-8 JSON text.
    pub max_output_bytes: usize,
    /// Threads stuck in native code the pool replaces before it declares itself exhausted
    /// (`FLOQ_SANDBOX_MAX_ABANDONED`).
    pub max_abandoned: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            stack_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
            max_abandoned: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SandboxError {
    /// One of `CODE_TIMEOUT`, `CODE_MEMORY`, `CODE_ERROR`, `CODE_OUTPUT`.
    pub code: &'static str,
    pub message: String,
    /// 1-based line within the user's source, when known.
    pub line: Option<u32>,
}

pub type JobResult = Result<serde_json::Value, SandboxError>;

#[derive(Clone, Debug)]
pub struct Job {
    pub source: Arc<str>,
    pub kind: ScriptKind,
    pub timeout: Duration,
}

/// A handle to the pool; clones share it. The threads stop once every clone is dropped and their work is done.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    sender: mpsc::Sender<Task>,
    shared: Arc<Shared>,
}

struct Shared {
    receiver: Mutex<mpsc::Receiver<Task>>,
    limits: Limits,
    /// Threads abandoned in native code and still running it.
    stuck: AtomicUsize,
    /// Cancelled once more than `Limits::max_abandoned` threads are stuck at once: the process should drain and
    /// exit, since only ending it frees them.
    exhausted: CancellationToken,
    /// Engines built so far (each a runtime and a hardened context, milliseconds of work): one per
    /// thread, plus one per rebuild. Tests use it to prove the pool reuses them.
    engines_built: AtomicUsize,
}

struct Task {
    scope: Arc<serde_json::Value>,
    jobs: Vec<Job>,
    /// Set once the caller stops waiting: the scripts are interrupted.
    abort: Arc<AtomicBool>,
    started: oneshot::Sender<Arc<Worker>>,
    reply: oneshot::Sender<Vec<JobResult>>,
}

/// What the caller knows about the thread running its task.
#[derive(Default)]
struct Worker {
    /// Set when a replacement was started for this thread; it exits after its current task.
    replaced: AtomicBool,
}

impl Sandbox {
    /// `threads` OS threads (each with an 8 MiB native stack), each owning one rquickjs Runtime + one hardened
    /// Context, created once and reused.
    ///
    /// # Panics
    /// If the operating system refuses to start the threads.
    pub fn new(threads: usize, limits: Limits) -> Self {
        let threads = threads.max(1);
        let (sender, receiver) = mpsc::channel();
        let shared = Arc::new(Shared {
            receiver: Mutex::new(receiver),
            limits,
            stuck: AtomicUsize::new(0),
            exhausted: CancellationToken::new(),
            engines_built: AtomicUsize::new(0),
        });
        METRICS.sandbox_threads.add(threads as i64);
        for _ in 0..threads {
            spawn_thread(Arc::clone(&shared)).expect("cannot start sandbox threads");
        }
        Sandbox {
            inner: Arc::new(Inner { sender, shared }),
        }
    }

    /// Cancelled when more threads are stuck in uninterruptible native code than `Limits::max_abandoned`.
    pub fn exhausted(&self) -> CancellationToken {
        self.inner.shared.exhausted.clone()
    }

    /// Threads abandoned in native code and still running it.
    pub fn stuck_threads(&self) -> usize {
        self.inner.shared.stuck.load(Ordering::Relaxed)
    }

    pub fn engines_built(&self) -> usize {
        self.inner.shared.engines_built.load(Ordering::Relaxed)
    }

    /// Runs `jobs` in order on one pool thread against ONE scope, parsed once; `scope` is a JSON object with keys
    /// `$input`, `$node`, `$vars`, `$run` (a missing key is `null`). Each job gets its own wall-clock deadline.
    /// Returns one result per job.
    ///
    /// The scope's values are deep-frozen: scripts read them but cannot modify them.
    pub async fn run(&self, scope: Arc<serde_json::Value>, jobs: Vec<Job>) -> Vec<JobResult> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let count = jobs.len();
        let longest = jobs.iter().map(|j| j.timeout).max().unwrap_or_default();
        let budget = jobs.iter().fold(longest.saturating_add(STUCK_GRACE), |total, job| {
            total.saturating_add(job.timeout).saturating_add(PER_JOB_SLACK)
        });
        let (started, started_rx) = oneshot::channel();
        let (reply, reply_rx) = oneshot::channel();
        // A caller that drops this future (its run was cancelled, passed its deadline or its node timed out) frees
        // the thread: the interrupt handler sees the flag, as it sees a passed deadline.
        let abort = AbortOnDrop(Arc::new(AtomicBool::new(false)));
        if self
            .inner
            .sender
            .send(Task {
                scope,
                jobs,
                abort: Arc::clone(&abort.0),
                started,
                reply,
            })
            .is_err()
        {
            return failed(count, "the sandbox has shut down");
        }
        // Time spent queued for a free thread is not the script's: the watchdog starts with the task.
        let Ok(worker) = started_rx.await else {
            return failed(count, "the sandbox thread stopped");
        };
        let _busy = Busy::start();
        match tokio::time::timeout(budget, reply_rx).await {
            Ok(Ok(results)) => results,
            Ok(Err(_)) => failed(count, "the sandbox thread stopped"),
            Err(_) => {
                self.inner.shared.replace(&worker);
                (0..count)
                    .map(|_| {
                        Err(SandboxError {
                            code: CODE_TIMEOUT,
                            message: "the script did not finish within its time limit and could not be interrupted"
                                .to_owned(),
                            line: None,
                        })
                    })
                    .collect()
            }
        }
    }
}

/// Counts a thread in `floq_sandbox_threads_busy` while a task runs on it (or is abandoned on it).
struct Busy;

impl Busy {
    fn start() -> Self {
        METRICS.sandbox_threads_busy.inc();
        Self
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        METRICS.sandbox_threads_busy.dec();
    }
}

struct AbortOnDrop(Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Shared {
    /// A thread stuck in native code cannot be stopped, only abandoned: the pool keeps its capacity by starting
    /// another, counts it, and past `max_abandoned` threads stuck at once reports itself exhausted (the process
    /// then drains and exits so its supervisor restarts it: ending the process is the only way to free them).
    fn replace(self: &Arc<Self>, worker: &Worker) {
        // Only the caller whose task the thread runs gets here, once: the thread leaves after that task.
        if worker.replaced.load(Ordering::Acquire) {
            return;
        }
        METRICS.sandbox_abandoned_threads.inc();
        // Counted before it is marked, so the thread (which uncounts itself once it sees the mark) never goes below.
        let stuck = self.stuck.fetch_add(1, Ordering::AcqRel) + 1;
        worker.replaced.store(true, Ordering::Release);
        if stuck > self.limits.max_abandoned {
            if !self.exhausted.is_cancelled() {
                tracing::error!(
                    stuck,
                    max = self.limits.max_abandoned,
                    "sandbox exhausted: more threads are stuck in native code that ignores the script deadline than \
                     FLOQ_SANDBOX_MAX_ABANDONED allows; the worker drains and exits so that its supervisor restarts it"
                );
            }
            self.exhausted.cancel();
        } else {
            tracing::warn!(
                stuck,
                max = self.limits.max_abandoned,
                "a sandbox thread could not be interrupted at its deadline; abandoned and replaced"
            );
        }
        // Past the limit the process is going away; until it has drained, the other tenants still get threads.
        if spawn_thread(Arc::clone(self)).is_err() {
            tracing::error!("cannot start a replacement sandbox thread");
        }
    }
}

fn failed(count: usize, message: &str) -> Vec<JobResult> {
    (0..count)
        .map(|_| {
            Err(SandboxError {
                code: CODE_ERROR,
                message: message.to_owned(),
                line: None,
            })
        })
        .collect()
}

fn spawn_thread(shared: Arc<Shared>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("floq-sandbox".to_owned())
        .stack_size(NATIVE_STACK_BYTES)
        .spawn(move || thread_main(&shared))
        .map(drop)
}

/// Starts a replacement if the thread dies by panicking, so a bug costs one task rather than pool capacity.
struct RespawnOnPanic<'a>(&'a Arc<Shared>);

impl Drop for RespawnOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = spawn_thread(Arc::clone(self.0));
        }
    }
}

fn thread_main(shared: &Arc<Shared>) {
    let _respawn = RespawnOnPanic(shared);
    let worker = Arc::new(Worker::default());
    let mut engine: Option<Engine> = None;
    loop {
        let task = shared.receiver.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(task) = task else {
            return;
        };
        if task.started.send(Arc::clone(&worker)).is_err() {
            continue;
        }
        let results = run_task(&mut engine, shared, &task.scope, &task.jobs, &task.abort);
        let _ = task.reply.send(results);
        if worker.replaced.load(Ordering::Acquire) {
            // Its replacement already runs: this thread leaves the pool.
            shared.stuck.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    }
}

fn run_task(
    engine: &mut Option<Engine>,
    shared: &Shared,
    scope: &serde_json::Value,
    jobs: &[Job],
    abort: &Arc<AtomicBool>,
) -> Vec<JobResult> {
    let limits = &shared.limits;
    let mut out = Vec::with_capacity(jobs.len());
    let scope_json = match serde_json::to_string(scope) {
        Ok(json) => json,
        Err(e) => return failed(jobs.len(), &format!("the script variables are not serialisable: {e}")),
    };
    while out.len() < jobs.len() {
        let current = match engine {
            Some(current) => current,
            None => match Engine::new(limits).inspect(|_| {
                shared.engines_built.fetch_add(1, Ordering::Relaxed);
            }) {
                Ok(fresh) => engine.insert(fresh),
                Err(err) => {
                    out.extend(jobs[out.len()..].iter().map(|_| Err(err.clone())));
                    break;
                }
            },
        };
        let before = out.len();
        let flow = current.run(&scope_json, &jobs[before..], abort, &mut out);
        if let Flow::Rebuild = flow {
            *engine = None;
        }
        if out.len() == before {
            // Cannot happen (every run reports at least one job); stops a loop if it ever does.
            out.extend(jobs[before..].iter().map(|_| Err(engine_error())));
        }
    }
    out
}

fn engine_error() -> SandboxError {
    SandboxError {
        code: CODE_ERROR,
        message: "sandbox failure: the engine made no progress".to_owned(),
        line: None,
    }
}
