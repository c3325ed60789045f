//! Wakes parked runs (`floq_shared::parking`): consumes `{prefix}.runs.wake`,
//! where the delay queues dead-letter, and hands each run whose wake time
//! has come back to the runs queue with `Publisher::resume` (the publisher
//! picks the queue); one that woke early waits in a delay queue again. The
//! message is acked only once its next copy is confirmed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use floq_shared::parking::Parking;
use floq_shared::queue::{self, Envelope, Publisher, WAKE_AT_HEADER};

const PREFETCH: u16 = 64;

/// Consumes until `shutdown`, reconnecting after broker failures.
pub async fn consume(
    url: String,
    parking: Arc<Parking>,
    publisher: Arc<Publisher>,
    park_after: Duration,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = consume_once(&url, &parking, &publisher, park_after, &shutdown).await {
            tracing::error!(error = %e, "consuming parked runs failed; reconnecting in 1 s");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

async fn consume_once(
    url: &str,
    parking: &Parking,
    publisher: &Publisher,
    park_after: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = queue::connect(url).await?;
    let channel = conn.create_channel().await?;
    parking.declare(&channel).await?;
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let tag = format!("floq-wake-{}", Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            parking.wake.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => wake(parking, publisher, park_after, delivery).await,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the broker closed the wake consumer"),
            },
        }
    }
}

/// The wake time a parked message carries, in Unix milliseconds.
pub fn wake_at(delivery: &Delivery) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(WAKE_AT_HEADER)? {
        AMQPValue::LongLongInt(ms) => Some(*ms),
        AMQPValue::LongInt(ms) => Some(i64::from(*ms)),
        _ => None,
    }
}

async fn wake(parking: &Parking, publisher: &Publisher, park_after: Duration, delivery: Delivery) {
    let (Ok(envelope), Some(at)) = (serde_json::from_slice::<Envelope>(&delivery.data), wake_at(&delivery)) else {
        tracing::error!("a parked message without a run or a wake time; dropping it");
        let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let left = Duration::from_millis(at.saturating_sub(chrono::Utc::now().timestamp_millis()).max(0) as u64);
    // The run waits out a rest shorter than `park_after` itself, holding its slot that long at most.
    let sent = match parking.queue_for(left).filter(|_| left > park_after) {
        Some(queue) => publisher.park(queue, &envelope, at).await,
        None => publisher.resume(std::slice::from_ref(&envelope)).await,
    };
    match sent {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, run.id = %envelope.run_id(), "cannot wake a parked run yet; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
    }
}
