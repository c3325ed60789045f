//! RabbitMQ topology and the run message envelope (design §6).
//!
//! Every exchange and queue name starts with `FLOQ_QUEUE_PREFIX`, so several
//! environments (and parallel tests) share one broker.

use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::replies::{DIRECT_REPLY_TO, Replies};

/// A message on the runs queue. Versioned and tagged so that workers of one
/// release can tell (and dead-letter) what a later release sends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind")]
pub enum Envelope {
    #[serde(rename = "run_flow.v1")]
    RunFlowV1(RunFlowV1),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunFlowV1 {
    pub run_id: Uuid,
    pub company_id: Uuid,
    pub flow_id: Uuid,
    pub version: i32,
    pub attempt: i32,
    pub trigger: crate::run::Trigger,
    /// The run's input, carried inline when small (see `INLINE_INPUT_MAX`) so
    /// the worker need not read it back; otherwise the worker loads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// W3C `traceparent` of the request that accepted the run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Envelope {
    pub fn run_id(&self) -> Uuid {
        match self {
            Envelope::RunFlowV1(m) => m.run_id,
        }
    }

    pub fn company_id(&self) -> Uuid {
        match self {
            Envelope::RunFlowV1(m) => m.company_id,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialize")
    }
}

/// A message on the control exchange, to every worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind")]
pub enum Control {
    /// Stop this run: a worker holding it cancels it, every worker refuses to start it.
    #[serde(rename = "cancel.v1")]
    CancelV1 { run_id: Uuid },
    /// The outbox sweep is about to publish copies of runs accepted up to
    /// `before_ms` (Unix milliseconds) whose original message may still
    /// arrive: a first delivery of such a run that waited claims it.
    #[serde(rename = "swept.v1")]
    SweptV1 { before_ms: i64 },
}

/// Inputs up to this many bytes of JSON travel inside the message.
pub const INLINE_INPUT_MAX: i32 = 8192;

/// Queue and exchange names for one prefix.
///
/// Runs travel on a fixed number of shard queues (`FLOQ_QUEUE_SHARDS`), a
/// company's runs all on one of them, so a worker can consume the shards
/// side by side and share its capacity between companies instead of taking
/// one company's whole backlog first. The number of queues does not grow
/// with the number of tenants.
#[derive(Clone, Debug)]
pub struct Topology {
    /// `{prefix}.runs`, the one queue of releases before sharding. Still
    /// declared and consumed, so messages left in it by an upgrade run;
    /// nothing publishes to it any more. Dead letters keep its name as their
    /// routing key, whichever shard they died on.
    pub runs: String,
    /// `{prefix}.runs.{n}`, n from 0.
    pub shards: Vec<String>,
    pub dead: String,
    pub dead_exchange: String,
    /// Fanout exchange of control messages to every worker ([`Control`]):
    /// each binds an exclusive, auto-delete queue of its own.
    pub control: String,
}

impl Topology {
    pub fn new(prefix: &str, shards: u16) -> Self {
        Self {
            runs: format!("{prefix}.runs"),
            shards: (0..shards.max(1)).map(|n| format!("{prefix}.runs.{n}")).collect(),
            dead: format!("{prefix}.runs.dead"),
            dead_exchange: format!("{prefix}.dlx"),
            control: format!("{prefix}.control"),
        }
    }

    pub fn from_config(config: &crate::Config) -> Self {
        Self::new(&config.queue_prefix, config.queue_shards)
    }

    /// The shard a company's runs go to: a stable hash (FNV-1a) of its id, so
    /// every replica of every release agrees.
    pub fn shard_of(&self, company_id: Uuid) -> usize {
        let hash = company_id.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % self.shards.len() as u64) as usize
    }

    /// The queue a company's runs are published to.
    pub fn queue_for(&self, company_id: Uuid) -> &str {
        &self.shards[self.shard_of(company_id)]
    }

    /// Every queue runs arrive on: the shards, then the queue from before sharding.
    pub fn run_queues(&self) -> impl Iterator<Item = &str> {
        self.shards
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.runs.as_str()))
    }

    /// Declares everything idempotently; every service calls it at start.
    pub async fn declare(&self, channel: &Channel, delivery_limit: u32) -> lapin::Result<()> {
        // Not durable: control messages matter only to the workers connected now (a reconnecting worker reloads
        // what it missed from the database).
        channel
            .exchange_declare(
                self.control.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel
            .queue_declare(self.dead.as_str().into(), durable(), dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead.as_str().into(),
                self.dead_exchange.as_str().into(),
                self.runs.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(delivery_limit as i32));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange.as_str().into()),
        );
        // Declared with exactly the arguments it always had: a queue's arguments cannot change.
        channel
            .queue_declare(self.runs.as_str().into(), durable(), args.clone())
            .await?;
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.runs.as_str().into()),
        );
        for shard in &self.shards {
            channel
                .queue_declare(shard.as_str().into(), durable(), args.clone())
                .await?;
        }
        Ok(())
    }

    /// Messages ready in the run queues (all shards and the queue from before
    /// sharding), from a passive declare of each: cheap, and exact enough for
    /// backpressure. Unacked messages (held by workers) are not counted.
    pub async fn depth(&self, channel: &Channel) -> lapin::Result<u64> {
        let mut total = 0u64;
        for queue in self.run_queues() {
            let q = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            total += u64::from(q.message_count());
        }
        Ok(total)
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Heartbeat interval asked for when the URL names none (`?heartbeat=N`
/// overrides it). Without one lapin follows the broker's default of 60 s, so
/// a half-open connection (a broker host that vanished, a dropped NAT entry)
/// would hold a service's runs for minutes before anything noticed.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Connects to the broker. `urls` may list the nodes of a cluster separated
/// by commas (`FLOQ_AMQP_URL`): each connection starts at the next node in
/// turn (spreading connections) and tries the others when it is down, so a
/// service reconnects to a surviving node when its own stops.
pub async fn connect(urls: &str) -> lapin::Result<Connection> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nodes: Vec<&str> = nodes(urls).collect();
    if nodes.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no broker URL").into());
    }
    let start = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut last = None;
    for i in 0..nodes.len() {
        match connect_one(nodes[(start + i) % nodes.len()]).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one node was tried"))
}

/// The node URLs of a `FLOQ_AMQP_URL`.
pub fn nodes(urls: &str) -> impl Iterator<Item = &str> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty())
}

