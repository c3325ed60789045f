//! `{{ }}` templates in string params.
//!
//! A param that is exactly one template keeps the value's JSON type; mixed
//! text renders to a string. Simple paths (`$input.a.b[0]`,
//! `$node.<id>.output.x`, `$vars.k`, `$run.id`) are resolved here without
//! any script engine; anything else is a JavaScript expression that the
//! worker evaluates in its sandbox. The API only parses expressions
//! ([`crate::script::check_syntax`]); it never evaluates them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{{{` in template")]
    Unclosed,
    #[error("empty expression in template")]
    Empty,
    #[error("invalid expression: {0}")]
    Syntax(String),
}

/// What a template may read.
pub struct EvalScope<'a> {
    pub input: &'a Value,
    pub nodes: &'a HashMap<String, Value>,
    pub vars: &'a Value,
    pub run: &'a Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Root {
    Input,
    Node(String),
    Vars,
    Run,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    root: Root,
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Lit(String),
    Path(Path),
    /// The n-th expression of the params tree, evaluated by the sandbox.
    Expr(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// The whole string is one template: the result keeps its JSON type.
    Single(Part),
    /// Text with embedded templates: the result is a string.
    Text(Vec<Part>),
}

/// A params tree with every template parsed once, ready to evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub enum Compiled {
    Value(Value),
    Template(Template),
    Array(Vec<Compiled>),
    Object(Vec<(String, Compiled)>),
}

/// Compiled params and the JavaScript expressions they hold, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledParams {
    pub tree: Compiled,
    pub expressions: Vec<Arc<str>>,
}

/// The end of a `{{ … }}` body: the first `}}` outside string literals and
/// outside braces the expression itself opened (`{{ {a: {b: 1}} }}`).
fn closing(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let (mut depth, mut quote, mut i) = (0usize, None::<u8>, 0);
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'\'' | b'"' | b'`' => quote = Some(c),
                b'{' => depth += 1,
                b'}' if depth > 0 => depth -= 1,
                b'}' if bytes.get(i + 1) == Some(&b'}') => return Some(i),
                _ => {}
            },
        }
        i += 1;
    }
    None
}

impl Template {
    /// Parses a string; `Ok(None)` when it holds no template at all.
    /// Expressions are appended to `expressions` and referred to by index.
    pub fn parse(s: &str, expressions: &mut Vec<Arc<str>>) -> Result<Option<Template>, TemplateError> {
        if !s.contains("{{") {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = closing(after).ok_or(TemplateError::Unclosed)?;
            let body = after[..end].trim();
            if body.is_empty() {
                return Err(TemplateError::Empty);
            }
            parts.push(match Path::parse(body) {
                Some(path) => Part::Path(path),
                None => {
                    expressions.push(Arc::from(body));
                    Part::Expr(expressions.len() - 1)
                }
            });
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Some(match parts.as_slice() {
            [single @ (Part::Path(_) | Part::Expr(_))] => Template::Single(single.clone()),
            _ => Template::Text(parts),
        }))
    }

    /// `results[i]` is the value of expression `i` of the params tree.
    pub fn eval(&self, scope: &EvalScope<'_>, results: &[Value]) -> Value {
        match self {
            Template::Single(part) => part.value(scope, results).cloned().unwrap_or(Value::Null),
            Template::Text(parts) => {
                let mut out = String::new();
                for part in parts {
                    if let Part::Lit(s) = part {
                        out.push_str(s);
                        continue;
                    }
                    match part.value(scope, results) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(s)) => out.push_str(s),
                        Some(v) => out.push_str(&v.to_string()),
                    }
                }
                Value::String(out)
            }
        }
    }

    fn parts(&self) -> &[Part] {
        match self {
            Template::Single(p) => std::slice::from_ref(p),
            Template::Text(parts) => parts,
        }
    }
}

impl Part {
    fn value<'a>(&'a self, scope: &EvalScope<'a>, results: &'a [Value]) -> Option<&'a Value> {
        match self {
            Part::Lit(_) => None,
            Part::Path(p) => p.resolve(scope),
            Part::Expr(i) => results.get(*i),
        }
    }
}

