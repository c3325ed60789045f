//! Replies to synchronous triggers (design §6): a worker that finished a run
//! whose message named a `reply_to` sends the outcome there once it is
//! committed. The API publishes such runs with RabbitMQ's direct reply-to
//! (`amq.rabbitmq.reply-to`) on its publishing channel and hands each reply
//! to the request waiting for it, so nobody polls the database and no worker
//! slot is held while a caller waits.
//!
//! Replies are best-effort: a reply whose waiter gave up (or whose channel
//! closed) is dropped, and the caller has the run id to look the run up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

/// RabbitMQ's pseudo-queue for direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether a message's `reply_to` is a direct reply-to address. Workers reply
/// to nothing else, so a forged message cannot make them publish into a queue.
pub fn is_reply_address(to: &str) -> bool {
    to.strip_prefix(DIRECT_REPLY_TO)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| !rest.is_empty())
}

/// Replies above this size carry no output; the API reads the run once
/// instead. Keeps replies far below the broker's message size limit.
pub const MAX_INLINE_REPLY_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind")]
pub enum ReplyEnvelope {
    #[serde(rename = "run_reply.v1")]
    RunReplyV1(RunReply),
}

/// Headers a `respond` node may not set: framing and connection headers are
/// the server's; cookies, CORS, site-data and authentication-prompt headers on
/// the API's origin would let a flow tamper with other users' sessions. (The
/// API's security headers always win too.)
pub const FORBIDDEN_REPLY_HEADERS: [&str; 17] = [
    "clear-site-data",
    "refresh",
    "www-authenticate",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-connection",
    "content-length",
    "set-cookie",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
];

/// A finished run, as a synchronous caller sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunReply {
    pub run_id: Uuid,
    /// The run's final status.
    pub status: crate::run::RunStatus,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
    /// The output of the first `respond` node that ran: `{status, headers, body}`.
    #[serde(default)]
    pub respond: Option<Value>,
    /// That node's id, so an oversized reply can be read from the run's steps.
    #[serde(default)]
    pub respond_node: Option<String>,
    /// `output` and `respond` were left out (over `MAX_INLINE_REPLY_BYTES`).
    #[serde(default)]
    pub oversized: bool,
}

impl ReplyEnvelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("replies always serialize")
    }
}

/// The requests of one API replica that are waiting for their runs.
#[derive(Default)]
pub struct Replies {
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<RunReply>>>,
}

impl Replies {
    /// Registers interest in a run before it is published, so a fast reply is never missed.
    pub fn register(self: &Arc<Self>, run_id: Uuid) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(run_id, tx);
        Waiter {
            run_id,
            rx: Some(rx),
            replies: self.clone(),
        }
    }

    /// Hands a reply message to its waiter; unknown, late or undecodable ones are dropped.
    pub fn deliver(&self, bytes: &[u8]) {
        let reply = match serde_json::from_slice::<ReplyEnvelope>(bytes) {
            Ok(ReplyEnvelope::RunReplyV1(reply)) => reply,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable run reply; dropping it");
                return;
            }
        };
        if let Some(tx) = self.lock().remove(&reply.run_id) {
            let _ = tx.send(reply);
        }
    }

    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Gives up on runs whose reply cannot come (their publish failed): their
    /// callers answer `202` now rather than at the end of the wait.
    pub fn forget(&self, run_ids: impl IntoIterator<Item = Uuid>) {
        let mut waiting = self.lock();
        for id in run_ids {
            waiting.remove(&id);
        }
    }

    /// Gives up on every waiting run: the channel their replies were addressed to is gone.
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<RunReply>>> {
        // A panic elsewhere cannot leave the map half-updated: every operation is one call.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's wait for its run; dropping it unregisters the run.
pub struct Waiter {
    run_id: Uuid,
    rx: Option<oneshot::Receiver<RunReply>>,
    replies: Arc<Replies>,
}

impl Waiter {
    /// The reply, or `None` when the channel it would arrive on went away.
    pub async fn recv(&mut self) -> Option<RunReply> {
        self.rx.as_mut()?.await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.run_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(run_id: Uuid) -> Vec<u8> {
        ReplyEnvelope::RunReplyV1(RunReply {
            run_id,
            status: crate::run::RunStatus::Succeeded,
            output: Some(serde_json::json!({"ok": true})),
            error: None,
            respond: None,
            respond_node: None,
            oversized: false,
        })
        .to_bytes()
    }

    #[test]
    fn only_direct_reply_to_addresses_are_replied_to() {
        assert!(is_reply_address("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNjk"));
        for bad in [
            "floq.runs",
            "amq.rabbitmq.reply-to",
            "amq.rabbitmq.reply-to.",
            "amq.rabbitmq.reply-tox",
        ] {
            assert!(!is_reply_address(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_reply_reaches_its_waiter_and_only_it() {
        let replies = Arc::new(Replies::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut wa = replies.register(a);
        let _wb = replies.register(b);
        replies.deliver(&reply(a));
        replies.deliver(b"not json");
        replies.deliver(&reply(Uuid::now_v7()));
        assert_eq!(wa.recv().await.unwrap().run_id, a);
        assert_eq!(replies.waiting(), 1);
    }

    #[tokio::test]
    async fn a_forgotten_waiter_stops_waiting_at_once() {
        let replies = Arc::new(Replies::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (mut wa, mut wb) = (replies.register(a), replies.register(b));
        replies.forget([a]);
        assert!(wa.recv().await.is_none());
        replies.forget_all();
        assert!(wb.recv().await.is_none());
    }

    #[test]
    fn a_dropped_waiter_unregisters() {
        let replies = Arc::new(Replies::default());
        let w = replies.register(Uuid::now_v7());
        assert_eq!(replies.waiting(), 1);
        drop(w);
        assert_eq!(replies.waiting(), 0);
    }
}
