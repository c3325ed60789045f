//! Signed webhook calls are accepted once: every accepted signature is
//! claimed (`floq_shared::signatures`, in PostgreSQL, so every API replica
//! sees it) until its timestamp falls out of the webhook's tolerance, and a
//! claim that already exists refuses the call with `409 signature_replayed`.
//!
//! The claim is one `INSERT … ON CONFLICT DO NOTHING` inside the token
//! lookup's transaction: one extra round trip, only for signed webhooks. A
//! claim whose run was then not accepted is released, so the sender may
//! retry the same request (the webhook handler runs claim, acceptance and
//! release in one spawned task, so a caller hanging up cannot split them).
//! The scheduler trims expired claims.

use floq_shared::db::{self, StoreError};
use floq_shared::ids::{CompanyId, FlowId};
use floq_shared::signatures;
use uuid::Uuid;

pub use floq_shared::signatures::Signature;

/// Claims a signature for a webhook; `false` if it was claimed before.
/// Runs in the webhook lookup's transaction: its policy admits a claim
/// only for an existing webhook under that webhook's own company.
pub async fn claim(tx: &mut db::Tx, flow_id: Uuid, company_id: Uuid, sig: &Signature) -> Result<bool, StoreError> {
    signatures::claim(tx, FlowId(flow_id), CompanyId(company_id), sig).await
}

/// Forgets a claim whose call started no run (the flow was not deployed, the
/// API was shutting down), so the sender's retry of the same request is not a replay.
pub async fn release(pool: &db::Pool, company_id: Uuid, flow_id: Uuid, sig: &Signature) -> Result<(), StoreError> {
    let mut tx = db::tenant_tx(pool, company_id).await?;
    signatures::release(&mut tx, CompanyId(company_id), FlowId(flow_id), sig).await?;
    db::commit(tx).await
}

/// A webhook's tolerance grew: its old signatures verify for longer, so their
/// claims must last as long.
pub async fn extend(tx: &mut db::Tx, flow_id: Uuid, by_seconds: i32) -> Result<(), StoreError> {
    signatures::extend(tx, FlowId(flow_id), by_seconds).await
}