impl Path {
    /// A simple path, or `None` for anything that needs the script engine.
    fn parse(expr: &str) -> Option<Path> {
        let mut segs = Vec::new();
        let mut rest = expr;
        let head_end = rest.find(['.', '[']).unwrap_or(rest.len());
        let head = &rest[..head_end];
        rest = &rest[head_end..];
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let key = &r[..end];
                if !is_ident(key) {
                    return None;
                }
                segs.push(Seg::Key(key.to_string()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']')?;
                let inner = r[..end].trim();
                let seg = if let Ok(i) = inner.parse::<usize>() {
                    Seg::Index(i)
                } else if let Some(q) = quoted(inner) {
                    Seg::Key(q.to_string())
                } else {
                    return None;
                };
                segs.push(seg);
                rest = &r[end + 1..];
            } else {
                return None;
            }
        }
        let root = match head {
            "$input" => Root::Input,
            "$vars" => Root::Vars,
            "$run" => Root::Run,
            "$node" => {
                let mut it = segs.drain(..2.min(segs.len()));
                match (it.next(), it.next()) {
                    (Some(Seg::Key(id)), Some(Seg::Key(out))) if out == "output" => Root::Node(id),
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(Path { root, segs })
    }

    fn resolve<'a>(&self, scope: &EvalScope<'a>) -> Option<&'a Value> {
        let mut cur = match &self.root {
            Root::Input => scope.input,
            Root::Vars => scope.vars,
            Root::Run => scope.run,
            Root::Node(id) => scope.nodes.get(id)?,
        };
        for seg in &self.segs {
            cur = match seg {
                Seg::Key(k) => cur.get(k.as_str())?,
                Seg::Index(i) => cur.get(*i)?,
            };
        }
        Some(cur)
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn quoted(s: &str) -> Option<&str> {
    let inner = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))?;
    (!inner.contains(['"', '\'', '\\'])).then_some(inner)
}

impl CompiledParams {
    /// Parses every template in a params tree. On error, returns the
    /// location (`url`, `headers.Authorization`, `values[2]`).
    pub fn compile(value: &Value) -> Result<CompiledParams, (String, TemplateError)> {
        let mut expressions = Vec::new();
        let tree = Compiled::compile_at(value, String::new(), &mut expressions)?;
        Ok(CompiledParams { tree, expressions })
    }

    pub fn eval(&self, scope: &EvalScope<'_>, results: &[Value]) -> Value {
        self.tree.eval(scope, results)
    }

    /// Every node id read through `$node.<id>`, by paths or (as far as can be
    /// told without running them) by expressions.
    pub fn node_refs(&self) -> Vec<String> {
        let mut refs: Vec<String> = self.tree.path_refs().into_iter().map(str::to_string).collect();
        for e in &self.expressions {
            refs.extend(
                NODE_REF
                    .captures_iter(e)
                    .filter_map(|c| c.get(1).or_else(|| c.get(2)).map(|m| m.as_str().to_string())),
            );
        }
        refs.sort();
        refs.dedup();
        refs
    }
}

