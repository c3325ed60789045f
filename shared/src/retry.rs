//! How long floq waits between attempts after an outage: the one home of the
//! backoff policies, built on backon. Loops that must not lose anything keep
//! trying; a loop with a fallback gives up after a few tries.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// A few quick tries, for work something else redoes when they all fail
    /// (deleting published outbox rows: the sweep republishes, workers ignore duplicates).
    Brief,
    /// Five tries over about three seconds, for work whose message goes back
    /// to the queue when they all fail (run outcomes: the run is redelivered).
    BeforeRedelivery,
    /// Until it works, never waiting more than a few seconds: writes nothing
    /// else records and nothing redoes (audit entries).
    Persistent,
}

/// The delays between attempts; `None` once the policy gives up. Jittered, so
/// replicas that failed together do not retry together.
pub fn backoff(policy: Policy) -> impl Iterator<Item = Duration> + Send {
    let builder = match policy {
        Policy::Brief => ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(800))
            .with_max_times(3),
        Policy::BeforeRedelivery => ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(1600))
            .with_max_times(5),
        Policy::Persistent => ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times(),
    };
    builder.with_jitter().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_gives_up_and_persistent_never_waits_long() {
        assert_eq!(backoff(Policy::Brief).count(), 3);
        assert_eq!(backoff(Policy::BeforeRedelivery).count(), 5);
        let delays: Vec<Duration> = backoff(Policy::Persistent).take(200).collect();
        assert_eq!(delays.len(), 200, "persistent retries never end");
        // Jitter adds at most the current delay, so a delay stays under twice the cap.
        assert!(delays.iter().all(|d| *d < Duration::from_secs(10)), "{delays:?}");
        assert!(delays[0] < Duration::from_millis(100));
    }
}
