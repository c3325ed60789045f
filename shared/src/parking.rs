//! Where parked runs wait (design §6: delays use TTL queues, not sleeping
//! workers). A run parked on a long `delay` or retry backoff is acked and
//! its message published to one of a few delay queues of fixed TTL
//! (`{prefix}.runs.delay.{ms}`: one TTL per queue, so a message never waits
//! behind a longer one), which dead-letter into `{prefix}.runs.wake`. The
//! worker's wake consumer republishes it with `Publisher::resume` once its
//! wake time has come, or parks it again for the rest.
//!
//! Queues are quorum queues with at-least-once dead-lettering, so a parked
//! run survives a broker restart like a queued one.

use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

/// The delay queues' TTLs besides `FLOQ_PARK_AFTER_MS` itself.
const LONGER: [Duration; 3] = [
    Duration::from_secs(30),
    Duration::from_secs(300),
    Duration::from_secs(3600),
];

#[derive(Clone, Debug)]
pub struct Parking {
    /// `(ttl, queue)`, shortest first; the shortest is `park_after`.
    pub delays: Vec<(Duration, String)>,
    pub wake: String,
}

impl Parking {
    pub fn new(prefix: &str, park_after: Duration) -> Self {
        let mut ttls: Vec<Duration> = std::iter::once(park_after)
            .chain(LONGER.into_iter().filter(|t| *t > park_after))
            .collect();
        ttls.dedup();
        Self {
            delays: ttls
                .into_iter()
                .map(|ttl| (ttl, format!("{prefix}.runs.delay.{}", ttl.as_millis())))
                .collect(),
            wake: format!("{prefix}.runs.wake"),
        }
    }

    /// The queue to wait `left` in: the longest TTL not past it. `None` when
    /// `left` is shorter than every TTL (`park_after`): wake the run now, it
    /// waits the rest itself.
    pub fn queue_for(&self, left: Duration) -> Option<&str> {
        self.delays
            .iter()
            .rev()
            .find(|(ttl, _)| *ttl <= left)
            .map(|(_, q)| q.as_str())
    }

    /// Declares the wake queue and the delay queues idempotently.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut wake = FieldTable::default();
        wake.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel.queue_declare(self.wake.as_str().into(), durable, wake).await?;
        for (ttl, queue) in &self.delays {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl.as_millis() as i64));
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.wake.as_str().into()),
            );
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
            channel.queue_declare(queue.as_str().into(), durable, args).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_goes_to_the_longest_delay_not_past_it() {
        let p = Parking::new("t", Duration::from_secs(5));
        let ttls: Vec<u64> = p.delays.iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(ttls, [5, 30, 300, 3600]);
        assert_eq!(p.queue_for(Duration::from_secs(4)), None);
        assert_eq!(p.queue_for(Duration::from_secs(5)), Some("t.runs.delay.5000"));
        assert_eq!(p.queue_for(Duration::from_secs(299)), Some("t.runs.delay.30000"));
        assert_eq!(p.queue_for(Duration::from_secs(86_400)), Some("t.runs.delay.3600000"));
        assert_eq!(p.wake, "t.runs.wake");
        let short = Parking::new("t", Duration::from_secs(60));
        assert_eq!(short.delays.len(), 3, "only TTLs past park_after");
    }
}
