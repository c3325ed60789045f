//! Flows' webhooks: the one home of the `flow_webhooks` table's statements —
//! settings, the token's hash, and the sealed signing secret (its backfill
//! and re-keying included).
//!
//! Settings are tenant work: the caller's tenant transaction, the company
//! named explicitly. Two paths cross tenants, each as its duty's role: a call
//! to `/hooks/{token}` finds its webhook by the token's hash alone
//! ([`resolve`], in a [`Duty::WebhookLookup`](crate::db::Duty) transaction
//! keyed by that hash), and the secrets' backfill and re-keying find rows to
//! work on ([`needing_secret`], [`not_under_key`], as
//! [`Duty::KeyRotation`](crate::db::Duty)) and then write them under each
//! row's own company. This module never sees a token or a secret in the
//! clear: it stores hashes and ciphertexts the API made. Claims of signed
//! calls (against replays) are `shared::signatures`'.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, FlowId};

/// A webhook's settings as its company sees them.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Webhook {
    pub flow_id: FlowId,
    pub signed: bool,
    pub signature_header: String,
    pub tolerance_seconds: i32,
    /// Seconds a call waits for its run unless it says `?wait=`; 0 answers `202` at once.
    pub wait_seconds: i32,
    /// Whether callers may choose their wait with `?wait=`.
    pub allow_wait: bool,
    /// Origins a reply's `Location`/`Link` may point to besides relative targets.
    pub redirect_origins: Vec<String>,
    /// The sealed signing secret: never serialized (responses, audit).
    #[serde(skip)]
    pub signing_secret: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "flow_id, signed, signature_header, tolerance_seconds, wait_seconds, allow_wait, redirect_origins, \
     signing_secret, created_at, rotated_at";

/// A secret as stored: the ciphertext and the id of the key that sealed it.
#[derive(Clone, Copy)]
pub struct SealedRef<'a> {
    pub ciphertext: &'a [u8],
    pub key_id: &'a str,
}

