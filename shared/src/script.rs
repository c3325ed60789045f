//! User scripts: how the worker wraps them into a JavaScript function, and a parse-only syntax check the API can
//! run without ever executing user code.

use std::cell::RefCell;

use rquickjs::{CatchResultExt, CaughtError, Context, Module, Runtime};

/// The parameters of the function every user script becomes, in order.
pub const SCRIPT_PARAMS: &str = "$input, $node, $vars, $run, $h";

/// How many lines `wrap` puts before the first line of the user's source. Engine line numbers are shifted by this.
pub const WRAP_LINE_OFFSET: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    /// A single JavaScript expression; its value is the result.
    Expression,
    /// A function body; its `return` value is the result.
    Code,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ScriptError {
    pub message: String,
    /// 1-based line within the user's source, when the engine reported one.
    pub line: Option<u32>,
}

/// The JS source the worker compiles for a user script: a strict-mode function of the template variables.
///
/// The result is a function *expression* (`function (...) {...}`); the user's first line is line
/// `WRAP_LINE_OFFSET + 1` of it, for both kinds.
pub fn wrap(kind: ScriptKind, source: &str) -> String {
    // The newlines around the user's text keep a trailing `//` comment from swallowing the closing tokens and
    // keep the user's line numbering a fixed offset from the engine's.
    match kind {
        ScriptKind::Expression => {
            format!("function ({SCRIPT_PARAMS}) {{\"use strict\"; return (\n{source}\n);\n}}")
        }
        ScriptKind::Code => format!("function ({SCRIPT_PARAMS}) {{\"use strict\";\n{source}\n}}"),
    }
}

/// Maps a 1-based line of wrapped source back to the user's source, clamped to the user's last line (errors
/// reported on the wrapper's closing line belong to the end of the user's text).
pub fn user_line(wrapped_line: u32, source: &str) -> Option<u32> {
    if wrapped_line <= WRAP_LINE_OFFSET {
        return None;
    }
    let last = u32::try_from(source.lines().count().max(1)).unwrap_or(u32::MAX);
    Some((wrapped_line - WRAP_LINE_OFFSET).min(last))
}

/// Finds the first `<file>:<line>` position in an engine stack trace.
pub fn stack_line(stack: &str, file: &str) -> Option<u32> {
    let needle = format!("{file}:");
    let start = stack.find(&needle)? + needle.len();
    let digits: String = stack[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Parses (never evaluates) a user script; Err carries the engine's message and the line within the USER source
/// (1-based, adjusted for the wrapper).
///
/// Accepting a script here does not make it runnable: the worker re-checks at compile time that the script does
/// not close the wrapper function early (see `crate::sandbox`), which a parse alone cannot detect.
pub fn check_syntax(kind: ScriptKind, source: &str) -> Result<(), ScriptError> {
    CHECKER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(Checker::worn_out) {
            // Dropping first keeps two checker runtimes from coexisting on this thread.
            *slot = None;
            *slot = Some(Checker::new()?);
        }
        let Some(checker) = slot.as_mut() else {
            return Err(internal("syntax checker unavailable"));
        };
        checker.check(kind, source)
    })
}

thread_local! {
    static CHECKER: RefCell<Option<Checker>> = const { RefCell::new(None) };
}

/// Memory cap of the checker runtime; parsing needs far less than running.
const CHECK_MEMORY_BYTES: usize = 16 << 20;
/// Guards the recursive-descent parser against deeply nested source.
const CHECK_STACK_BYTES: usize = 512 << 10;
/// QuickJS keeps every declared module until its context is freed, so the context is replaced after this many
/// checks to bound the memory a long-lived thread accumulates.
const CHECKS_PER_CONTEXT: u32 = 256;
const MODULE_NAME: &str = "check";

struct Checker {
    // Field order is drop order: the context must go before its runtime.
    context: Context,
    runtime: Runtime,
    checks: u32,
}

impl Checker {
    fn new() -> Result<Self, ScriptError> {
        let runtime = Runtime::new().map_err(|e| internal(&format!("cannot create a JS runtime: {e}")))?;
        runtime.set_memory_limit(CHECK_MEMORY_BYTES);
        runtime.set_max_stack_size(CHECK_STACK_BYTES);
        let context = Context::full(&runtime).map_err(|e| internal(&format!("cannot create a JS context: {e}")))?;
        Ok(Checker {
            context,
            runtime,
            checks: 0,
        })
    }

    fn worn_out(&self) -> bool {
        self.checks >= CHECKS_PER_CONTEXT
    }

