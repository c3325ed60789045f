//! `if` and `switch`: route to an output port.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult};
use floq_shared::flow::definition::switch_port;

pub struct If;

/// JavaScript's truthiness, which is what users of `{{ }}` conditions expect.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

impl Node for If {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        let result = truthy(ctx.params.get("condition").unwrap_or(&Value::Null));
        async move {
            Ok(NodeOutput {
                value: json!({"result": result}),
                port: Some(result.to_string()),
            })
        }
        .boxed()
    }
}

pub struct Switch;

impl Node for Switch {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        let value = ctx.params.get("value").cloned().unwrap_or(Value::Null);
        let outcome = match ctx.params.get("cases") {
            Some(Value::Array(cases)) => {
                let port = cases
                    .iter()
                    .find(|c| **c == value)
                    .map(switch_port)
                    .unwrap_or_else(|| "default".into());
                Ok(NodeOutput {
                    value: json!({"value": value, "port": port}),
                    port: Some(port),
                })
            }
            _ => Err(NodeError::new("invalid_params", "`cases` must be an array")),
        };
        async move { outcome }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::truthy;
    use serde_json::json;

    #[test]
    fn truthiness_follows_javascript() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("no"), json!([]), json!({})] {
            assert!(truthy(&v), "{v}");
        }
    }
}
