//! The dead-letter consumer: every message the runs queues dead-letter (past
//! the quorum queue's delivery limit, or rejected as undecodable) fails its
//! run with a code that says why, so no run stays `queued` or `running`
//! forever without a reason. A run already final is never overwritten, so
//! every scheduler instance may consume (the work is idempotent), leader or
//! not. Each message is acked after its run's failure is committed; a body
//! without a readable run is counted, logged and dropped.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use floq_shared::db::{self, Pool, StoreError};
use floq_shared::ids::{CompanyId, RunId};
use floq_shared::queue::{self, Envelope, Topology};
use floq_shared::runs::outcomes::{self, Outcome};
use floq_shared::telemetry::METRICS;

/// The error code of a run whose message exceeded the queue's delivery limit.
pub const DELIVERY_LIMIT_EXCEEDED: &str = "delivery_limit_exceeded";
/// The error code of a run whose message no worker could decode.
pub const UNDECODABLE: &str = "undecodable";

const PREFETCH: u16 = 64;

/// Why a dead message died, and which run it names (if any can be read).
#[derive(Debug, PartialEq)]
enum Dead {
    /// A whole envelope: its run ran out of deliveries.
    OverLimit { company_id: Uuid, run_id: Uuid },
    /// Not an envelope, but a run can still be read from it.
    Undecodable { company_id: Uuid, run_id: Uuid },
    /// Nothing names a run.
    Unreadable,
}

impl Dead {
    fn reason(&self) -> &'static str {
        match self {
            Dead::OverLimit { .. } => DELIVERY_LIMIT_EXCEEDED,
            Dead::Undecodable { .. } | Dead::Unreadable => UNDECODABLE,
        }
    }
}

fn classify(body: &[u8]) -> Dead {
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body) {
        let Envelope::RunFlowV1(m) = envelope;
        return Dead::OverLimit {
            company_id: m.company_id,
            run_id: m.run_id,
        };
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Dead::Unreadable;
    };
    let id = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    match (id("company_id"), id("run_id")) {
        (Some(company_id), Some(run_id)) => Dead::Undecodable { company_id, run_id },
        _ => Dead::Unreadable,
    }
}

/// How many times the broker delivered the message, from its headers.
fn deliveries(delivery: &Delivery) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    let count = |value: &AMQPValue| match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        _ => None,
    };
    headers.inner().get("x-delivery-count").and_then(count)
}

fn failure(dead: &Dead, deliveries: Option<i64>, limit: u32) -> Outcome {
    match dead {
        Dead::OverLimit { .. } => Outcome::failed_early(
            DELIVERY_LIMIT_EXCEEDED,
            &match deliveries {
                Some(n) => format!(
                    "the run's message was delivered {n} times without the run finishing \
                     (FLOQ_QUEUE_DELIVERY_LIMIT is {limit}) and was dead-lettered"
                ),
                None => format!(
                    "the run's message was delivered more than {limit} times (FLOQ_QUEUE_DELIVERY_LIMIT) \
                     without the run finishing and was dead-lettered"
                ),
            },
        ),
        Dead::Undecodable { .. } | Dead::Unreadable => Outcome::failed_early(
            UNDECODABLE,
            "the run's message could not be decoded by any worker and was dead-lettered",
        ),
    }
}

/// Fails the dead message's run unless it is final; returns whether this call failed it.
async fn fail(pool: &Pool, company_id: Uuid, run_id: Uuid, outcome: &Outcome) -> Result<bool, StoreError> {
    let mut tx = db::tenant_tx(pool, company_id).await?;
    let done = outcomes::finish(&mut tx, CompanyId(company_id), &[(RunId(run_id), outcome)]).await?;
    db::commit(tx).await?;
    Ok(!done.is_empty())
}

/// Handles one dead message; `Err` leaves it for another try.
async fn handle(pool: &Pool, delivery_limit: u32, delivery: &Delivery) -> Result<(), StoreError> {
    let dead = classify(&delivery.data);
    let outcome = failure(&dead, deliveries(delivery), delivery_limit);
    match dead {
        Dead::OverLimit { company_id, run_id } | Dead::Undecodable { company_id, run_id } => {
            let failed = fail(pool, company_id, run_id, &outcome).await?;
            tracing::warn!(run.id = %run_id, company.id = %company_id, reason = dead.reason(), failed,
                "a dead-lettered run message: its run failed (unless it had finished)");
        }
        Dead::Unreadable => {
            tracing::error!(
                bytes = delivery.data.len(),
                "a dead-lettered message names no run; dropping it"
            );
        }
    }
    METRICS.dead_letters.with_label_values(&[dead.reason()]).inc();
    Ok(())
}

/// Consumes the dead-letter queue until `shutdown`, reconnecting after broker failures.
pub async fn consume(
    pool: Pool,
    amqp_url: String,
    topology: Topology,
    delivery_limit: u32,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = consume_once(&pool, &amqp_url, &topology, delivery_limit, &shutdown).await {
            tracing::warn!(error = %e, "consuming dead letters failed; reconnecting in 1 s");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

async fn consume_once(
    pool: &Pool,
    amqp_url: &str,
    topology: &Topology,
    delivery_limit: u32,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = queue::connect(amqp_url).await?;
    let channel = conn.create_channel().await?;
    topology.declare(&channel, delivery_limit).await?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let tag = format!("floq-dead-letters-{}", Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            topology.dead.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %topology.dead, "consuming dead letters");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the broker closed the dead-letter consumer"),
            },
        };
        match handle(pool, delivery_limit, &delivery).await {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a dead-lettered run; returning the message to the dead-letter queue");
                // Not at once: the database is likely down.
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floq_shared::queue::RunFlowV1;
    use floq_shared::run::Trigger;

    #[test]
    fn dead_messages_are_told_apart_by_what_can_be_read() {
        let (company_id, run_id) = (Uuid::now_v7(), Uuid::now_v7());
        let envelope = Envelope::RunFlowV1(RunFlowV1 {
            run_id,
            company_id,
            flow_id: Uuid::now_v7(),
            version: 1,
            attempt: 1,
            trigger: Trigger::Api,
            input: None,
            traceparent: None,
        });
        assert_eq!(classify(&envelope.to_bytes()), Dead::OverLimit { company_id, run_id });
        let later = format!(r#"{{"kind":"run_flow.v9","run_id":"{run_id}","company_id":"{company_id}"}}"#);
        assert_eq!(classify(later.as_bytes()), Dead::Undecodable { company_id, run_id });
        assert_eq!(classify(br#"{"kind":"run_flow.v9"}"#), Dead::Unreadable);
        assert_eq!(classify(b"\xff not json"), Dead::Unreadable);
        let limit = failure(&Dead::OverLimit { company_id, run_id }, Some(6), 5);
        assert!(
            limit.error.unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("delivered 6 times")
        );
    }
}
