//! The flow model: definitions as users write them, their validation, and
//! `{{ }}` templates. Shared by the API (validates on save, never evaluates
//! user code) and the worker (executes).

pub mod catalog;
pub mod definition;
pub mod diff;
pub mod kind;
pub mod reach;
pub mod template;
pub mod validate;

pub use catalog::NodeSpec;
pub use kind::NodeKind;

/// Loop bodies and sub-flows nest at most this deep in a run (a run's own
/// nodes are at depth 0). Validation refuses a definition whose loops alone
/// nest deeper; the worker refuses to go deeper at run time, where sub-flows
/// count too.
pub const MAX_DEPTH: u32 = 5;

/// The one wording of the nesting limit, for the validator and the worker.
pub fn depth_exceeded_message() -> String {
    format!("loops and sub-flows nest at most {MAX_DEPTH} deep")
}
pub use definition::{Edge, FlowDefinition, Node, RetryPolicy};
pub use template::{Compiled, CompiledParams, EvalScope, Template, TemplateError};
pub use validate::{FieldError, check_deadline, validate, validate_in};
