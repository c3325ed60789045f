//! A finished (or still running) run as the `CallToolResult` a client reads.

use std::time::Duration;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::Revision;
use floq_shared::replies::RunReply;
use floq_shared::run::RunStatus;

/// A run's outcome as a `CallToolResult`, and its label for metrics and audit.
pub fn tool_result(
    revision: Revision,
    run_id: Uuid,
    reply: Option<RunReply>,
    deadline: Duration,
) -> (&'static str, Value) {
    let mut result = Map::new();
    let (outcome, status, structured, text, is_error) = match reply {
        None => {
            let text = format!(
                "the run {run_id} did not finish within {} s; it carries on: look it up with GET /api/v1/runs/{run_id}",
                deadline.as_secs()
            );
            let structured = json!({"run_id": run_id, "status": "pending"});
            ("pending", "pending".to_string(), structured, text, false)
        }
        Some(reply) if reply.status == RunStatus::Succeeded => {
            let value = match reply.respond {
                Some(mut respond) => respond.get_mut("body").map(Value::take).unwrap_or(Value::Null),
                None => reply.output.unwrap_or(Value::Null),
            };
            let text = match &value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            ("succeeded", reply.status.to_string(), value, text, false)
        }
        Some(reply) => {
            let error = reply.error.unwrap_or(Value::Null);
            let field = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let text = format!(
                "the run {run_id} {}{}: {} {}",
                reply.status,
                match field("node") {
                    n if n.is_empty() => String::new(),
                    n => format!(" at node `{n}`"),
                },
                field("code"),
                field("message")
            );
            let outcome = if reply.status == RunStatus::Cancelled {
                "cancelled"
            } else {
                "failed"
            };
            let structured = json!({"run_id": run_id, "status": reply.status, "error": error});
            (
                outcome,
                reply.status.to_string(),
                structured,
                text.trim_end().to_string(),
                true,
            )
        }
    };
    // Before 2026-07-28, structured content had to be an object.
    let structured = match structured {
        Value::Object(_) => structured,
        other if !revision.is_modern() => json!({"result": other}),
        other => other,
    };
    result.insert("content".into(), json!([{"type": "text", "text": text}]));
    result.insert("structuredContent".into(), structured);
    result.insert("isError".into(), is_error.into());
    result.insert(
        "_meta".into(),
        json!({super::META_RUN_ID: run_id, super::META_RUN_STATUS: status}),
    );
    (outcome, super::result(revision, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: RunStatus, output: Option<Value>, error: Option<Value>) -> Option<RunReply> {
        Some(RunReply {
            run_id: Uuid::nil(),
            status,
            output,
            error,
            respond: None,
            respond_node: None,
            oversized: false,
        })
    }

    #[test]
    fn outcomes_become_tool_results_shaped_for_their_revision() {
        let t = Duration::from_secs(5);
        let (outcome, ok) = tool_result(
            Revision::Modern,
            Uuid::nil(),
            reply(RunStatus::Succeeded, Some(json!(7)), None),
            t,
        );
        assert_eq!(
            (outcome, &ok["structuredContent"], &ok["isError"]),
            ("succeeded", &json!(7), &json!(false))
        );
        assert_eq!(ok["content"], json!([{"type": "text", "text": "7"}]));
        let (_, old) = tool_result(
            Revision::Legacy("2025-06-18"),
            Uuid::nil(),
            reply(RunStatus::Succeeded, Some(json!(7)), None),
            t,
        );
        assert_eq!(old["structuredContent"], json!({"result": 7}));
        assert!(old.get("resultType").is_none());
        let error = json!({"node": "n", "code": "http_error", "message": "502 from upstream"});
        let (outcome, failed) = tool_result(
            Revision::Modern,
            Uuid::nil(),
            reply(RunStatus::Failed, None, Some(error.clone())),
            t,
        );
        assert_eq!((outcome, &failed["isError"]), ("failed", &json!(true)));
        assert_eq!(failed["structuredContent"]["error"], error);
        assert_eq!(
            failed["content"][0]["text"],
            format!(
                "the run {} failed at node `n`: http_error 502 from upstream",
                Uuid::nil()
            )
        );
        let (outcome, pending) = tool_result(Revision::Modern, Uuid::nil(), None, t);
        assert_eq!(
            (outcome, &pending["_meta"][super::super::META_RUN_STATUS]),
            ("pending", &json!("pending"))
        );
    }
}
