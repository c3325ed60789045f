//! The Grafana dashboard (`deploy/grafana/floq.json`) against a real
//! Prometheus (Debian's `prometheus`) scraping a test stack under load:
//! every query of every panel returns data. Slow: `test.sh --slow` installs
//! the package (CI runs the offline checks of `deploy/ci/validate.sh`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use floq_tests::private::free_port;
use floq_tests::{Options, TestApp};

struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(targets: &[(&str, std::net::SocketAddr)]) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("floq-prometheus-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
    for (job, addr) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
        ));
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new(std::env::var("FLOQ_PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into()))
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("Debian's prometheus (apt-get install prometheus, or FLOQ_PROMETHEUS)");
    Prometheus {
        child,
        dir,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Every `expr` of every panel (rows nest panels too), with Grafana's interval variables filled in.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let expr = expr
                        .replace("$__rate_interval", "30s")
                        .replace("$__interval", "30s")
                        .replace("$__range", "5m");
                    out.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[tokio::test]
#[ignore = "slow: a real Prometheus scraping a stack under load (deploy/local/test.sh --slow)"]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/floq.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard")).unwrap();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 10, "too few queries in {}", path.display());

    let mut app = TestApp::spawn_with(Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let worker = app.start_worker().await;
    let scheduler = app.start_scheduler().await;
    let prometheus = start_prometheus(&[
        ("floq-api", app.api_metrics),
        ("floq-worker", worker),
        ("floq-scheduler", scheduler),
    ]);
    // Load: runs with a script (sandbox threads) and a template, through the API.
    let flow = app
        .deployed_flow(json!({"nodes": [
            {"id": "js", "type": "code", "params": {"code": "return {n: $input.n * 2}"}},
            {"id": "out", "type": "set", "params": {"values": {"n": "{{ $node.js.n }}"}}}
        ], "edges": [{"from": "js", "to": "out"}]}))
        .await;
    let client = reqwest::Client::new();
    let mut missing = Vec::new();
    for round in 0..20 {
        let mut runs = Vec::new();
        for n in 0..10 {
            runs.push(app.start_run(&flow, json!({"n": n})).await);
        }
        for run in runs {
            app.wait_run(&run).await;
        }
        if round < 4 {
            continue;
        }
        missing.clear();
        for (title, expr) in &queries {
            let answer: Value = client
                .get(
                    url::Url::parse_with_params(&format!("{}/api/v1/query", prometheus.base), [("query", expr)])
                        .unwrap(),
                )
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|r| r.json())
                .expect("prometheus answers")
                .await
                .unwrap();
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            if answer["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                missing.push(format!("{title}: {expr}"));
            }
        }
        if missing.is_empty() {
            println!("{} dashboard queries all returned data (round {round})", queries.len());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(missing.is_empty(), "queries without data:\n{}", missing.join("\n"));
    drop(prometheus);
    app.teardown().await;
}