pub async fn find(tx: &mut Tx, company_id: CompanyId, flow_id: FlowId) -> Result<Option<Webhook>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flow_webhooks WHERE company_id = $1 AND flow_id = $2"
    )))
    .bind(company_id)
    .bind(flow_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Settings to enable a webhook with, or to change; `None` keeps (or, on
/// enabling, defaults) a setting.
pub struct Settings<'a> {
    pub company_id: CompanyId,
    pub flow_id: FlowId,
    /// The token's hash, stored only when this enables the webhook.
    pub token_hash: &'a [u8],
    pub signed: bool,
    pub signature_header: Option<&'a str>,
    pub tolerance_seconds: Option<i32>,
    pub wait_seconds: Option<i32>,
    pub allow_wait: Option<bool>,
    pub redirect_origins: Option<&'a [String]>,
    /// Stored only where the webhook has no secret yet: a webhook keeps its
    /// secret until rotated, signed or not.
    pub secret: SealedRef<'a>,
}

/// Enables a flow's webhook or changes its settings.
pub async fn configure(tx: &mut Tx, s: Settings<'_>) -> Result<Webhook, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO flow_webhooks (flow_id, company_id, token_hash, signed, signature_header, tolerance_seconds,
                                    wait_seconds, allow_wait, redirect_origins, signing_secret, signing_key_id)
         VALUES ($1, $2, $3, $4, COALESCE($5, 'x-floq-signature'), COALESCE($6, 300), COALESCE($7, 0),
                 COALESCE($8, true), COALESCE($9, '{{}}'), $10, $11)
         ON CONFLICT (flow_id) DO UPDATE SET signed = excluded.signed,
             signature_header = COALESCE($5, flow_webhooks.signature_header),
             tolerance_seconds = COALESCE($6, flow_webhooks.tolerance_seconds),
             wait_seconds = COALESCE($7, flow_webhooks.wait_seconds),
             allow_wait = COALESCE($8, flow_webhooks.allow_wait),
             redirect_origins = COALESCE($9, flow_webhooks.redirect_origins),
             signing_secret = COALESCE(flow_webhooks.signing_secret, excluded.signing_secret),
             signing_key_id = COALESCE(flow_webhooks.signing_key_id, excluded.signing_key_id)
         RETURNING {COLUMNS}"
    )))
    .bind(s.flow_id)
    .bind(s.company_id)
    .bind(s.token_hash)
    .bind(s.signed)
    .bind(s.signature_header)
    .bind(s.tolerance_seconds)
    .bind(s.wait_seconds)
    .bind(s.allow_wait)
    .bind(s.redirect_origins)
    .bind(s.secret.ciphertext)
    .bind(s.secret.key_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Replaces an existing webhook's token and secret; the old ones stop working at once.
pub async fn rotate(
    tx: &mut Tx,
    company_id: CompanyId,
    flow_id: FlowId,
    token_hash: &[u8],
    secret: SealedRef<'_>,
) -> Result<Webhook, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        // secret_version keeps counting rotations; only the backfill of rows from before 0020 reads it.
        "UPDATE flow_webhooks SET token_hash = $3, secret_version = secret_version + 1, rotated_at = now(),
                signing_secret = $4, signing_key_id = $5
          WHERE company_id = $1 AND flow_id = $2 RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(flow_id)
    .bind(token_hash)
    .bind(secret.ciphertext)
    .bind(secret.key_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn delete(tx: &mut Tx, company_id: CompanyId, flow_id: FlowId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM flow_webhooks WHERE company_id = $1 AND flow_id = $2")
        .bind(company_id)
        .bind(flow_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A webhook found by its token: what a call to it needs.
#[derive(Debug, sqlx::FromRow)]
pub struct Resolved {
    pub flow_id: FlowId,
    pub company_id: CompanyId,
    pub signed: bool,
    pub signature_header: String,
    pub tolerance_seconds: i32,
    pub wait_seconds: i32,
    pub allow_wait: bool,
    pub redirect_origins: Vec<String>,
    /// Sealed; `None` only on a row from before migration 0020 the backfill has not reached.
    pub signing_secret: Option<Vec<u8>>,
}

/// The webhook whose token hashes to `token_hash`, in any company: in a
/// [`Duty::WebhookLookup`](crate::db::Duty) transaction keyed by the same hash,
/// whose role sees only that row.
pub async fn resolve(tx: &mut Tx, token_hash: &[u8]) -> Result<Option<Resolved>, StoreError> {
    sqlx::query_as(
        "SELECT flow_id, company_id, signed, signature_header, tolerance_seconds, wait_seconds, allow_wait,
                redirect_origins, signing_secret
           FROM flow_webhooks WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A webhook row across companies, for the secrets' maintenance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RowKey {
    pub company_id: CompanyId,
    pub flow_id: FlowId,
}

/// Up to `limit` webhooks with no stored secret (rows from before migration
/// 0020), by company and flow, without locking: as the key-rotation duty.
pub async fn needing_secret(tx: &mut Tx, limit: i64) -> Result<Vec<RowKey>, StoreError> {
    sqlx::query_as(
        "SELECT company_id, flow_id FROM flow_webhooks WHERE signing_secret IS NULL
          ORDER BY company_id, flow_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Up to `limit` webhooks whose secret is sealed by another key than
/// `primary`, leaving out `skipped`, by company and flow, without locking: as
/// the key-rotation duty.
pub async fn not_under_key(
    tx: &mut Tx,
    primary: &str,
    skipped: &[FlowId],
    limit: i64,
) -> Result<Vec<RowKey>, StoreError> {
    sqlx::query_as(
        "SELECT company_id, flow_id FROM flow_webhooks
          WHERE signing_key_id <> $1 AND NOT (flow_id = ANY($2))
          ORDER BY company_id, flow_id LIMIT $3",
    )
    .bind(primary)
    .bind(skipped)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Locks those of one company's `flows` still without a secret, in flow order
/// (every backfiller locks in one order, so replicas do not deadlock), with
/// each one's count of rotations. The lock re-reads the rows: one filled
/// meanwhile no longer matches.
pub async fn lock_needing_secret(
    tx: &mut Tx,
    company_id: CompanyId,
    flows: &[FlowId],
) -> Result<Vec<(FlowId, i32)>, StoreError> {
    sqlx::query_as(
        "SELECT flow_id, secret_version FROM flow_webhooks
          WHERE company_id = $1 AND flow_id = ANY($2) AND signing_secret IS NULL
          ORDER BY flow_id FOR UPDATE",
    )
    .bind(company_id)
    .bind(flows)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Locks those of one company's `flows` whose secret is not under `primary`,
/// in flow order, with their sealed secrets.
pub async fn lock_not_under_key(
    tx: &mut Tx,
    company_id: CompanyId,
    flows: &[FlowId],
    primary: &str,
) -> Result<Vec<(FlowId, Vec<u8>)>, StoreError> {
    sqlx::query_as(
        "SELECT flow_id, signing_secret FROM flow_webhooks
          WHERE company_id = $1 AND flow_id = ANY($2) AND signing_key_id <> $3
          ORDER BY flow_id FOR UPDATE",
    )
    .bind(company_id)
    .bind(flows)
    .bind(primary)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Writes sealed secrets of one company's webhooks (rows the caller has
/// locked), all sealed by `key_id`; returns how many it wrote.
pub async fn store_secrets(
    tx: &mut Tx,
    company_id: CompanyId,
    sealed: &[(FlowId, Vec<u8>)],
    key_id: &str,
) -> Result<u64, StoreError> {
    if sealed.is_empty() {
        return Ok(0);
    }
    let (flow_ids, ciphertexts): (Vec<FlowId>, Vec<&[u8]>) = sealed.iter().map(|(f, c)| (*f, c.as_slice())).unzip();
    let done = sqlx::query(
        "UPDATE flow_webhooks w SET signing_secret = u.ciphertext, signing_key_id = $4
           FROM unnest($2::uuid[], $3::bytea[]) AS u (flow_id, ciphertext)
          WHERE w.company_id = $1 AND w.flow_id = u.flow_id",
    )
    .bind(company_id)
    .bind(&flow_ids)
    .bind(&ciphertexts)
    .bind(key_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
