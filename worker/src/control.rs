//! Cancellation as this worker sees it: the tokens of the runs it holds, and
//! the ids of recently cancelled runs it must not start.
//!
//! A fresh delivery reads nothing from the database (design §8), so the API
//! broadcasts each cancel on the `{prefix}.control` fanout exchange and every
//! worker keeps the ids here, in memory, for [`RECENT_FOR`]: starting a run
//! is one lookup under a lock. A worker whose control consumer (re)connects
//! reloads the ids cancelled meanwhile from the database
//! (`floq_recent_cancels`, migration 0024), so a missed broadcast is not a
//! run started after its cancel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use floq_shared::db::{self, Pool};
use floq_shared::queue::{self, Control as Message, Topology};
use floq_shared::runs::cancel;
use floq_shared::telemetry::METRICS;

/// How long a cancelled run id is refused. A run message waiting in the
/// queue longer than this after its cancel would run (its outcome would still
/// not overwrite `cancelled`); the database prunes its ids after the same day.
pub const RECENT_FOR: Duration = Duration::from_secs(24 * 3600);
/// The most ids kept (about 40 bytes each); the oldest go first.
pub const RECENT_MAX: usize = 100_000;

#[derive(Default)]
pub struct Control {
    inner: Mutex<Inner>,
    /// Cancelled once the control consumer first listened and reloaded.
    ready: CancellationToken,
}

#[derive(Default)]
struct Inner {
    /// The runs this worker executes now, by id.
    held: HashMap<Uuid, CancellationToken>,
    recent: HashSet<Uuid>,
    /// Runs accepted up to this instant may have a copy from the outbox sweep
    /// (the latest `swept.v1`, or this consumer's last (re)connect, when a
    /// broadcast may have been missed).
    swept_before: Option<std::time::SystemTime>,
    /// `recent` in the order noted, for expiry and the bound.
    order: VecDeque<(Instant, Uuid)>,
}

impl Inner {
    fn note(&mut self, run_id: Uuid, now: Instant) {
        while let Some((at, id)) = self.order.front().copied() {
            if now.duration_since(at) < RECENT_FOR && self.order.len() < RECENT_MAX {
                break;
            }
            self.order.pop_front();
            self.recent.remove(&id);
        }
        if self.recent.insert(run_id) {
            self.order.push_back((now, run_id));
        }
    }
}

/// This worker already runs the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyHeld;

/// A run this worker holds; dropping it forgets the run's token.
pub struct Held {
    control: Arc<Control>,
    run_id: Uuid,
    token: CancellationToken,
}

