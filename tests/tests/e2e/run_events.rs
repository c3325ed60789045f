//! `GET /api/v1/runs/events`: run status changes as Server-Sent Events, only
//! of runs the caller may see, resumable with `Last-Event-ID`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use floq_tests::{TestApp, assert_error};

/// An open event stream and what it sent so far.
struct Events {
    resp: reqwest::Response,
    buffer: String,
}

/// One event as sent: its `event`, `id` and `data`.
#[derive(Debug, Clone)]
struct Sent {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Events {
    async fn open(app: &TestApp, key: &str, query: &str, last_event_id: Option<&str>) -> Events {
        let mut req = app
            .client
            .get(format!("{}/api/v1/runs/events{query}", app.base))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Events {
            resp,
            buffer: String::new(),
        }
    }

    /// Events until `done` holds for what was received, or the time runs out.
    async fn until(&mut self, within: Duration, done: impl Fn(&[Sent]) -> bool) -> Vec<Sent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut sent = Vec::new();
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sent {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().into();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
                        any = true;
                    }
                }
                if any {
                    sent.push(event);
                }
            }
            if done(&sent) {
                return sent;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return sent;
            }
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(_) => return sent,
                Err(_) => return sent,
            }
        }
    }
}

fn finished(sent: &[Sent], run: &str) -> bool {
    sent.iter()
        .any(|e| e.data["run_id"] == run && e.data["status"] == "succeeded")
}

#[tokio::test]
async fn run_status_changes_stream_to_those_who_may_see_them_and_resume_after_the_last_event() {
    let app = TestApp::spawn().await;
    let key = app.admin.api_key.clone();
    let definition = json!({"nodes": [{"id": "a", "type": "merge"}]});
    let seen = app.deployed_flow(definition.clone()).await;
    let hidden = app.deployed_flow(definition.clone()).await;
    let viewer = app.member(&["viewer"]).await;
    app.grant("user", viewer.user_id, "flow", &seen, "view").await;
    let globex = app.other_company().await;

    let mut admin_all = Events::open(&app, &key, "", None).await;
    let mut admin_one = Events::open(&app, &key, &format!("?flow_id={hidden}"), None).await;
    let mut granted = Events::open(&app, &viewer.api_key, "", None).await;
    let mut other = Events::open(&app, &globex.api_key, "", None).await;
    let a = app.start_run(&seen, json!({})).await;
    let b = app.start_run(&hidden, json!({})).await;
    app.wait_run(&a).await;
    app.wait_run(&b).await;

    let sent = admin_all
        .until(Duration::from_secs(10), |s| finished(s, &a) && finished(s, &b))
        .await;
    assert!(finished(&sent, &a) && finished(&sent, &b), "{sent:?}");
    let done = sent
        .iter()
        .find(|e| e.data["run_id"] == a && e.data["status"] == "succeeded")
        .unwrap();
    assert_eq!(done.event, "run");
    assert_eq!(done.data["flow_id"], seen.as_str());
    assert!(done.data["updated_at"].is_string(), "{done:?}");
    let mut keys: Vec<&String> = done.data.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["flow_id", "run_id", "status", "updated_at"]);

    let sent = admin_one.until(Duration::from_secs(5), |s| finished(s, &b)).await;
    assert!(finished(&sent, &b), "{sent:?}");
    assert!(sent.iter().all(|e| e.data["flow_id"] == hidden.as_str()), "{sent:?}");
    let sent = granted.until(Duration::from_secs(5), |s| finished(s, &a)).await;
    assert!(finished(&sent, &a), "{sent:?}");
    assert!(
        sent.iter().all(|e| e.data["run_id"] != b.as_str()),
        "a run of a flow without a grant: {sent:?}"
    );
    let sent = other.until(Duration::from_secs(1), |_| false).await;
    assert!(
        sent.iter().all(|e| e.event != "run"),
        "another company's runs: {sent:?}"
    );

    // Resuming after the first event sends what came after it, and not it again.
    let first = admin_all_first(&app, &key).await;
    assert_eq!(first.data["status"], "succeeded", "{first:?}");
    // A stream shows each run's status as of its look: both finished before any look here.
    let later = if first.data["run_id"] == a { &b } else { &a };
    let mut resumed = Events::open(&app, &key, "", first.id.as_deref()).await;
    let again = resumed.until(Duration::from_secs(5), |s| finished(s, later)).await;
    assert!(finished(&again, later), "{again:?}");
    assert!(
        again.iter().all(|e| e.id != first.id),
        "the event resumed after was sent again: {again:?}"
    );
    drop((admin_all, admin_one, granted, other, resumed));
    app.teardown().await;
}

/// The first event a stream resumed from before every run gives.
async fn admin_all_first(app: &TestApp, key: &str) -> Sent {
    let mut from_start = Events::open(app, key, "", Some("0_00000000-0000-0000-0000-000000000000")).await;
    let sent = from_start.until(Duration::from_secs(5), |s| !s.is_empty()).await;
    sent.into_iter().next().expect("an event from the start")
}

#[tokio::test]
async fn the_event_stream_refuses_foreign_flows_bad_cursors_and_roles_without_run_read() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    let flow = app
        .deployed_flow(json!({"nodes": [{"id": "a", "type": "merge"}]}))
        .await;
    let globex = app.other_company().await;
    let (status, body) = app
        .get(&format!("/api/v1/runs/events?flow_id={flow}"), &globex.api_key)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "not_found", "flow not found", Value::Null);
    let auditor = app.member(&["audit_viewer"]).await;
    let (status, body) = app.get("/api/v1/runs/events", &auditor.api_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(&body, "forbidden", "your role does not allow `run:read`", Value::Null);
    let resp = app
        .client
        .get(format!("{}/api/v1/runs/events", app.base))
        .bearer_auth(&app.admin.api_key)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(
        &resp.json().await.unwrap(),
        "validation_failed",
        "the Last-Event-ID header is invalid",
        json!([{"field": "Last-Event-ID", "message": "not an event id from this stream"}]),
    );
    app.teardown().await;
}
