//! The QuickJS sandbox: a pool of OS threads, each owning one runtime and
//! one hardened context, created once and reused. Templates' expressions and
//! code nodes run here, never on the async runtime.
//!
//! Containment: a memory cap and a stack cap per runtime, a wall-clock cap
//! through the interrupt handler (armed per script, before compiling), no
//! `eval` or `Function` constructor by any route, no modules, no host
//! objects. Isolation: every built-in and the global object are deep-frozen
//! before any user code runs, and scripts only receive JSON parsed afresh for
//! each call, so nothing a script does survives into the next one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::{CatchResultExt, CaughtError, Context, Function, Object, Persistent, Runtime, Value as JsValue};
use serde_json::Value;
use tokio::sync::oneshot;

use floq_shared::script::{self, ScriptKind};

mod helpers;
#[cfg(test)]
mod tests;

pub struct Limits {
    pub memory_bytes: usize,
    pub stack_bytes: usize,
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            stack_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SandboxError {
    /// `sandbox_timeout`, `sandbox_memory`, `sandbox_error` or `sandbox_output`.
    pub code: &'static str,
    pub message: String,
    /// In the user's source, when the engine says.
    pub line: Option<u32>,
}

impl SandboxError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            line: None,
        }
    }
}

pub struct Job {
    pub source: Arc<str>,
    pub kind: ScriptKind,
    pub timeout: Duration,
}

type Results = Vec<Result<Value, SandboxError>>;

struct Task {
    scope: Arc<Value>,
    jobs: Vec<Job>,
    reply: oneshot::Sender<Results>,
}

#[derive(Clone)]
pub struct Sandbox {
    tasks: Arc<Mutex<mpsc::Sender<Task>>>,
    /// Engines built so far (each a runtime and a context, ~100 µs): one per
    /// thread, plus one after each memory failure.
    built: Arc<AtomicU64>,
}

/// Threads hold JavaScript recursion too: a native stack well above the JS cap.
const THREAD_STACK: usize = 16 << 20;
const CACHE_MAX: usize = 1_000;
/// Marks the sandbox's own "not JSON" errors, so they map to `sandbox_output`.
const OUTPUT_MARK: &str = "floq-output: ";

impl Sandbox {
    pub fn new(threads: usize, limits: Limits) -> Self {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let limits = Arc::new(limits);
        let built = Arc::new(AtomicU64::new(0));
        for i in 0..threads.max(1) {
            let (rx, limits, built) = (rx.clone(), limits.clone(), built.clone());
            std::thread::Builder::new()
                .name(format!("floq-sandbox-{i}"))
                .stack_size(THREAD_STACK)
                .spawn(move || serve(rx, limits, built))
                .expect("spawning a sandbox thread");
        }
        Self {
            tasks: Arc::new(Mutex::new(tx)),
            built,
        }
    }

    pub fn engines_built(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }

    /// Runs `jobs` in order against one scope (`{"$input", "$node", "$vars", "$run"}`).
    pub async fn run(&self, scope: Arc<Value>, jobs: Vec<Job>) -> Results {
        let n = jobs.len();
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tasks
            .lock()
            .map(|tx| tx.send(Task { scope, jobs, reply }).is_ok())
            .unwrap_or(false);
        let gone = || vec![Err(SandboxError::new("sandbox_error", "the sandbox is not running")); n];
        if !sent {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }
}

fn serve(rx: Arc<Mutex<mpsc::Receiver<Task>>>, limits: Arc<Limits>, built: Arc<AtomicU64>) {
    let mut engine: Option<Engine> = None;
    loop {
        let task = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(task) => task,
                Err(_) => return,
            },
            Err(_) => return,
        };
        if engine.is_none() {
            built.fetch_add(1, Ordering::Relaxed);
            engine = Engine::new(&limits)
                .map_err(|e| tracing::error!(error = %e, "the sandbox could not start"))
                .ok();
        }
        let results = match engine.as_mut() {
            Some(engine) => engine.run(&task.scope, &task.jobs),
            None => task
                .jobs
                .iter()
                .map(|_| Err(SandboxError::new("sandbox_error", "the sandbox could not start")))
                .collect(),
        };
        let _ = task.reply.send(results);
        if engine.as_ref().is_some_and(|e| e.broken) {
            // Rebuilt on the next task rather than trusted after an engine failure.
            engine = None;
        }
    }
}

