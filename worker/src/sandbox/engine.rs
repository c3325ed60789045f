//! One pool thread's JavaScript engine: a runtime, a hardened context and the compiled-script cache.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::{CatchResultExt, CaughtError, Context, Ctx, Function, Object, Persistent, Runtime, Value};

use super::helpers::{Rng, raw_helpers};
use super::prelude::{PRELUDE, PRELUDE_FILE};
use super::{Job, JobResult, Limits, SandboxError};
use floq_shared::script::{ScriptKind, stack_line, user_line, wrap};

/// The file name indirect `eval` gives compiled scripts in stack traces.
const SCRIPT_FILE: &str = "<input>";
const CACHE_MAX_ENTRIES: usize = 1_000;
/// Compiled scripts live in the runtime's heap, so the cache also gets a byte budget out of the memory limit.
const CACHE_MEMORY_SHARE: usize = 16;
/// Longest array / array-like the guarded (unpolled) native loops accept: about 0.15 s of native work in an
/// unoptimised build, well under the grace the pool allows before it abandons a thread.
const MAX_ARRAY_LIKE: u32 = 1 << 20;
/// Longest typed array the unpolled native scans and copies accept (tens of milliseconds of work).
const MAX_TYPED_LENGTH: u32 = 1 << 22;
/// Longest string `normalize` and `localeCompare` accept.
const MAX_NORMALIZE: u32 = 1 << 20;
/// Largest text length times needle length a naive substring search may cost.
const MAX_SEARCH_WORK: u32 = 1 << 25;
/// Longest string `repeat`, `padStart` and `padEnd` build (they fill it character by character).
const MAX_STRING_BUILD: u32 = 1 << 24;
/// Longest decimal text `BigInt()` parses, and largest BigInt (in bits) printed or truncated: both are quadratic.
const MAX_BIGINT_TEXT: u32 = 1 << 14;
const MAX_BIGINT_BITS: u32 = 1 << 16;
/// Longest text a `$h` helper takes, and longest `formatDate` format: they run outside the memory cap.
pub(super) const MAX_HELPER_TEXT: u32 = 1 << 20;
pub(super) const MAX_DATE_FORMAT: u32 = 256;
/// Longest error message or stack the prelude hands back; user code can throw arbitrarily large strings.
const MAX_ERROR_TEXT: u32 = 16 * 1024;
/// Microtasks a script may leave behind before its runtime is considered polluted.
const MAX_MICROTASKS: u32 = 10_000;
const HEALTH_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, a heap still this full (in 1/8ths of the limit) once collected means something leaked.
const HIGH_WATER_EIGHTHS: i64 = 6;

const MEMORY_MESSAGES: [&str; 5] = [
    "out of memory",
    "string too long",
    "invalid string length",
    "Maximum call stack size exceeded",
    "stack overflow",
];

/// Whether the engine can take more work after a `run`.
pub(super) enum Flow {
    Done,
    /// Results were pushed for some jobs, but the runtime must not run anything else.
    Rebuild,
}

/// The deadline the interrupt handler enforces; armed around everything that can run user code.
#[derive(Default)]
struct Clock {
    deadline: Cell<Option<Instant>>,
    fired: Cell<bool>,
    /// The running task's caller gave up (its run was cancelled or passed its deadline): interrupt at once.
    abort: RefCell<Option<Arc<AtomicBool>>>,
}

impl Clock {
    fn arm(&self, timeout: Duration) {
        let now = Instant::now();
        // A timeout too large to represent is as good as none, but a deadline must still exist.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        self.fired.set(false);
        self.deadline.set(Some(deadline));
    }

    fn disarm(&self) {
        self.deadline.set(None);
    }

    fn expired(&self) -> bool {
        match self.deadline.get() {
            Some(deadline)
                if Instant::now() >= deadline
                    || self.abort.borrow().as_ref().is_some_and(|a| a.load(Ordering::Relaxed)) =>
            {
                self.fired.set(true);
                true
            }
            _ => false,
        }
    }
}

struct Helpers {
    prepare: Persistent<Function<'static>>,
    compile: Persistent<Function<'static>>,
    invoke: Persistent<Function<'static>>,
    describe: Persistent<Function<'static>>,
    health: Persistent<Function<'static>>,
}

type CacheKey = (ScriptKind, Arc<str>);

