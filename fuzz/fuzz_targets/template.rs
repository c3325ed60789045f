//! Any string param: the template parser, the compiler of a params tree and
//! evaluation of simple paths against a scope must never panic; a string
//! without `{{` is no template.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

use floq_shared::flow::{CompiledParams, EvalScope, Template};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut expressions = Vec::new();
    let parsed = Template::parse(s, &mut expressions);
    if !s.contains("{{") {
        assert!(matches!(parsed, Ok(None)), "no `{{{{`, no template: {s:?}");
    }
    let params = json!({"url": s, "nested": [s, {"k": s}]});
    let Ok(compiled) = CompiledParams::compile(&params) else {
        assert!(parsed.is_err(), "compile fails only where parse does: {s:?}");
        return;
    };
    let _ = compiled.node_refs();
    let input = json!({"a": {"b": [1, "two", {"c": null}]}, "s": s});
    let mut nodes = HashMap::new();
    nodes.insert("n".to_string(), json!({"x": [s]}));
    let scope = EvalScope {
        input: &input,
        nodes: &nodes,
        vars: &json!({"k": "v"}),
        run: &json!({"id": "r", "attempt": 1}),
    };
    let results: Vec<Value> = compiled.expressions.iter().map(|e| Value::String(e.to_string())).collect();
    let _ = compiled.eval(&scope, &results);
    // Fewer results than expressions (a sandbox that failed) must not panic either.
    let _ = compiled.eval(&scope, &[]);
});