async fn connect_one(url: &str) -> lapin::Result<Connection> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    Connection::connect_uri(uri, ConnectionProperties::default()).await
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable")]
    Broker(#[from] lapin::Error),
    #[error("broker refused {0} message(s)")]
    Refused(usize),
}

/// Publishes run envelopes with publisher confirms, a whole batch in flight at
/// once (a confirm window) rather than one round trip per message. Reconnects
/// lazily after a broker failure; anything unconfirmed stays in the outbox.
///
/// With [`Publisher::with_replies`] the channel also consumes direct reply-to,
/// so runs published with a reply request answer the waiting caller.
/// The AMQP `type` of a message published again ([`Publisher::republish`]).
/// With the broker's own `redelivered` flag it marks every way a run's
/// message can arrive twice, and only those pay for a status check.
pub const REPUBLISHED: &str = "floq.republished";

/// The AMQP `type` of a continuation of a run ([`Publisher::resume`]): the
/// run may be `running` with checkpoints. Its worker checks the run's status
/// and, unless it is final, resumes it after its checkpointed nodes.
pub const RESUMED: &str = "floq.resumed";

/// The header of a parked run's message: when it may go on, in Unix milliseconds.
pub const WAKE_AT_HEADER: &str = "x-floq-wake-at";

pub struct Publisher {
    url: String,
    topology: Topology,
    control: String,
    channel: Mutex<Option<(Connection, Channel)>>,
    replies: Option<Arc<Replies>>,
}

impl Publisher {
    pub fn new(url: &str, topology: &Topology) -> Self {
        Self {
            url: url.to_string(),
            topology: topology.clone(),
            control: topology.control.clone(),
            channel: Mutex::new(None),
            replies: None,
        }
    }

    /// Also consume direct reply-to on the publishing channel, handing replies to [`Publisher::replies`].
    pub fn with_replies(mut self) -> Self {
        self.replies = Some(Arc::default());
        self
    }

    /// The callers waiting for replies, if this publisher receives them.
    pub fn replies(&self) -> Option<&Arc<Replies>> {
        self.replies.as_ref()
    }

    /// Returns once the broker has confirmed every message, or an error if any
    /// was not confirmed (the caller leaves those to the outbox sweep).
    pub async fn publish(&self, batch: &[Envelope]) -> Result<(), PublishError> {
        let batch: Vec<(&Envelope, bool)> = batch.iter().map(|e| (e, false)).collect();
        self.publish_asking(&batch).await
    }

    /// Publishes messages that may have been published before (the outbox
    /// sweep): they are marked [`REPUBLISHED`], so a worker first checks
    /// whether the run already finished instead of running its nodes again.
    pub async fn republish(&self, batch: &[Envelope]) -> Result<(), PublishError> {
        let batch: Vec<(&Envelope, bool)> = batch.iter().map(|e| (e, false)).collect();
        self.send(&batch, Some(REPUBLISHED)).await
    }

    /// Publishes continuations of runs that may have started (a stopping
    /// worker's hand-back, a lease that expired), marked [`RESUMED`]. Unlike
    /// a nack with requeue this does not count against the queue's delivery
    /// limit.
    pub async fn resume(&self, batch: &[Envelope]) -> Result<(), PublishError> {
        let batch: Vec<(&Envelope, bool)> = batch.iter().map(|e| (e, false)).collect();
        self.send(&batch, Some(RESUMED)).await
    }

