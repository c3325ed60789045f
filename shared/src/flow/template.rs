//! `{{ }}` templates in string params.
//!
//! A param that is exactly one template keeps the referenced value's JSON
//! type; mixed text renders to a string. This build resolves simple paths
//! (`$input.a.b[0]`, `$node.<id>.output.x`, `$vars.k`, `$run.id`) without any
//! script engine; anything else is rejected at save time.

use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{{{` in template")]
    Unclosed,
    #[error("empty expression in template")]
    Empty,
    #[error("unsupported expression `{0}`: only paths under $input, $node.<id>.output, $vars and $run are supported")]
    Unsupported(String),
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
}

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// The whole string is one template: the result keeps its JSON type.
    Single(Path),
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

impl Template {
    /// Parses a string; `Ok(None)` when it holds no template at all.
    pub fn parse(s: &str) -> Result<Option<Template>, TemplateError> {
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
            let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
            parts.push(Part::Path(Path::parse(after[..end].trim())?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Some(match parts.as_slice() {
            [Part::Path(p)] => Template::Single(p.clone()),
            _ => Template::Text(parts),
        }))
    }

    pub fn eval(&self, scope: &EvalScope<'_>) -> Value {
        match self {
            Template::Single(p) => p.resolve(scope).cloned().unwrap_or(Value::Null),
            Template::Text(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Lit(s) => out.push_str(s),
                        Part::Path(p) => match p.resolve(scope) {
                            None | Some(Value::Null) => {}
                            Some(Value::String(s)) => out.push_str(s),
                            Some(v) => out.push_str(&v.to_string()),
                        },
                    }
                }
                Value::String(out)
            }
        }
    }

    /// Node ids this template reads through `$node.<id>`.
    pub fn node_refs(&self) -> Vec<&str> {
        let paths: Vec<&Path> = match self {
            Template::Single(p) => vec![p],
            Template::Text(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Path(p) => Some(p),
                    Part::Lit(_) => None,
                })
                .collect(),
        };
        paths
            .into_iter()
            .filter_map(|p| match &p.root {
                Root::Node(id) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl Path {
    fn parse(expr: &str) -> Result<Path, TemplateError> {
        if expr.is_empty() {
            return Err(TemplateError::Empty);
        }
        let unsupported = || TemplateError::Unsupported(expr.to_string());
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
                    return Err(unsupported());
                }
                segs.push(Seg::Key(key.to_string()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(unsupported)?;
                let inner = r[..end].trim();
                let seg = if let Ok(i) = inner.parse::<usize>() {
                    Seg::Index(i)
                } else if let Some(q) = quoted(inner) {
                    Seg::Key(q.to_string())
                } else {
                    return Err(unsupported());
                };
                segs.push(seg);
                rest = &r[end + 1..];
            } else {
                return Err(unsupported());
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
                    _ => return Err(unsupported()),
                }
            }
            _ => return Err(unsupported()),
        };
        Ok(Path { root, segs })
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

impl Compiled {
    /// Parses every template in a params tree. On error, returns the JSON
    /// pointer-like location (`url`, `headers.Authorization`, `values[2]`).
    pub fn compile(value: &Value) -> Result<Compiled, (String, TemplateError)> {
        Self::compile_at(value, String::new())
    }

    fn compile_at(value: &Value, at: String) -> Result<Compiled, (String, TemplateError)> {
        Ok(match value {
            Value::String(s) => match Template::parse(s).map_err(|e| (at, e))? {
                Some(t) => Compiled::Template(t),
                None => Compiled::Value(value.clone()),
            },
            Value::Array(items) => {
                let compiled = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::compile_at(v, format!("{at}[{i}]")))
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
                        Ok((k.clone(), Self::compile_at(v, at)?))
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

    pub fn eval(&self, scope: &EvalScope<'_>) -> Value {
        match self {
            Compiled::Value(v) => v.clone(),
            Compiled::Template(t) => t.eval(scope),
            Compiled::Array(items) => Value::Array(items.iter().map(|c| c.eval(scope)).collect()),
            Compiled::Object(fields) => Value::Object(fields.iter().map(|(k, c)| (k.clone(), c.eval(scope))).collect()),
        }
    }

    /// Every node id referenced through `$node.<id>` anywhere in the tree.
    pub fn node_refs(&self) -> Vec<&str> {
        match self {
            Compiled::Value(_) => vec![],
            Compiled::Template(t) => t.node_refs(),
            Compiled::Array(items) => items.iter().flat_map(|c| c.node_refs()).collect(),
            Compiled::Object(fields) => fields.iter().flat_map(|(_, c)| c.node_refs()).collect(),
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
        Template::parse(t).unwrap().unwrap().eval(&scope)
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
    fn expressions_beyond_paths_are_rejected() {
        for bad in [
            "{{ $input.a == 1 }}",
            "{{ process.env }}",
            "{{ $node.a }}",
            "{{ }}",
            "{{ $input",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