pub(super) struct Engine {
    // Declaration order is drop order: every `Persistent` must be released before the context, and the context
    // before the runtime, or QuickJS aborts the process when the runtime is freed.
    cache: HashMap<CacheKey, Persistent<Function<'static>>>,
    helpers: Helpers,
    context: Context,
    runtime: Runtime,
    clock: Rc<Clock>,
    rng: Rc<Rng>,
    limits: Limits,
    cache_bytes: usize,
    /// Set when a job failed: the heap may hold garbage worth collecting before the next run.
    dirty: bool,
}

impl Engine {
    pub(super) fn new(limits: &Limits) -> Result<Self, SandboxError> {
        let runtime = Runtime::new().map_err(|e| init_error(&e.to_string()))?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.stack_bytes);
        let clock = Rc::new(Clock::default());
        let handler_clock = Rc::clone(&clock);
        runtime.set_interrupt_handler(Some(Box::new(move || handler_clock.expired())));
        let context = Context::full(&runtime).map_err(|e| init_error(&e.to_string()))?;
        let rng = Rc::new(Rng::default());
        let helpers = context.with(|ctx| {
            harden(&ctx, Rc::clone(&rng))
                .catch(&ctx)
                .map_err(|e| init_error(&e.to_string()))
        })?;
        Ok(Engine {
            cache: HashMap::new(),
            helpers,
            context,
            runtime,
            clock,
            rng,
            limits: limits.clone(),
            cache_bytes: 0,
            dirty: false,
        })
    }

    /// Runs `jobs` in order, pushing one result per job onto `out`, against the scope in `scope_json`.
    /// `abort` set interrupts whatever runs as if its deadline had passed.
    pub(super) fn run(
        &mut self,
        scope_json: &str,
        jobs: &[Job],
        abort: &Arc<AtomicBool>,
        out: &mut Vec<JobResult>,
    ) -> Flow {
        *self.clock.abort.borrow_mut() = Some(Arc::clone(abort));
        let flow = self.run_jobs(scope_json, jobs, out);
        *self.clock.abort.borrow_mut() = None;
        flow
    }

    fn run_jobs(&mut self, scope_json: &str, jobs: &[Job], out: &mut Vec<JobResult>) -> Flow {
        // Preparing the scope is bounded by the most generous deadline among the jobs that will read it.
        let Some(prepare_timeout) = jobs.iter().map(|j| j.timeout).max() else {
            return Flow::Done;
        };
        let Engine {
            cache,
            helpers,
            context,
            clock,
            rng,
            limits,
            cache_bytes,
            dirty,
            ..
        } = self;
        let flow = context.with(|ctx| {
            let Ok(functions) = Functions::restore(helpers, &ctx) else {
                out.extend(
                    jobs.iter()
                        .map(|_| Err(internal("the sandbox lost its internal functions"))),
                );
                return Flow::Rebuild;
            };
            let mut runner = Runner {
                ctx: &ctx,
                functions: &functions,
                clock,
                limits,
                cache,
                cache_bytes,
            };

            clock.arm(prepare_timeout);
            let scope = functions.prepare.call::<_, Value>((scope_json,)).catch(&ctx);
            let scope = match scope {
                Ok(scope) => scope,
                Err(caught) => {
                    let err = runner.classify(caught, None, prepare_timeout, "preparing the script variables");
                    clock.disarm();
                    out.extend(jobs.iter().map(|_| Err(err.clone())));
                    *dirty = true;
                    return runner.recover();
                }
            };
            clock.disarm();

            for job in jobs {
                rng.reset();
                clock.arm(job.timeout);
                let mut result = runner.run_job(job, &scope);
                let drained = runner.drain_microtasks();
                // Native code that calls back into JS (a Promise executor, for one) turns the interrupt into an
                // ordinary rejection, so whatever came back, a fired deadline means the script ran out of time.
                if clock.fired.get() {
                    result = Err(timeout_error(job.timeout));
                }
                clock.disarm();
                let failed = result.is_err();
                out.push(result);
                if !drained {
                    // Leftover jobs would run during a later script's deadline.
                    return Flow::Rebuild;
                }
                if failed {
                    *dirty = true;
                    if let Flow::Rebuild = runner.recover() {
                        return Flow::Rebuild;
                    }
                }
            }
            Flow::Done
        });
        if let Flow::Done = flow
            && std::mem::take(&mut self.dirty)
        {
            // Outside `with`: the runtime is not re-entrant, and its own methods lock it.
            self.runtime.run_gc();
            let usage = self.runtime.memory_usage().malloc_size;
            let limit = i64::try_from(self.limits.memory_bytes).unwrap_or(i64::MAX);
            if usage > limit / 8 * HIGH_WATER_EIGHTHS {
                return Flow::Rebuild;
            }
        }
        flow
    }
}