impl Held {
    /// Cancelled when the run is.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.control.lock().held.remove(&self.run_id);
    }
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes hold of a run about to start: `Ok(None)` if it was cancelled,
    /// `Err(AlreadyHeld)` if a copy of it already runs here (one is enough).
    /// Taken before any database check, under the same lock as
    /// [`Control::cancel`], so a cancel either finds the token or is found
    /// here, and two copies arriving together (a redelivery and the outbox
    /// sweep's copy, say) cannot both pass.
    pub fn begin(self: &Arc<Self>, run_id: Uuid) -> Result<Option<Held>, AlreadyHeld> {
        let mut inner = self.lock();
        if inner.held.contains_key(&run_id) {
            return Err(AlreadyHeld);
        }
        if inner.recent.contains(&run_id) {
            METRICS.run_cancels.with_label_values(&["refused"]).inc();
            return Ok(None);
        }
        let token = CancellationToken::new();
        inner.held.insert(run_id, token.clone());
        Ok(Some(Held {
            control: self.clone(),
            run_id,
            token,
        }))
    }

    /// A run was cancelled: stop it if held here, refuse it from now on.
    pub fn cancel(&self, run_id: Uuid) {
        let mut inner = self.lock();
        inner.note(run_id, Instant::now());
        if let Some(token) = inner.held.get(&run_id)
            && !token.is_cancelled()
        {
            tracing::info!(run.id = %run_id, "cancelling a run this worker holds");
            METRICS.run_cancels.with_label_values(&["stopped"]).inc();
            token.cancel();
        }
    }

    /// Runs accepted up to `before` may have a copy from the outbox sweep.
    pub fn swept(&self, before: std::time::SystemTime) {
        let mut inner = self.lock();
        inner.swept_before = inner.swept_before.max(Some(before));
    }

    /// Whether a run accepted at `accepted` may have a copy from the outbox sweep.
    pub fn may_be_swept(&self, accepted: std::time::SystemTime) -> bool {
        self.lock().swept_before.is_some_and(|before| accepted <= before)
    }

    /// Whether `run_id` is refused.
    pub fn is_cancelled(&self, run_id: Uuid) -> bool {
        self.lock().recent.contains(&run_id)
    }

    /// Resolves once the control consumer first listens (or never, if the broker stays away).
    pub async fn ready(&self) {
        self.ready.cancelled().await;
    }

    /// Listens on the control exchange until `shutdown`, reconnecting after broker failures.
    pub async fn listen(
        self: Arc<Self>,
        amqp_url: String,
        topology: Topology,
        pool: Pool,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            let result = tokio::select! {
                r = self.listen_once(&amqp_url, &topology, &pool) => r,
                () = shutdown.cancelled() => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "the control consumer failed; cancels reach this worker again after it reconnects");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn listen_once(&self, amqp_url: &str, topology: &Topology, pool: &Pool) -> anyhow::Result<()> {
        let conn = queue::connect(amqp_url).await?;
        let channel = conn.create_channel().await?;
        let declared = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        // The exchange is declared with the rest of the topology; declaring it here too lets this consumer start
        // before the runs consumer has declared anything.
        channel
            .exchange_declare(
                topology.control.as_str().into(),
                lapin::ExchangeKind::Fanout,
                Default::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                declared.name().as_str().into(),
                topology.control.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                declared.name().as_str().into(),
                "floq-control".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        // Bound first, reloaded second: a cancel between the two is in both, none falls between. A sweep
        // announced while this consumer was away is not reloaded: every run accepted until now counts as swept.
        self.swept(std::time::SystemTime::now());
        self.reload(pool).await?;
        self.ready.cancel();
        tracing::info!(exchange = %topology.control, "listening for cancels");
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            match serde_json::from_slice::<Message>(&delivery.data) {
                Ok(Message::CancelV1 { run_id }) => self.cancel(run_id),
                Ok(Message::SweptV1 { before_ms }) => {
                    let before = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(before_ms).unwrap_or(0));
                    self.swept(before);
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an undecodable control message"),
            }
        }
        anyhow::bail!("the broker closed the control consumer")
    }

    /// Notes the runs cancelled within [`RECENT_FOR`] (ids from every company; nothing else is read).
    async fn reload(&self, pool: &Pool) -> Result<(), floq_shared::db::StoreError> {
        let since = chrono::Utc::now() - chrono::Duration::from_std(RECENT_FOR).unwrap_or_default();
        // As floq_app, with no tenant set: the function needs none, and the connection's own user may hold no grant.
        let mut tx = db::multi_tenant_tx(pool).await?;
        let ids = cancel::recent(&mut tx, since, i32::try_from(RECENT_MAX).unwrap_or(i32::MAX)).await?;
        db::commit(tx).await?;
        let count = ids.len();
        for id in ids.into_iter().rev() {
            self.cancel(id);
        }
        tracing::debug!(count, "reloaded recently cancelled runs");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_stops_the_held_run_and_refuses_it_later() {
        let control = Arc::new(Control::default());
        let run = Uuid::now_v7();
        let held = control.begin(run).unwrap().unwrap();
        let token = held.token();
        assert!(!token.is_cancelled());
        control.cancel(run);
        assert!(token.is_cancelled());
        drop(held);
        assert!(
            control.begin(run).unwrap().is_none(),
            "a cancelled run never starts again here"
        );
        assert!(control.lock().held.is_empty(), "finished runs leave no token behind");
        let other = control.begin(Uuid::now_v7()).unwrap().unwrap();
        assert!(!other.token().is_cancelled());
    }

    #[test]
    fn a_second_copy_of_a_run_held_here_does_not_take_hold() {
        let control = Arc::new(Control::default());
        let run = Uuid::now_v7();
        let first = control.begin(run).unwrap().unwrap();
        assert_eq!(control.begin(run).err(), Some(AlreadyHeld));
        drop(first);
        let again = control.begin(run).unwrap();
        assert!(again.is_some(), "taken again once the first copy is done");
    }

    #[test]
    fn only_runs_accepted_before_the_last_sweep_may_have_a_copy() {
        let control = Control::default();
        let t = std::time::SystemTime::now();
        assert!(!control.may_be_swept(t), "no sweep heard of: nothing to claim");
        control.swept(t);
        control.swept(t - Duration::from_secs(60));
        assert!(control.may_be_swept(t - Duration::from_secs(1)) && control.may_be_swept(t));
        assert!(
            !control.may_be_swept(t + Duration::from_millis(1)),
            "accepted after the sweep"
        );
    }

    #[test]
    fn recent_ids_are_bounded_and_expire() {
        let mut inner = Inner::default();
        let start = Instant::now();
        let first = Uuid::now_v7();
        inner.note(first, start);
        inner.note(first, start);
        assert_eq!(inner.order.len(), 1, "noted once");
        let later = Uuid::now_v7();
        inner.note(later, start + RECENT_FOR);
        assert!(!inner.recent.contains(&first), "expired");
        assert!(inner.recent.contains(&later));
        for _ in 0..RECENT_MAX + 10 {
            inner.note(Uuid::now_v7(), start + RECENT_FOR);
        }
        assert!(inner.recent.len() <= RECENT_MAX && inner.order.len() == inner.recent.len());
        assert!(!inner.recent.contains(&later), "the oldest go first");
    }
}