    fn check(&mut self, kind: ScriptKind, source: &str) -> Result<(), ScriptError> {
        self.checks += 1;
        let module_source = format!("export default {}", wrap(kind, source));
        let result =
            self.context.with(
                |ctx| match Module::declare(ctx.clone(), MODULE_NAME, module_source).catch(&ctx) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(match e {
                        CaughtError::Exception(ex) => {
                            let message = ex.message().unwrap_or_else(|| "syntax error".to_owned());
                            let line = ex.stack().and_then(|s| stack_line(&s, MODULE_NAME));
                            ScriptError {
                                message,
                                line: line.and_then(|l| user_line(l, source)),
                            }
                        }
                        CaughtError::Value(v) if v.is_null() => internal("out of memory while parsing the script"),
                        other => internal(&other.to_string()),
                    }),
                },
            );
        if result.is_err() {
            // A failed parse can leave garbage behind (and, after an out-of-memory, an exhausted heap).
            self.runtime.run_gc();
        }
        result
    }
}

fn internal(message: &str) -> ScriptError {
    ScriptError {
        message: message.to_owned(),
        line: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn wrap_puts_user_code_on_line_two() {
        assert_eq!(
            wrap(ScriptKind::Expression, "1 + 1"),
            "function ($input, $node, $vars, $run, $h) {\"use strict\"; return (\n1 + 1\n);\n}"
        );
        assert_eq!(
            wrap(ScriptKind::Code, "return 1"),
            "function ($input, $node, $vars, $run, $h) {\"use strict\";\nreturn 1\n}"
        );
    }

    #[test]
    fn valid_scripts_pass() {
        assert_eq!(check_syntax(ScriptKind::Expression, "$input.a.b[0] + 1"), Ok(()));
        assert_eq!(
            check_syntax(ScriptKind::Expression, "{ a: 1 } // trailing comment"),
            Ok(())
        );
        assert_eq!(
            check_syntax(
                ScriptKind::Code,
                "let s = 0;\nfor (const x of $input.items) s += x;\nreturn s;"
            ),
            Ok(())
        );
    }

    #[test]
    fn syntax_errors_report_the_user_line() {
        let err = check_syntax(ScriptKind::Code, "let a = 1;\nlet b = 2;\na b;").unwrap_err();
        assert_eq!(err.line, Some(3), "{err:?}");
        assert!(!err.message.is_empty());

        let err = check_syntax(ScriptKind::Expression, "1 +").unwrap_err();
        assert_eq!(err.line, Some(1), "{err:?}");

        // A statement is not an expression.
        let err = check_syntax(ScriptKind::Expression, "let x = 1").unwrap_err();
        assert_eq!(err.line, Some(1), "{err:?}");
    }

    #[test]
    fn strict_mode_is_enforced() {
        assert!(check_syntax(ScriptKind::Code, "with ($input) { return a }").is_err());
        assert!(check_syntax(ScriptKind::Code, "return 010;").is_err());
    }

    #[test]
    fn side_effects_are_never_run() {
        let start = Instant::now();
        assert_eq!(check_syntax(ScriptKind::Code, "while (true) {}"), Ok(()));
        assert_eq!(check_syntax(ScriptKind::Code, "for (;;) {}"), Ok(()));
        assert_eq!(
            check_syntax(ScriptKind::Code, "globalThis.sideEffect = 1; return 1;"),
            Ok(())
        );
        assert_eq!(
            check_syntax(ScriptKind::Expression, "(globalThis.sideEffect = 2)"),
            Ok(())
        );
        // Code that escapes the wrapper would still only be parsed here.
        assert_eq!(
            check_syntax(ScriptKind::Code, "}; globalThis.sideEffect = 3; function f() {"),
            Ok(())
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        CHECKER.with(|cell| {
            let slot = cell.borrow();
            let checker = slot.as_ref().expect("checker exists after a check");
            let seen: String = checker
                .context
                .with(|ctx| ctx.eval("typeof globalThis.sideEffect").unwrap());
            assert_eq!(seen, "undefined");
        });
    }

    #[test]
    fn repeated_checks_stay_bounded() {
        for i in 0..(CHECKS_PER_CONTEXT * 3) {
            let src = format!("$input.a + {i}");
            assert_eq!(check_syntax(ScriptKind::Expression, &src), Ok(()));
        }
        let err = check_syntax(ScriptKind::Code, "return (").unwrap_err();
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn deeply_nested_source_is_an_error_not_a_crash() {
        let src = format!("{}1{}", "[".repeat(200_000), "]".repeat(200_000));
        assert!(check_syntax(ScriptKind::Expression, &src).is_err());
        assert_eq!(check_syntax(ScriptKind::Expression, "1"), Ok(()));
    }

    #[test]
    fn stack_line_parses_positions() {
        assert_eq!(stack_line("    at check:3:5\n", "check"), Some(3));
        assert_eq!(stack_line("    at f (<input>:12:1)\n", "<input>"), Some(12));
        assert_eq!(stack_line("    at f (native)\n", "<input>"), None);
        assert_eq!(user_line(1, "a"), None);
        assert_eq!(user_line(2, "a"), Some(1));
        assert_eq!(user_line(9, "a\nb"), Some(2));
    }
}