/// The helper functions, restored into the current `with` scope.
struct Functions<'js> {
    prepare: Function<'js>,
    compile: Function<'js>,
    invoke: Function<'js>,
    describe: Function<'js>,
    health: Function<'js>,
}

impl<'js> Functions<'js> {
    fn restore(helpers: &Helpers, ctx: &Ctx<'js>) -> rquickjs::Result<Self> {
        Ok(Functions {
            prepare: helpers.prepare.clone().restore(ctx)?,
            compile: helpers.compile.clone().restore(ctx)?,
            invoke: helpers.invoke.clone().restore(ctx)?,
            describe: helpers.describe.clone().restore(ctx)?,
            health: helpers.health.clone().restore(ctx)?,
        })
    }
}

struct Runner<'a, 'js> {
    ctx: &'a Ctx<'js>,
    functions: &'a Functions<'js>,
    clock: &'a Clock,
    limits: &'a Limits,
    cache: &'a mut HashMap<CacheKey, Persistent<Function<'static>>>,
    cache_bytes: &'a mut usize,
}

impl<'js> Runner<'_, 'js> {
    fn run_job(&mut self, job: &Job, scope: &Value<'js>) -> JobResult {
        let function = self.function(job)?;
        let max_len = self.limits.max_output_bytes;
        #[allow(clippy::cast_precision_loss)]
        let args = (function, scope.clone(), max_len as f64);
        let returned = match self.functions.invoke.call::<_, Value>(args).catch(self.ctx) {
            Ok(v) => v,
            Err(caught) => return Err(self.classify(caught, Some(&job.source), job.timeout, "running the script")),
        };
        if let Some(text) = returned.as_string() {
            let text = text
                .to_string()
                .map_err(|e| output_error(&format!("the result is not valid text: {e}")))?;
            if text.len() > max_len {
                return Err(output_error(&format!(
                    "the result is larger than the {max_len}-byte limit"
                )));
            }
            return serde_json::from_str(&text)
                .map_err(|e| output_error(&format!("the result cannot be read back as JSON: {e}")));
        }
        let message = returned
            .as_array()
            .and_then(|a| a.get::<String>(0).ok())
            .unwrap_or_else(|| "the result is not JSON".to_owned());
        Err(output_error(&message))
    }

    /// The compiled function for `job`, from the cache or freshly compiled (under the job's deadline).
    fn function(&mut self, job: &Job) -> Result<Function<'js>, SandboxError> {
        let key = (job.kind, Arc::clone(&job.source));
        if let Some(saved) = self.cache.get(&key) {
            return saved.clone().restore(self.ctx).map_err(|e| internal(&e.to_string()));
        }
        let wrapped = wrap(job.kind, &job.source);
        let text = format!("\"use strict\";({wrapped})");
        let compiled = self
            .functions
            .compile
            .call::<_, Value>((text, wrapped.as_str()))
            .catch(self.ctx);
        let compiled = match compiled {
            Ok(v) => v,
            Err(caught) => return Err(self.classify(caught, Some(&job.source), job.timeout, "compiling the script")),
        };
        let Some(function) = compiled.into_function() else {
            return Err(SandboxError {
                code: super::CODE_ERROR,
                message: match job.kind {
                    ScriptKind::Expression => "the expression must be a single JavaScript expression".to_owned(),
                    ScriptKind::Code => "the code must be a single function body".to_owned(),
                },
                line: None,
            });
        };
        let budget = self.limits.memory_bytes / CACHE_MEMORY_SHARE;
        if self.cache.len() >= CACHE_MAX_ENTRIES || *self.cache_bytes + job.source.len() > budget {
            self.cache.clear();
            *self.cache_bytes = 0;
        }
        *self.cache_bytes += job.source.len();
        self.cache.insert(key, Persistent::save(self.ctx, function.clone()));
        Ok(function)
    }

    /// Runs the promise jobs a script queued, within its deadline. False if some may remain.
    fn drain_microtasks(&self) -> bool {
        let mut budget = MAX_MICROTASKS;
        while self.ctx.execute_pending_job() {
            budget -= 1;
            if budget == 0 || self.clock.fired.get() {
                return false;
            }
        }
        true
    }

    /// Collects garbage and checks the context still runs code; `Rebuild` if it does not.
    fn recover(&self) -> Flow {
        self.ctx.run_gc();
        self.clock.arm(HEALTH_TIMEOUT);
        let healthy = matches!(self.functions.health.call::<_, i32>(()).catch(self.ctx), Ok(1));
        self.clock.disarm();
        if healthy { Flow::Done } else { Flow::Rebuild }
    }

    /// Turns whatever the engine threw into the sandbox's error codes; the deadline must still be armed, because
    /// describing a thrown object can run its getters.
    fn classify(&self, caught: CaughtError<'js>, source: Option<&str>, timeout: Duration, doing: &str) -> SandboxError {
        if self.clock.fired.get() {
            return timeout_error(timeout);
        }
        let thrown = match caught {
            CaughtError::Exception(e) => e.into_value(),
            CaughtError::Value(v) => v,
            CaughtError::Error(e) => return internal(&format!("{doing}: {e}")),
        };
        let described = self
            .functions
            .describe
            .call::<_, rquickjs::Array>((thrown,))
            .catch(self.ctx);
        if self.clock.fired.get() {
            return timeout_error(timeout);
        }
        let parts = described.ok().and_then(|a| {
            Some((
                a.get::<i32>(0).ok()?,
                a.get::<String>(1).ok()?,
                a.get::<String>(2).ok()?,
                a.get::<String>(3).ok()?,
            ))
        });
        let Some((kind, name, message, stack)) = parts else {
            return SandboxError {
                code: super::CODE_MEMORY,
                message: "out of memory".to_owned(),
                line: None,
            };
        };
        if kind == 1 {
            // The engine throws null when it cannot allocate even the out-of-memory error; a script that throws
            // null itself is reported the same way.
            return SandboxError {
                code: super::CODE_MEMORY,
                message: "out of memory".to_owned(),
                line: None,
            };
        }
        let line = source.and_then(|src| stack_line(&stack, SCRIPT_FILE).and_then(|l| user_line(l, src)));
        if kind == 0 && MEMORY_MESSAGES.contains(&message.as_str()) {
            return SandboxError {
                code: super::CODE_MEMORY,
                message,
                line,
            };
        }
        let message = if name.is_empty() {
            message
        } else {
            format!("{name}: {message}")
        };
        SandboxError {
            code: super::CODE_ERROR,
            message,
            line,
        }
    }
}

