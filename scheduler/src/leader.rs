//! Leadership: whoever holds the scheduler's advisory lock leads
//! (`floq_shared::leader`); the lock is named by the deployment's queue prefix.

use floq_shared::Config;
use floq_shared::db::StoreError;
pub use floq_shared::leader::Leadership;

/// Tries once; `Ok(None)` while another scheduler leads.
pub async fn try_acquire(config: &Config) -> Result<Option<Leadership>, StoreError> {
    Leadership::try_acquire(config.database_url.expose(), &config.queue_prefix).await
}