    /// Publishes a parked run's message to `queue`, one of the worker's delay
    /// queues (`crate::parking`), carrying its wake time ([`WAKE_AT_HEADER`]).
    pub async fn park(&self, queue: &str, envelope: &Envelope, wake_at_ms: i64) -> Result<(), PublishError> {
        self.ensure_connected().await?;
        let mut guard = self.channel.lock().await;
        let Some((_, channel)) = guard.as_ref() else {
            return Err(PublishError::Broker(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            )));
        };
        let mut headers = FieldTable::default();
        headers.insert(WAKE_AT_HEADER.into(), AMQPValue::LongLongInt(wake_at_ms));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let published = async {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &envelope.to_bytes(),
                    properties,
                )
                .await?;
            match confirm.await? {
                Confirmation::Ack(None) => Ok(()),
                _ => Err(PublishError::Refused(1)),
            }
        }
        .await;
        if matches!(published, Err(PublishError::Broker(_))) {
            *guard = None;
        }
        published
    }

    /// As [`Publisher::publish`]; messages paired with `true` ask their worker
    /// to reply (direct reply-to), which needs [`Publisher::with_replies`].
    pub async fn publish_asking(&self, batch: &[(&Envelope, bool)]) -> Result<(), PublishError> {
        self.send(batch, None).await
    }

    /// Tells every connected worker (the control exchange), confirmed by the broker.
    pub async fn broadcast(&self, message: &Control) -> Result<(), PublishError> {
        self.ensure_connected().await?;
        let mut guard = self.channel.lock().await;
        let Some((_, channel)) = guard.as_ref() else {
            return Err(PublishError::Broker(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            )));
        };
        let body = serde_json::to_vec(message).expect("control messages always serialize");
        let sent = async {
            let confirm = channel
                .basic_publish(
                    self.control.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await?;
            match confirm.await? {
                Confirmation::Ack(_) => Ok(()),
                _ => Err(PublishError::Refused(1)),
            }
        }
        .await;
        if matches!(sent, Err(PublishError::Broker(_))) {
            *guard = None;
        }
        sent
    }

    /// The one place a run's queue is chosen: its company's shard.
    fn route(&self, envelope: &Envelope) -> &str {
        self.topology.queue_for(envelope.company_id())
    }

    /// `kind`: the AMQP `type` of a message that may arrive twice ([`REPUBLISHED`], [`RESUMED`]).
    async fn send(&self, batch: &[(&Envelope, bool)], kind: Option<&'static str>) -> Result<(), PublishError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.ensure_connected().await?;
        let mut guard = self.channel.lock().await;
        let Some((_, channel)) = guard.as_ref() else {
            return Err(PublishError::Broker(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            )));
        };
        let result = self.publish_on(channel, batch, kind).await;
        if matches!(result, Err(PublishError::Broker(_))) {
            *guard = None;
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        batch: &[(&Envelope, bool)],
        kind: Option<&'static str>,
    ) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(batch.len());
        for (envelope, ask) in batch {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            if *ask && self.replies.is_some() {
                properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
            }
            if let Some(kind) = kind {
                properties = properties.with_type(kind.into());
            }
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.route(envelope).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &envelope.to_bytes(),
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }
        let mut refused = 0;
        for confirm in confirms {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                _ => refused += 1,
            }
        }
        if refused > 0 {
            Err(PublishError::Refused(refused))
        } else {
            Ok(())
        }
    }

    /// Connects now rather than on the first publish, so start-up fails fast
    /// when the broker is unreachable.
    pub async fn ensure_connected(&self) -> lapin::Result<()> {
        let mut guard = self.channel.lock().await;
        if guard
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            let conn = connect(&self.url).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            if let Some(replies) = &self.replies {
                // Direct reply-to must be consumed (no-ack) on the channel that publishes.
                let mut consumer = ch
                    .basic_consume(
                        DIRECT_REPLY_TO.into(),
                        "floq-replies".into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let replies = replies.clone();
                tokio::spawn(async move {
                    while let Some(Ok(delivery)) = consumer.next().await {
                        replies.deliver(&delivery.data);
                    }
                    // Replies addressed to this channel can no longer arrive.
                    replies.forget_all();
                });
            }
            *guard = Some((conn, ch));
        }
        Ok(())
    }

    /// For readiness probes; a publish in progress counts as connected.
    pub fn is_connected(&self) -> bool {
        match self.channel.try_lock() {
            Ok(guard) => guard.as_ref().is_some_and(|(c, _)| c.status().connected()),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_company_always_maps_to_the_same_shard_and_companies_spread() {
        let t = Topology::new("floq", 8);
        assert_eq!(t.shards.len(), 8);
        assert_eq!(t.shards[3], "floq.runs.3");
        // Pinned: every replica of every release must route a company to the same queue.
        let company = Uuid::parse_str("0190f5a4-7b2c-7d3e-8f40-123456789abc").unwrap();
        assert_eq!(t.shard_of(company), Topology::new("other", 8).shard_of(company));
        assert_eq!(t.queue_for(company), t.shards[t.shard_of(company)]);
        let mut counts = [0usize; 8];
        for _ in 0..8_000 {
            counts[t.shard_of(Uuid::now_v7())] += 1;
        }
        assert!(counts.iter().all(|&n| (700..1300).contains(&n)), "{counts:?}");
        assert_eq!(
            t.run_queues().last(),
            Some("floq.runs"),
            "the queue from before sharding is still consumed"
        );
        assert_eq!(Topology::new("floq", 0).shards, ["floq.runs.0"]);
    }
}
