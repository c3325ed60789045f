//! The flow model: definitions as users write them, their validation, and
//! `{{ }}` templates. Shared by the API (validates on save, never evaluates
//! user code) and the worker (executes).

pub mod catalog;
pub mod definition;
pub mod reach;
pub mod template;
pub mod validate;

pub use catalog::NodeSpec;
pub use definition::{Edge, FlowDefinition, Node, RetryPolicy};
pub use template::{Compiled, CompiledParams, EvalScope, Template, TemplateError};
pub use validate::{FieldError, validate};
