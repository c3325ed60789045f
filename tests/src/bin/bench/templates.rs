//! `floq-bench --templates`: what a template costs. Simple paths are
//! resolved in Rust; expressions and code nodes go through the worker's
//! QuickJS pool (compiled once per thread, then called).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use floq_shared::flow::{CompiledParams, EvalScope};
use floq_shared::script::ScriptKind;
use floq_worker::sandbox::{Job, Limits, Sandbox};

const N: usize = 20_000;

pub async fn bench() -> anyhow::Result<()> {
    let input = json!({"user": {"name": "ada", "tags": ["a", "b"]}, "n": 41});
    let nodes = HashMap::new();
    let scope = EvalScope {
        input: &input,
        nodes: &nodes,
        vars: &Value::Null,
        run: &Value::Null,
    };
    let paths = CompiledParams::compile(&json!({"v": "{{ $input.user.tags[1] }}"})).map_err(|(_, e)| e)?;
    let t = Instant::now();
    for _ in 0..N * 10 {
        std::hint::black_box(paths.eval(&scope, &[]));
    }
    let per_path = t.elapsed().as_secs_f64() / (N * 10) as f64;
    println!(
        "simple path        {:>8.2} µs/eval  {:>10.0} evals/s (one thread, no JS)",
        per_path * 1e6,
        1.0 / per_path
    );

    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let sandbox = Sandbox::new(threads, Limits::default());
    let js_scope = Arc::new(json!({"$input": input, "$node": {}, "$vars": {}, "$run": {"id": "r"}}));
    for (label, kind, source) in [
        ("expression", ScriptKind::Expression, "$input.n + 1"),
        (
            "code node",
            ScriptKind::Code,
            "let s = 0; for (const t of $input.user.tags) s += t.length; return {s, up: $input.user.name.toUpperCase()};",
        ),
    ] {
        let job = || Job {
            source: Arc::from(source),
            kind,
            timeout: std::time::Duration::from_millis(250),
        };
        // Warm every thread's compiled-script cache.
        for _ in 0..threads * 4 {
            sandbox.run(js_scope.clone(), vec![job()]).await;
        }
        let t = Instant::now();
        for _ in 0..N {
            let r = sandbox.run(js_scope.clone(), vec![job()]).await;
            anyhow::ensure!(r[0].is_ok(), "{label} failed: {:?}", r[0]);
        }
        let sequential = t.elapsed().as_secs_f64() / N as f64;
        let t = Instant::now();
        let all = futures_util::future::join_all((0..N).map(|_| sandbox.run(js_scope.clone(), vec![job()]))).await;
        anyhow::ensure!(all.iter().all(|r| r[0].is_ok()), "{label} failed under load");
        let concurrent = N as f64 / t.elapsed().as_secs_f64();
        println!(
            "{label:<18} {:>8.2} µs/eval  {:>10.0} evals/s ({threads} threads, concurrent callers)",
            sequential * 1e6,
            concurrent
        );
    }
    Ok(())
}
