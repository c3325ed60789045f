//! The flow model: definitions as users write them, their validation, and
//! `{{ }}` templates. Shared by the API (validates on save, never evaluates
//! user code) and the worker (executes).

pub mod definition;
pub mod template;
pub mod validate;

pub use definition::{Edge, FlowDefinition, Node, NodeKind};
pub use template::{Compiled, EvalScope, Template, TemplateError};
pub use validate::{FieldError, validate};
