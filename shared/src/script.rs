//! User scripts: how an expression or a code body becomes the function the
//! worker's sandbox runs, and a syntax check that only parses.
//!
//! The API calls [`check_syntax`] when a flow is saved: QuickJS compiles the
//! wrapped source as a module that is declared and never evaluated, so
//! nothing the script says can happen in the API process.

use std::cell::RefCell;
use std::sync::LazyLock;

use regex::Regex;
use rquickjs::{CatchResultExt, CaughtError, Context, Module, Runtime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    /// The body of a `{{ }}` template: one expression.
    Expression,
    /// A code node: a function body whose `return` value is the output.
    Code,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ScriptError {
    pub message: String,
    /// 1-based, in the user's own source.
    pub line: Option<u32>,
}

/// What every script may name: the template variables and the helpers.
pub const SCRIPT_PARAMS: &str = "$input, $node, $vars, $run, $h";

/// The user's source starts on this line of [`wrap`]'s output.
pub const FIRST_USER_LINE: u32 = 2;

/// The function expression the sandbox compiles for a user script.
pub fn wrap(kind: ScriptKind, source: &str) -> String {
    match kind {
        ScriptKind::Expression => format!("(function ({SCRIPT_PARAMS}) {{ \"use strict\"; return (\n{source}\n); }})"),
        ScriptKind::Code => format!("(function ({SCRIPT_PARAMS}) {{ \"use strict\";\n{source}\n}})"),
    }
}

/// The line of the user's source an engine stack trace points at.
pub fn user_line(stack: &str, file: &str) -> Option<u32> {
    static AT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"([A-Za-z_<>.-]+):(\d+)(?::\d+)?").expect("valid regex"));
    AT.captures_iter(stack)
        .filter(|c| &c[1] == file)
        .filter_map(|c| c[2].parse::<u32>().ok())
        .next()
        .map(|line| line.saturating_sub(FIRST_USER_LINE - 1).max(1))
}

struct Parser {
    // Field order is drop order: the context before its runtime.
    context: Context,
    _runtime: Runtime,
}

thread_local! {
    static PARSER: RefCell<Option<Parser>> = const { RefCell::new(None) };
}

fn parser() -> Result<Parser, ScriptError> {
    let unavailable = |_| ScriptError {
        message: "the script parser is unavailable".into(),
        line: None,
    };
    let runtime = Runtime::new().map_err(unavailable)?;
    runtime.set_memory_limit(32 << 20);
    runtime.set_max_stack_size(512 << 10);
    let context = Context::full(&runtime).map_err(unavailable)?;
    Ok(Parser {
        context,
        _runtime: runtime,
    })
}

/// Parses a script without running it.
pub fn check_syntax(kind: ScriptKind, source: &str) -> Result<(), ScriptError> {
    let wrapped = format!("export default {};", wrap(kind, source));
    PARSER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(parser()?);
        }
        let parser = slot.as_ref().expect("just set");
        parser.context.with(|ctx| {
            let declared = Module::declare(ctx.clone(), "script", wrapped).map(drop).catch(&ctx);
            match declared {
                Ok(()) => Ok(()),
                Err(CaughtError::Exception(e)) => Err(ScriptError {
                    message: e.message().unwrap_or_else(|| "syntax error".into()),
                    line: e.stack().as_deref().and_then(|s| user_line(s, "script")),
                }),
                Err(other) => Err(ScriptError {
                    message: other.to_string(),
                    line: None,
                }),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_scripts_parse_and_are_never_run() {
        check_syntax(ScriptKind::Expression, "$input.a + 1").unwrap();
        check_syntax(ScriptKind::Expression, "({a: [1, 2].map(x => x * 2)})").unwrap();
        // Were these run, the check would hang or change state; parsing does neither.
        check_syntax(ScriptKind::Code, "while (true) {}").unwrap();
        check_syntax(ScriptKind::Code, "globalThis.leak = 1; return 2;").unwrap();
    }

    #[test]
    fn syntax_errors_name_the_users_line() {
        let e = check_syntax(ScriptKind::Code, "const a = 1;\nconst b = ;\nreturn a;").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        assert!(!e.message.is_empty());
        assert!(check_syntax(ScriptKind::Expression, "$input.a +").is_err());
        assert!(check_syntax(ScriptKind::Expression, "1; }").is_err());
    }
}