/// The hardening run once per context, before any user code.
const BOOTSTRAP: &str = r#"
(() => {
    "use strict";
    const g = globalThis;
    const parse = JSON.parse, stringify = JSON.stringify;
    const getProto = Object.getPrototypeOf, freeze = Object.freeze, ownKeys = Reflect.ownKeys;
    const describe = Object.getOwnPropertyDescriptor, define = Object.defineProperty;
    const isPromise = (v) => v instanceof Promise || (v !== null && typeof v === "object" && typeof v.then === "function");
    const MARK = "floq-output: ";
    // Every way to reach a function constructor: the four prototypes' `constructor`.
    for (const f of [function () {}, async function () {}, function* () {}, async function* () {}]) {
        define(getProto(f), "constructor", { value: undefined, writable: false, enumerable: false, configurable: false });
    }
    for (const name of ["eval", "Function", "print", "console", "std", "os", "setTimeout", "clearTimeout",
                        "setInterval", "clearInterval", "queueMicrotask", "WebAssembly", "SharedArrayBuffer",
                        "Atomics", "WeakRef", "FinalizationRegistry", "require", "process", "fetch", "Deno"]) {
        delete g[name];
    }
    const toJson = (value) => {
        if (value === undefined) return "null";
        const t = typeof value;
        if (t === "function" || t === "symbol" || t === "bigint") throw new Error(MARK + "the result is a " + t + ", not JSON");
        if (isPromise(value)) throw new Error(MARK + "the result is a Promise: scripts are synchronous");
        try {
            return stringify(value);
        } catch (e) {
            throw new Error(MARK + "the result is not JSON (" + (e && e.message) + ")");
        }
    };
    const invoke = (fn, scope, helpers) => toJson(fn(scope.$input, scope.$node, scope.$vars, scope.$run, helpers));
    const seen = new Set();
    const deepFreeze = (o) => {
        if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) return;
        seen.add(o);
        freeze(o);
        for (const key of ownKeys(o)) {
            const d = describe(o, key);
            if (d) { deepFreeze(d.value); deepFreeze(d.get); deepFreeze(d.set); }
        }
        deepFreeze(getProto(o));
    };
    deepFreeze(g);
    return [parse, invoke, deepFreeze];
})()
"#;

struct Engine {
    // Field order is drop order: every persistent value before its context, the context before its runtime.
    compiled: HashMap<(ScriptKind, Arc<str>), Persistent<Function<'static>>>,
    parse: Persistent<Function<'static>>,
    invoke: Persistent<Function<'static>>,
    helpers: Persistent<Object<'static>>,
    context: Context,
    runtime: Runtime,
    deadline: Arc<AtomicU64>,
    epoch: Instant,
    max_output: usize,
    broken: bool,
}

const DISARMED: u64 = u64::MAX;

