//! The hostile-script suite: every case must fail with the right code, and
//! the same pool must then run an ordinary script correctly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Job, Limits, Sandbox, SandboxError};
use floq_shared::script::ScriptKind;

fn sandbox() -> Sandbox {
    Sandbox::new(
        2,
        Limits {
            memory_bytes: 32 << 20,
            ..Default::default()
        },
    )
}

fn scope() -> Arc<Value> {
    Arc::new(json!({
        "$input": {"a": {"b": [7, 8]}, "name": "ada", "n": 3},
        "$node": {"x": {"output": {"y": "why"}}},
        "$vars": {"region": "eu"},
        "$run": {"id": "r1", "trigger": "api"}
    }))
}

async fn run(sb: &Sandbox, kind: ScriptKind, source: &str, timeout_ms: u64) -> Result<Value, SandboxError> {
    let job = Job {
        source: Arc::from(source),
        kind,
        timeout: Duration::from_millis(timeout_ms),
    };
    sb.run(scope(), vec![job]).await.remove(0)
}

async fn code(sb: &Sandbox, source: &str) -> Result<Value, SandboxError> {
    run(sb, ScriptKind::Code, source, 300).await
}

async fn expr(sb: &Sandbox, source: &str) -> Result<Value, SandboxError> {
    run(sb, ScriptKind::Expression, source, 300).await
}

/// The pool still answers an ordinary script correctly.
async fn still_serves(sb: &Sandbox) {
    assert_eq!(expr(sb, "$input.n * 2").await, Ok(json!(6)));
}

