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

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialize")
    }
}

/// Inputs up to this many bytes of JSON travel inside the message.
pub const INLINE_INPUT_MAX: i32 = 8192;

/// Queue and exchange names for one prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    pub runs: String,
    pub dead: String,
    pub dead_exchange: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            runs: format!("{prefix}.runs"),
            dead: format!("{prefix}.runs.dead"),
            dead_exchange: format!("{prefix}.dlx"),
        }
    }

    /// Declares everything idempotently; every service calls it at start.
    pub async fn declare(&self, channel: &Channel, delivery_limit: u32) -> lapin::Result<()> {
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
        channel
            .queue_declare(self.runs.as_str().into(), durable(), args)
            .await?;
        Ok(())
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

pub async fn connect(url: &str) -> lapin::Result<Connection> {
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

pub struct Publisher {
    url: String,
    queue: String,
    channel: Mutex<Option<(Connection, Channel)>>,
    replies: Option<Arc<Replies>>,
}

impl Publisher {
    pub fn new(url: &str, topology: &Topology) -> Self {
        Self {
            url: url.to_string(),
            queue: topology.runs.clone(),
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
        self.send(&batch, true).await
    }

    /// As [`Publisher::publish`]; messages paired with `true` ask their worker
    /// to reply (direct reply-to), which needs [`Publisher::with_replies`].
    pub async fn publish_asking(&self, batch: &[(&Envelope, bool)]) -> Result<(), PublishError> {
        self.send(batch, false).await
    }

    async fn send(&self, batch: &[(&Envelope, bool)], again: bool) -> Result<(), PublishError> {
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
        let result = self.publish_on(channel, batch, again).await;
        if matches!(result, Err(PublishError::Broker(_))) {
            *guard = None;
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        batch: &[(&Envelope, bool)],
        again: bool,
    ) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(batch.len());
        for (envelope, ask) in batch {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            if *ask && self.replies.is_some() {
                properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
            }
            if again {
                properties = properties.with_type(REPUBLISHED.into());
            }
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
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