impl Engine {
    fn new(limits: &Limits) -> Result<Self, String> {
        let runtime = Runtime::new().map_err(|e| e.to_string())?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.stack_bytes);
        let deadline = Arc::new(AtomicU64::new(DISARMED));
        let epoch = Instant::now();
        {
            let deadline = deadline.clone();
            // An interrupt cannot be caught by the script: try/finally and catch do not help it.
            runtime.set_interrupt_handler(Some(Box::new(move || {
                let at = deadline.load(Ordering::Relaxed);
                at != DISARMED && epoch.elapsed().as_nanos() as u64 > at
            })));
        }
        let context = Context::full(&runtime).map_err(|e| e.to_string())?;
        let (parse, invoke, helpers) = context.with(|ctx| -> Result<_, String> {
            let helpers = helpers::object(&ctx).map_err(|e| e.to_string())?;
            let parts: rquickjs::Array = ctx
                .eval(BOOTSTRAP)
                .catch(&ctx)
                .map_err(|e| format!("bootstrapping the sandbox failed: {e}"))?;
            let get = |i: usize| -> Result<Function, String> { parts.get(i).map_err(|e| e.to_string()) };
            let deep_freeze = get(2)?;
            deep_freeze
                .call::<_, ()>((helpers.clone(),))
                .catch(&ctx)
                .map_err(|e| e.to_string())?;
            Ok((
                Persistent::save(&ctx, get(0)?),
                Persistent::save(&ctx, get(1)?),
                Persistent::save(&ctx, helpers),
            ))
        })?;
        Ok(Self {
            compiled: HashMap::new(),
            parse,
            invoke,
            helpers,
            context,
            runtime,
            deadline,
            epoch,
            max_output: limits.max_output_bytes,
            broken: false,
        })
    }

    fn arm(&self, timeout: Duration) {
        let at = self.epoch.elapsed().saturating_add(timeout).as_nanos() as u64;
        self.deadline.store(at, Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(DISARMED, Ordering::Relaxed);
    }

    fn timed_out(&self) -> bool {
        let at = self.deadline.load(Ordering::Relaxed);
        at != DISARMED && self.epoch.elapsed().as_nanos() as u64 > at
    }

    fn run(&mut self, scope: &Value, jobs: &[Job]) -> Results {
        let scope_text = match serde_json::to_string(scope) {
            Ok(t) => t,
            Err(e) => {
                return jobs
                    .iter()
                    .map(|_| Err(SandboxError::new("sandbox_error", e.to_string())))
                    .collect();
            }
        };
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            self.arm(job.timeout);
            let result = self.run_one(&scope_text, job);
            self.disarm();
            match &result {
                // An exhausted heap or stack may leave the engine in a state not worth trusting.
                Err(e) if e.code == "sandbox_memory" => self.broken = true,
                // Reclaim whatever a failed script left behind before the next one.
                Err(_) => self.runtime.run_gc(),
                Ok(_) => {}
            }
            results.push(result);
        }
        if self.compiled.len() > CACHE_MAX {
            self.compiled.clear();
        }
        results
    }

    fn run_one(&mut self, scope_text: &str, job: &Job) -> Result<Value, SandboxError> {
        let key = (job.kind, job.source.clone());
        let cached = self.compiled.get(&key).cloned();
        let mut fresh = None;
        let out: Result<String, Raw> = self.context.with(|ctx| {
            let function = match cached {
                Some(f) => f.restore(&ctx).map_err(Raw::engine)?,
                None => {
                    let mut options = EvalOptions::default();
                    options.filename = Some("script".into());
                    let f: Function = ctx
                        .eval_with_options(script::wrap(job.kind, &job.source), options)
                        .catch(&ctx)
                        .map_err(Raw::from)?;
                    fresh = Some(Persistent::save(&ctx, f.clone()));
                    f
                }
            };
            let restore = |p: &Persistent<Function<'static>>| p.clone().restore(&ctx).map_err(Raw::engine);
            let (parse, invoke) = (restore(&self.parse)?, restore(&self.invoke)?);
            let helpers = self.helpers.clone().restore(&ctx).map_err(Raw::engine)?;
            let scope: JsValue = parse.call((scope_text,)).catch(&ctx).map_err(Raw::from)?;
            invoke
                .call::<_, String>((function, scope, helpers))
                .catch(&ctx)
                .map_err(Raw::from)
        });
        if let Some(f) = fresh {
            self.compiled.insert(key, f);
        }
        // Classified outside the context: the runtime may not be touched while a context is entered.
        let text = out.map_err(|raw| self.classify(raw))?;
        if text.len() > self.max_output {
            return Err(SandboxError::new(
                "sandbox_output",
                format!("the result is larger than {} bytes", self.max_output),
            ));
        }
        serde_json::from_str(&text).map_err(|e| SandboxError::new("sandbox_output", e.to_string()))
    }

    fn classify(&self, raw: Raw) -> SandboxError {
        if self.timed_out() {
            return SandboxError::new("sandbox_timeout", "the script ran out of time");
        }
        if raw.thrown_nothing {
            // When the heap is exhausted QuickJS cannot even allocate its error and throws
            // null; a script's own `throw null` cannot be told apart from that.
            return SandboxError::new(
                "sandbox_memory",
                "the script exceeded its memory (or threw null or undefined)",
            );
        }
        if let Some(rest) = raw.message.strip_prefix(OUTPUT_MARK) {
            return SandboxError::new("sandbox_output", rest);
        }
        let lower = raw.message.to_ascii_lowercase();
        if raw.allocation
            || [
                "out of memory",
                "stack overflow",
                "call stack",
                "too long",
                "allocation failed",
                "invalid array buffer length",
                "invalid array length",
                "invalid string length",
            ]
            .iter()
            .any(|sign| lower.contains(sign))
        {
            return SandboxError::new(
                "sandbox_memory",
                format!("the script exceeded its memory: {}", raw.message),
            );
        }
        SandboxError {
            code: "sandbox_error",
            line: script::user_line(&raw.stack, "script"),
            message: if raw.message.is_empty() {
                "the script failed".into()
            } else {
                raw.message
            },
        }
    }
}

/// A failure as the engine reported it, carried out of the context to be classified.
struct Raw {
    message: String,
    stack: String,
    allocation: bool,
    thrown_nothing: bool,
}

impl Raw {
    fn engine(e: rquickjs::Error) -> Self {
        Self {
            allocation: matches!(e, rquickjs::Error::Allocation),
            message: e.to_string(),
            stack: String::new(),
            thrown_nothing: false,
        }
    }
}

impl From<CaughtError<'_>> for Raw {
    fn from(error: CaughtError<'_>) -> Self {
        match error {
            CaughtError::Exception(e) => Self {
                message: e.message().unwrap_or_default(),
                stack: e.stack().unwrap_or_default(),
                allocation: false,
                thrown_nothing: false,
            },
            CaughtError::Value(v) => Self {
                message: describe(&v),
                stack: String::new(),
                allocation: false,
                thrown_nothing: v.is_null() || v.is_undefined(),
            },
            CaughtError::Error(e) => Self::engine(e),
        }
    }
}

/// A thrown non-Error value, as text (`throw "x"`, `throw null`).
fn describe(v: &JsValue<'_>) -> String {
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return format!("uncaught: {s}");
    }
    if v.is_null() || v.is_undefined() {
        return "uncaught null or undefined".into();
    }
    "uncaught non-error value".into()
}
