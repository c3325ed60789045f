//! The API's side of auditing. Handlers append change entries inside their
//! own transaction with [`record`]; the request envelope records one entry per
//! request, and one per denied permission check, through the batched writer.
//! Entries name their caller through [`crate::request`].

use floq_shared::audit::{self, Entry};
use floq_shared::db;
use floq_shared::db::StoreError;

/// Appends change entries inside the transaction that makes the change, so
/// neither commits without the other.
pub async fn record(tx: &mut db::Tx, entries: &[Entry]) -> Result<(), StoreError> {
    audit::append(tx, entries).await
}