static NODE_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\$node\s*(?:\.\s*([A-Za-z_$][A-Za-z0-9_$]*)|\[\s*["']([A-Za-z0-9_-]+)["']\s*\])"#)
        .expect("valid regex")
});

impl Compiled {
    fn compile_at(
        value: &Value,
        at: String,
        expressions: &mut Vec<Arc<str>>,
    ) -> Result<Compiled, (String, TemplateError)> {
        Ok(match value {
            Value::String(s) => match Template::parse(s, expressions).map_err(|e| (at, e))? {
                Some(t) => Compiled::Template(t),
                None => Compiled::Value(value.clone()),
            },
            Value::Array(items) => {
                let compiled = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::compile_at(v, format!("{at}[{i}]"), expressions))
                    .collect::<Result<Vec<_>, _>>()?;
                if compiled.iter().all(|c| matches!(c, Compiled::Value(_))) {
                    Compiled::Value(value.clone())
                } else {
                    Compiled::Array(compiled)
                }
            }
            Value::Object(map) => {
                let compiled = map
                    .iter()
                    .map(|(k, v)| {
                        let at = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                        Ok((k.clone(), Self::compile_at(v, at, expressions)?))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if compiled.iter().all(|(_, c)| matches!(c, Compiled::Value(_))) {
                    Compiled::Value(value.clone())
                } else {
                    Compiled::Object(compiled)
                }
            }
            other => Compiled::Value(other.clone()),
        })
    }

    fn eval(&self, scope: &EvalScope<'_>, results: &[Value]) -> Value {
        match self {
            Compiled::Value(v) => v.clone(),
            Compiled::Template(t) => t.eval(scope, results),
            Compiled::Array(items) => Value::Array(items.iter().map(|c| c.eval(scope, results)).collect()),
            Compiled::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, c)| (k.clone(), c.eval(scope, results)))
                    .collect(),
            ),
        }
    }

    fn path_refs(&self) -> Vec<&str> {
        match self {
            Compiled::Value(_) => vec![],
            Compiled::Template(t) => t
                .parts()
                .iter()
                .filter_map(|p| match p {
                    Part::Path(Path {
                        root: Root::Node(id), ..
                    }) => Some(id.as_str()),
                    _ => None,
                })
                .collect(),
            Compiled::Array(items) => items.iter().flat_map(|c| c.path_refs()).collect(),
            Compiled::Object(fields) => fields.iter().flat_map(|(_, c)| c.path_refs()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(t: &str, input: Value) -> Value {
        let nodes = HashMap::from([("a".to_string(), json!({"x": [10, 20]}))]);
        let scope = EvalScope {
            input: &input,
            nodes: &nodes,
            vars: &Value::Null,
            run: &json!({"id": "r1"}),
        };
        let mut exprs = vec![];
        let t = Template::parse(t, &mut exprs).unwrap().unwrap();
        assert!(exprs.is_empty(), "simple paths never reach the script engine");
        t.eval(&scope, &[])
    }

    #[test]
    fn a_single_template_keeps_its_json_type() {
        assert_eq!(eval("{{ $input.n }}", json!({"n": 3})), json!(3));
        assert_eq!(eval("{{$input.o}}", json!({"o": {"k": true}})), json!({"k": true}));
        assert_eq!(eval("{{ $node.a.output.x[1] }}", json!({})), json!(20));
    }

    #[test]
    fn mixed_text_renders_a_string() {
        assert_eq!(
            eval("id={{ $run.id }}/{{ $input.n }}", json!({"n": 3})),
            json!("id=r1/3")
        );
        assert_eq!(eval("[{{ $input.missing }}]", json!({})), json!("[]"));
    }

    #[test]
    fn bracket_keys_and_indexes_resolve() {
        assert_eq!(eval("{{ $input['a b'][0] }}", json!({"a b": ["y"]})), json!("y"));
    }

    #[test]
    fn anything_beyond_a_path_is_an_expression_for_the_sandbox() {
        let mut exprs = vec![];
        let t = Template::parse("n={{ $input.a + 1 }} m={{ {a: {b: '}}'}}.a.b }}", &mut exprs)
            .unwrap()
            .unwrap();
        assert_eq!(exprs.len(), 2);
        assert_eq!(&*exprs[0], "$input.a + 1");
        assert_eq!(&*exprs[1], "{a: {b: '}}'}}.a.b");
        let scope = EvalScope {
            input: &Value::Null,
            nodes: &HashMap::new(),
            vars: &Value::Null,
            run: &Value::Null,
        };
        assert_eq!(t.eval(&scope, &[json!(2), json!("}}")]), json!("n=2 m=}}"));
        let single = Template::parse("{{ [1, 2].length }}", &mut exprs).unwrap().unwrap();
        assert_eq!(
            single.eval(&scope, &[json!(0), json!(0), json!(2)]),
            json!(2),
            "a lone expression keeps its type"
        );
    }

    #[test]
    fn unclosed_and_empty_templates_are_errors() {
        let mut exprs = vec![];
        assert_eq!(Template::parse("{{ }}", &mut exprs), Err(TemplateError::Empty));
        assert_eq!(Template::parse("{{ $input", &mut exprs), Err(TemplateError::Unclosed));
    }

    #[test]
    fn node_references_are_found_in_paths_and_expressions() {
        let params = json!({"a": "{{ $node.x.output }}", "b": "{{ $node.y.output.n + $node['z-1'].output.m }}"});
        let compiled = CompiledParams::compile(&params).unwrap();
        assert_eq!(compiled.node_refs(), vec!["x", "y", "z-1"]);
    }
}