async fn fails_with(sb: &Sandbox, source: &str, code_expected: &str) {
    let started = Instant::now();
    let result = code(sb, source).await;
    match &result {
        Err(e) => assert_eq!(e.code, code_expected, "{source}: {e:?}"),
        Ok(v) => panic!("{source}: expected {code_expected}, got {v}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{source} took {:?}",
        started.elapsed()
    );
    still_serves(sb).await;
}

#[tokio::test]
async fn endless_loops_are_interrupted() {
    let sb = sandbox();
    for source in [
        "while (true) {}",
        "for (;;) {}",
        "do {} while (1)",
        "try { while (true) {} } finally { while (true) {} }",
        "try { while (true) {} } catch (e) {} while (true) {}",
        "function f() { try { while (true) {} } catch (e) { f(); } } f();",
        "return /(a+)+$/.test('a'.repeat(40) + 'b');",
        "const a = []; for (let i = 0; ; i++) { a[i % 10] = i; }",
        "let x = 0; while (true) { try { x++; } finally { continue; } }",
        "[1].forEach(function loop() { while (true) {} });",
    ] {
        fails_with(&sb, source, "sandbox_timeout").await;
    }
}

#[tokio::test]
async fn memory_bombs_hit_the_cap() {
    let sb = sandbox();
    for source in [
        "return 'x'.repeat(2 ** 30);",
        "let s = 'x'; while (true) s += s; return s;",
        "return new Array(1e8).fill(0).length;",
        "return new Uint8Array(1e9).length;",
        "return new ArrayBuffer(2 ** 31).byteLength;",
        "const a = []; while (true) a.push({k: new Array(1000).fill('x')});",
        "let o = {}; for (let i = 0; ; i++) o['k' + i] = [i, i, i, i];",
        "let n = []; for (let i = 0; i < 1e7; i++) n = [n]; return n.length;",
        "return Array.from({length: 1e9}, (_, i) => i).length;",
        "return JSON.parse('[' + '1,'.repeat(1e8) + '1]').length;",
    ] {
        let result = code(&sb, source).await;
        let err = result.expect_err(source);
        assert!(
            err.code == "sandbox_memory" || err.code == "sandbox_timeout",
            "{source}: {err:?}"
        );
        still_serves(&sb).await;
    }
}

#[tokio::test]
async fn stack_exhaustion_is_contained() {
    let sb = sandbox();
    for source in [
        "function f() { return f() + 1; } return f();",
        "const o = { get x() { return this.x; } }; return o.x;",
        "let a = []; for (let i = 0; i < 1e6; i++) a = [a]; return JSON.stringify(a).length;",
        "function f(n) { return n === 0 ? 0 : 1 + f(n - 1); } return f(1e7);",
        "const p = new Proxy({}, { get: (t, k, r) => r[k] }); return p.x;",
    ] {
        fails_with(&sb, source, "sandbox_memory").await;
    }
}

#[tokio::test]
async fn no_route_reaches_eval_or_a_function_constructor() {
    let sb = sandbox();
    for source in [
        "return eval('1');",
        "return globalThis.eval('1');",
        "return (0, eval)('1');",
        "return Function('return 1')();",
        "return new Function('return 1')();",
        "return (function(){}).constructor('return this')();",
        "return (() => {}).constructor('return 1')();",
        "return (async function(){}).constructor('return 1')();",
        "return (function*(){}).constructor('yield 1')().next().value;",
        "return (async function*(){}).constructor('yield 1')();",
        "return new (Object.getPrototypeOf(function*(){}).constructor)('yield 1');",
        "return Reflect.construct(Object.getPrototypeOf(function(){}).constructor, ['return 1'])();",
        "return [].map.constructor('return 1')();",
        "return Symbol.constructor('return 1')();",
        "return this.constructor.constructor('return 1')();",
        "return $h.sha256.constructor('return 1')();",
        "return Object.getOwnPropertyDescriptor(Object.getPrototypeOf(function(){}), 'constructor').value('return 1')();",
        "return import('fs');",
        "return require('fs');",
        "return new WebAssembly.Module(new Uint8Array([0]));",
    ] {
        let result = code(&sb, source).await;
        let err = result.expect_err(source);
        assert!(
            err.code == "sandbox_error" || err.code == "sandbox_output",
            "{source}: {err:?}"
        );
        still_serves(&sb).await;
    }
}

#[tokio::test]
async fn nothing_a_script_does_survives_into_the_next() {
    let sb = sandbox();
    for attack in [
        "Object.prototype.polluted = 1;",
        "Array.prototype.push = function () { return 'pwned'; };",
        "globalThis.leak = 1;",
        "Object.defineProperty(Object.prototype, 'polluted', { value: 1 });",
        "JSON.stringify = () => '\"pwned\"';",
        "JSON.parse = () => ({pwned: true});",
        "$h.sha256 = () => 'pwned';",
        "$input.__proto__.polluted = 1;",
        "Math.random = () => 4;",
        "String.prototype.toUpperCase = () => 'pwned';",
        "var declared = 1;",
    ] {
        // Frozen built-ins make these throw in strict mode, or do nothing; either way nothing persists.
        let _ = code(&sb, attack).await;
    }
    for _ in 0..4 {
        // Every pool thread is checked: the results must be pristine on each.
        let check = code(
            &sb,
            "const a = []; a.push(1);
             return [({}).polluted, a.length, typeof globalThis.leak, JSON.stringify({a: 1}), $h.sha256('') ,
                     typeof $input.polluted, 'a'.toUpperCase(), typeof declared];",
        )
        .await
        .unwrap();
        assert_eq!(
            check,
            json!([
                null,
                1,
                "undefined",
                "{\"a\":1}",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "undefined",
                "A",
                "undefined"
            ])
        );
    }
}

#[tokio::test]
async fn no_host_object_is_reachable() {
    let sb = sandbox();
    let seen = code(
        &sb,
        "return ['process', 'require', 'std', 'os', 'fetch', 'setTimeout', 'console', 'Deno', 'print', 'eval', 'Function']
            .filter(n => typeof globalThis[n] !== 'undefined');",
    )
    .await
    .unwrap();
    assert_eq!(seen, json!([]));
    let names = code(&sb, "return Object.getOwnPropertyNames(globalThis);")
        .await
        .unwrap();
    for host in ["std", "os", "console", "print", "eval", "Function"] {
        assert!(!names.as_array().unwrap().contains(&json!(host)), "{host} in {names}");
    }
}

#[tokio::test]
async fn results_must_be_json() {
    let sb = sandbox();
    for source in [
        "return function () {};",
        "return Symbol('s');",
        "return 10n;",
        "const a = {}; a.self = a; return a;",
        "return {n: 10n};",
        "return Promise.resolve(1);",
        "return 'x'.repeat(2 * 1024 * 1024);",
    ] {
        fails_with(&sb, source, "sandbox_output").await;
    }
    assert_eq!(code(&sb, "return undefined;").await, Ok(Value::Null));
    assert_eq!(
        code(&sb, "return {f: () => 1, n: 1};").await,
        Ok(json!({"n": 1})),
        "nested functions are dropped"
    );
}

#[tokio::test]
async fn thrown_errors_report_message_and_line() {
    let sb = sandbox();
    let e = code(&sb, "const a = 1;\nconst b = 2;\nthrow new Error('boom');")
        .await
        .unwrap_err();
    assert_eq!((e.code, e.message.as_str(), e.line), ("sandbox_error", "boom", Some(3)));
    let e = code(&sb, "const a = 1;\nreturn a +;").await.unwrap_err();
    assert_eq!(e.code, "sandbox_error");
    assert_eq!(e.line, Some(2), "{e:?}");
    let e = code(&sb, "throw 'plain';").await.unwrap_err();
    assert!(e.message.contains("plain"), "{e:?}");
    // QuickJS throws null when even its out-of-memory error cannot be allocated.
    assert_eq!(code(&sb, "throw null;").await.unwrap_err().code, "sandbox_memory");
    still_serves(&sb).await;
}

#[tokio::test]
async fn scripts_see_the_scope_and_helpers_and_return_typed_json() {
    let sb = sandbox();
    assert_eq!(expr(&sb, "$input.a.b[0]").await, Ok(json!(7)));
    assert_eq!(expr(&sb, "$node.x.output.y.toUpperCase()").await, Ok(json!("WHY")));
    assert_eq!(
        expr(&sb, "[$vars.region, $run.trigger]").await,
        Ok(json!(["eu", "api"]))
    );
    assert_eq!(expr(&sb, "$input.n > 2").await, Ok(json!(true)));
    assert_eq!(expr(&sb, "null").await, Ok(Value::Null));
    assert_eq!(expr(&sb, "({k: `v${$input.n}`})").await, Ok(json!({"k": "v3"})));
    assert_eq!(
        code(
            &sb,
            "let s = 0; for (const x of $input.a.b) s += x; return {s, up: $input.name.toUpperCase()};"
        )
        .await,
        Ok(json!({"s": 15, "up": "ADA"}))
    );
    assert_eq!(expr(&sb, "$h.base64Encode('héllo')").await, Ok(json!("aMOpbGxv")));
    assert_eq!(expr(&sb, "$h.base64Decode('aMOpbGxv')").await, Ok(json!("héllo")));
    assert_eq!(
        expr(&sb, "$h.formatDate('2026-11-23T10:00:00Z', '%Y/%m/%d %H:%M')").await,
        Ok(json!("2026/11/23 10:00"))
    );
    assert_eq!(
        expr(&sb, "$h.formatDate(0)").await,
        Ok(json!("1970-01-01T00:00:00.000Z"))
    );
    assert_eq!(expr(&sb, "typeof $h.now()").await, Ok(json!("string")));
    assert_eq!(
        expr(&sb, "$h.base64Decode('%%%')").await.unwrap_err().code,
        "sandbox_error"
    );
}

#[tokio::test]
async fn several_expressions_share_one_scope_in_one_call() {
    let sb = sandbox();
    let jobs = ["$input.n", "$input.n + 1", "$input.missing.deep"]
        .iter()
        .map(|s| Job {
            source: Arc::from(*s),
            kind: ScriptKind::Expression,
            timeout: Duration::from_millis(250),
        })
        .collect();
    let results = sb.run(scope(), jobs).await;
    assert_eq!(results[0], Ok(json!(3)));
    assert_eq!(results[1], Ok(json!(4)));
    assert_eq!(results[2].as_ref().unwrap_err().code, "sandbox_error");
}

#[tokio::test]
async fn many_concurrent_callers_are_all_served_by_reused_engines() {
    let sb = sandbox();
    let calls = (0..500).map(|i| {
        let sb = sb.clone();
        tokio::spawn(async move {
            let job = Job {
                source: Arc::from(format!("$input.n + {}", i % 7)),
                kind: ScriptKind::Expression,
                timeout: Duration::from_millis(500),
            };
            (i, sb.run(scope(), vec![job]).await.remove(0))
        })
    });
    for call in futures_util::future::join_all(calls).await {
        let (i, result) = call.unwrap();
        assert_eq!(result, Ok(json!(3 + i % 7)));
    }
    // Runtimes are pooled: 500 evaluations on two threads built two engines, not 500.
    assert!((1..=2).contains(&sb.engines_built()), "{} engines", sb.engines_built());
}