/// Hardens the fresh context and keeps the prelude's internal functions.
fn harden(ctx: &Ctx<'_>, rng: Rc<Rng>) -> rquickjs::Result<Helpers> {
    let raw = raw_helpers(ctx, rng)?;
    let limits = Object::new(ctx.clone())?;
    limits.set("maxArrayLike", MAX_ARRAY_LIKE)?;
    limits.set("maxErrorText", MAX_ERROR_TEXT)?;
    limits.set("maxTypedLength", MAX_TYPED_LENGTH)?;
    limits.set("maxNormalize", MAX_NORMALIZE)?;
    limits.set("maxSearchWork", MAX_SEARCH_WORK)?;
    limits.set("maxStringBuild", MAX_STRING_BUILD)?;
    limits.set("maxBigIntText", MAX_BIGINT_TEXT)?;
    limits.set("maxBigIntBits", MAX_BIGINT_BITS)?;
    limits.set("maxHelperText", MAX_HELPER_TEXT)?;
    limits.set("maxDateFormat", MAX_DATE_FORMAT)?;
    let mut options = EvalOptions::default();
    options.filename = Some(PRELUDE_FILE.to_owned());
    let init: Function = ctx.eval_with_options(PRELUDE, options)?;
    let internals: Object = init.call((raw, limits))?;
    let get = |name: &str| -> rquickjs::Result<Persistent<Function<'static>>> {
        Ok(Persistent::save(ctx, internals.get::<_, Function>(name)?))
    };
    Ok(Helpers {
        prepare: get("prepare")?,
        compile: get("compile")?,
        invoke: get("invoke")?,
        describe: get("describe")?,
        health: get("health")?,
    })
}

fn timeout_error(timeout: Duration) -> SandboxError {
    SandboxError {
        code: super::CODE_TIMEOUT,
        message: format!("the script did not finish within {} ms", timeout.as_millis()),
        line: None,
    }
}

fn output_error(message: &str) -> SandboxError {
    SandboxError {
        code: super::CODE_OUTPUT,
        message: message.to_owned(),
        line: None,
    }
}

fn internal(message: &str) -> SandboxError {
    SandboxError {
        code: super::CODE_ERROR,
        message: format!("sandbox failure: {message}"),
        line: None,
    }
}

fn init_error(message: &str) -> SandboxError {
    internal(&format!("cannot start the JavaScript engine: {message}"))
}
