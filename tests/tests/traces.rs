//! OpenTelemetry traces over OTLP/HTTP: a run started with a W3C
//! `traceparent` is one trace from the API request through the queue to the
//! run and each node, received by an OTLP/HTTP endpoint this test serves.
//! Its own test binary: the tracing subscriber is global, and only this one
//! exports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;

use floq_shared::config::Otel;
use floq_tests::{Options, TestApp};

type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver: every span posted to `/v1/traces` (protobuf).
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    async fn traces(State(received): State<Received>, body: Bytes) -> (StatusCode, [(&'static str, &'static str); 1]) {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
        let mut spans = received.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        (StatusCode::OK, [("content-type", "application/x-protobuf")])
    }
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

#[tokio::test]
async fn a_traceparent_on_a_trigger_is_continued_through_the_queue_to_the_run_and_each_node() {
    let (endpoint, received) = receiver().await;
    let app = TestApp::spawn_configured(
        Options {
            worker: true,
            scheduler: false,
        },
        |c| {
            c.otel = Some(Otel {
                traces_endpoint: endpoint,
                service_name: None,
                headers: vec![],
                schedule_delay: Duration::from_millis(100),
                timeout: Duration::from_secs(5),
            })
        },
    )
    .await;
    let flow_id = app
        .deployed_flow(json!({
            "nodes": [
                {"id": "first", "type": "set", "params": {"values": {"a": 1}}},
                {"id": "second", "type": "set", "params": {"values": {"b": 2}}}
            ],
            "edges": [{"from": "first", "to": "second"}]
        }))
        .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let response = app
        .client
        .post(format!("{}/api/v1/flows/{flow_id}/runs", app.base))
        .bearer_auth(&app.admin.api_key)
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .json(&json!({"input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let run_id = response.json::<serde_json::Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = app.wait_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let ours = |spans: &[Span]| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| hex::encode(&s.trace_id) == trace_id)
            .cloned()
            .collect()
    };
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = ours(&received.lock().unwrap());
        if spans.iter().filter(|s| s.name == "node").count() >= 2 && spans.iter().any(|s| s.name == "request") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let request = named("request");
    assert_eq!(
        request.len(),
        1,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(
        hex::encode(&request[0].parent_span_id),
        parent_id,
        "the caller's span is the parent"
    );
    let accept = named("accept");
    assert_eq!(accept.len(), 1);
    assert_eq!(accept[0].parent_span_id, request[0].span_id);
    let run_span = named("run");
    assert_eq!(run_span.len(), 1);
    assert_eq!(
        run_span[0].parent_span_id, accept[0].span_id,
        "the queue hop keeps the trace"
    );
    assert_eq!(attribute(run_span[0], "run.id").as_deref(), Some(run_id.as_str()));
    assert_eq!(attribute(run_span[0], "flow.id").as_deref(), Some(flow_id.as_str()));
    assert_eq!(
        attribute(run_span[0], "company.id"),
        Some(app.admin.company_id.to_string())
    );
    let mut nodes: Vec<String> = named("node")
        .iter()
        .map(|s| {
            assert_eq!(s.parent_span_id, run_span[0].span_id);
            attribute(s, "node.id").unwrap()
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["first", "second"]);
    app.teardown().await;
}
