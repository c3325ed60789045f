//! A per-replica cache of verified API keys, so the hot path does not pay a
//! database round trip per request, without weakening revocation.
//!
//! Every update or delete of `api_keys` or `memberships` fires a PostgreSQL
//! notification (migration 0003) and every replica drops its whole cache on
//! receipt, so a revoked key or a demoted user stops working within the
//! notification's delivery time (milliseconds). The cache only answers while
//! the listening connection is up: if it drops, notifications could be
//! missed, so every request goes to the database until it is back. A result
//! loaded from the database is only cached if no notification arrived while
//! it was being loaded.

use floq_shared::db::StoreError;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floq_shared::access::Role;
use floq_shared::api_keys::Changes;
use floq_shared::db::Pool as PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MAX_ENTRIES: usize = 100_000;

#[derive(Clone)]
pub struct CachedKey {
    pub user_id: Uuid,
    pub company_id: Uuid,
    pub roles: Vec<Role>,
    cached_at: Instant,
}

pub struct KeyCache {
    ttl: Duration,
    entries: RwLock<HashMap<Uuid, CachedKey>>,
    generation: AtomicU64,
    listening: AtomicBool,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        }
    }

    pub fn get(&self, key_id: Uuid) -> Option<CachedKey> {
        if self.ttl.is_zero() || !self.listening.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.read().expect("key cache lock");
        entries
            .get(&key_id)
            .filter(|e| e.cached_at.elapsed() < self.ttl)
            .cloned()
    }

    /// Read before loading from the database; pass to [`KeyCache::put`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn put(&self, generation: u64, key_id: Uuid, user_id: Uuid, company_id: Uuid, roles: Vec<Role>) {
        if self.ttl.is_zero() || !self.listening.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries.write().expect("key cache lock");
        // Checked under the write lock, so an invalidation cannot slip in between.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            key_id,
            CachedKey {
                user_id,
                company_id,
                roles,
                cached_at: Instant::now(),
            },
        );
    }

    pub fn invalidate(&self) {
        let mut entries = self.entries.write().expect("key cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    fn set_listening(&self, up: bool) {
        self.invalidate();
        self.listening.store(up, Ordering::Release);
    }

    /// Listens for changes until `shutdown`, reconnecting after failures.
    pub async fn listen(&self, pool: PgPool, shutdown: CancellationToken) {
        if self.ttl.is_zero() {
            return;
        }
        while !shutdown.is_cancelled() {
            match self.listen_once(&pool, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.set_listening(false);
                    tracing::warn!(error = %e, "key cache listener lost; checking keys in the database meanwhile");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        self.set_listening(false);
    }

    async fn listen_once(&self, pool: &PgPool, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let mut changes = Changes::listen(pool).await?;
        self.set_listening(true);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = changes.next() => {
                    next?;
                    self.invalidate();
                }
            }
        }
    }
}
