//! A webhook's signing secret: random per webhook (`whsec_` and 32 random
//! bytes in hex), stored sealed by the field-encryption key and bound to its
//! row (company, `flow_webhooks`, `signing_secret`, flow id), so a ciphertext
//! copied to another webhook or company does not open. The API seals one when
//! a webhook is enabled or rotated, and opens it to verify each signed call
//! and to show it once; it is never logged, audited or returned otherwise.
//!
//! Before migration 0020 the secret was not stored but derived from
//! `FLOQ_JWT_SECRET` ([`legacy`]), so rotating the API-key secret changed every
//! webhook's secret. [`backfill`] stores that value, once, for every row from
//! before, wherever migrations run ([`crate::migrate`]); nothing else derives
//! it. Besides the webhook routes, this module is what writes the two secret
//! columns (through `floq_shared::webhooks`): the backfill and key rotation ([`rekey`]).

use floq_shared::db::StoreError;
use std::fmt;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::crypto::{Binding, CryptoError, Keyring};
use floq_shared::db::{self, Pool};
use floq_shared::ids::{CompanyId, FlowId};
use floq_shared::webhooks::{self, RowKey};

/// Where a webhook's secret lives, as bound into its ciphertext.
fn binding(company_id: Uuid, flow_id: &str) -> Binding<'_> {
    Binding {
        company_id,
        table: "flow_webhooks",
        column: "signing_secret",
        row_id: flow_id,
    }
}

/// A webhook's signing secret in the clear: zeroized on drop, never printed.
pub struct SigningSecret(Zeroizing<String>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// A secret as stored: the ciphertext and the id of the key that sealed it.
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub key_id: String,
}

impl SigningSecret {
    /// A fresh secret, in the format signers already hold (`whsec_` + 64 hex digits).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self(Zeroizing::new(format!("whsec_{}", hex::encode(bytes.as_ref()))))
    }

    /// The secret as signers use it: the HMAC-SHA256 key is these bytes.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn seal(&self, keyring: &Keyring, company_id: Uuid, flow_id: Uuid) -> Sealed {
        let row = flow_id.to_string();
        Sealed {
            ciphertext: keyring.encrypt(self.0.as_bytes(), binding(company_id, &row)),
            key_id: keyring.primary_id(),
        }
    }

    /// Opens the stored secret of the webhook of `flow_id`; a ciphertext from
    /// any other row, a tampered one or one under an unknown key fails.
    pub fn open(keyring: &Keyring, company_id: Uuid, flow_id: Uuid, ciphertext: &[u8]) -> Result<Self, CryptoError> {
        let row = flow_id.to_string();
        let plain = keyring.decrypt(ciphertext, binding(company_id, &row))?;
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Undecryptable)?;
        Ok(Self(Zeroizing::new(text.to_owned())))
    }
}

/// The secret a webhook had before migration 0020: HMAC-SHA256, keyed by a
/// hash of `FLOQ_JWT_SECRET`, of `"<flow id>:<secret_version>"`. Only
/// [`backfill`] may call this: anything else deriving from the API-key secret
/// would tie webhook signers to it again.
fn legacy(jwt_secret: &str, flow_id: Uuid, version: i32) -> SigningSecret {
    let key = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(
        format!("floq-webhook-secret:{jwt_secret}").as_bytes(),
    )));
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
    mac.update(format!("{flow_id}:{version}").as_bytes());
    SigningSecret(Zeroizing::new(format!(
        "whsec_{}",
        hex::encode(mac.finalize().into_bytes())
    )))
}

/// Rows per transaction when the backfill runs at start-up.
pub const BACKFILL_BATCH: i64 = 500;

/// Stores, sealed, the secret every webhook without one had before migration
/// 0020 (the [`legacy`] value under this `FLOQ_JWT_SECRET`, so no signer
/// notices the upgrade), `batch` rows per transaction; returns how many it
/// stored. Webhooks of any kind get theirs, signed or not: switching signing
/// on shows the webhook's existing secret, as it always did.
///
/// Idempotent, and safe with several replicas at once: each row is locked and
/// re-checked before it is written, so a row another replica filled meanwhile
/// is left alone, and every replica returns only once no row is left without
/// a secret. Rows are found through the token lookup's cross-tenant SELECT and
/// written as `floq_app` under their own company.
pub async fn backfill(pool: &Pool, jwt_secret: &str, keyring: &Keyring, batch: i64) -> Result<u64, StoreError> {
    let mut stored = 0;
    loop {
        let mut find = db::duty_tx(pool, db::Duty::KeyRotation).await?;
        let found = webhooks::needing_secret(&mut find, batch).await?;
        db::commit(find).await?;
        if found.is_empty() {
            return Ok(stored);
        }
        let mut tx = db::multi_tenant_tx(pool).await?;
        for (company, flow_ids) in by_company(found) {
            let company_id = company.as_uuid();
            db::set_tenant(&mut tx, company_id).await?;
            let rows = webhooks::lock_needing_secret(&mut tx, company, &flow_ids).await?;
            let sealed: Vec<(FlowId, Vec<u8>)> = rows
                .into_iter()
                .map(|(flow, version)| {
                    let secret = legacy(jwt_secret, flow.as_uuid(), version);
                    (flow, secret.seal(keyring, company_id, flow.as_uuid()).ciphertext)
                })
                .collect();
            stored += webhooks::store_secrets(&mut tx, company, &sealed, &keyring.primary_id()).await?;
        }
        db::commit(tx).await?;
    }
}

/// Re-seals every webhook secret not under the primary key (`admin
/// rotate-keys`), `batch` rows per transaction, each locked while it moves and
/// audited (`secret.rekey`). A secret no configured key opens is left as it
/// is and named in `undecryptable` (`flow_webhooks:<flow id>`). Returns how
/// many moved. Resumable: it looks only for rows whose key is not the primary.
pub async fn rekey(
    pool: &Pool,
    keyring: &Keyring,
    batch: i64,
    undecryptable: &mut Vec<String>,
) -> Result<u64, StoreError> {
    let primary = keyring.primary_id();
    let mut skipped: Vec<FlowId> = Vec::new();
    let mut moved = 0;
    loop {
        let mut find = db::duty_tx(pool, db::Duty::KeyRotation).await?;
        let found = webhooks::not_under_key(&mut find, &primary, &skipped, batch).await?;
        db::commit(find).await?;
        if found.is_empty() {
            return Ok(moved);
        }
        let mut tx = db::multi_tenant_tx(pool).await?;
        for (company, flow_ids) in by_company(found) {
            let company_id = company.as_uuid();
            db::set_tenant(&mut tx, company_id).await?;
            let rows = webhooks::lock_not_under_key(&mut tx, company, &flow_ids, &primary).await?;
            let mut resealed = Vec::with_capacity(rows.len());
            for (flow, ciphertext) in rows {
                let flow_id = flow.as_uuid();
                match SigningSecret::open(keyring, company_id, flow_id, &ciphertext) {
                    Ok(secret) => resealed.push((flow, secret.seal(keyring, company_id, flow_id).ciphertext)),
                    Err(_) => {
                        undecryptable.push(format!("flow_webhooks:{flow_id}"));
                        skipped.push(flow);
                    }
                }
            }
            let entries: Vec<Entry> = resealed
                .iter()
                .map(|(flow_id, _)| {
                    Entry::new(company_id, Actor::system("rotate-keys"), "secret.rekey")
                        .resource("webhook", flow_id)
                        .details(serde_json::json!({"key_id": primary}))
                })
                .collect();
            moved += webhooks::store_secrets(&mut tx, company, &resealed, &primary).await?;
            audit::append(&mut tx, &entries).await?;
        }
        db::commit(tx).await?;
    }
}

/// `(company, flow)` pairs, sorted by company, as each company's flows.
fn by_company(rows: Vec<RowKey>) -> Vec<(CompanyId, Vec<FlowId>)> {
    let mut out: Vec<(CompanyId, Vec<FlowId>)> = Vec::new();
    for RowKey { company_id, flow_id } in rows {
        match out.last_mut() {
            Some((c, flows)) if *c == company_id => flows.push(flow_id),
            _ => out.push((company_id, vec![flow_id])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use floq_shared::crypto::{self, Key};

    fn keyring() -> Keyring {
        let (secret, salt) = crypto::generate();
        Keyring::new(Key::derive(&secret, &salt).unwrap(), vec![])
    }

    #[test]
    fn a_fresh_secret_has_the_format_signers_hold_and_never_repeats() {
        let (a, b) = (SigningSecret::generate(), SigningSecret::generate());
        for s in [&a, &b] {
            let hex = s.expose().strip_prefix("whsec_").expect("prefix");
            assert!(hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "SigningSecret([redacted])");
    }

    #[test]
    fn the_legacy_value_is_what_webhooks_derived_before_0020() {
        // A known answer, computed outside Rust (Python's hmac) by the pre-0020 rule.
        let flow = Uuid::parse_str("0190f1a2-0000-7000-8000-000000000001").unwrap();
        let jwt = "test-secret-0123456789abcdef0123456789";
        let expected = "whsec_29c066a29f45c03bada41bd3bf9877c1f26f62d20dadcb85fce7a848493599b6";
        assert_eq!(legacy(jwt, flow, 3).expose(), expected);
        assert_ne!(legacy(jwt, flow, 4).expose(), expected, "the version is part of it");
    }

    #[test]
    fn a_sealed_secret_opens_only_on_its_own_row() {
        let ring = keyring();
        let (company, flow) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = SigningSecret::generate();
        let sealed = secret.seal(&ring, company, flow);
        assert_eq!(sealed.key_id, ring.primary_id());
        let text = secret.expose().as_bytes();
        assert!(!sealed.ciphertext.windows(text.len()).any(|w| w == text));
        let opened = SigningSecret::open(&ring, company, flow, &sealed.ciphertext).unwrap();
        assert_eq!(opened.expose(), secret.expose());
        for (c, f) in [(company, Uuid::now_v7()), (Uuid::now_v7(), flow)] {
            assert_eq!(
                SigningSecret::open(&ring, c, f, &sealed.ciphertext).unwrap_err(),
                CryptoError::Undecryptable
            );
        }
    }

    #[test]
    fn rows_group_by_company_in_order() {
        let (a, b) = (CompanyId(Uuid::now_v7()), CompanyId(Uuid::now_v7()));
        let (f1, f2, f3) = (FlowId(Uuid::now_v7()), FlowId(Uuid::now_v7()), FlowId(Uuid::now_v7()));
        let row = |company_id, flow_id| RowKey { company_id, flow_id };
        assert_eq!(
            by_company(vec![row(a, f1), row(a, f2), row(b, f3)]),
            vec![(a, vec![f1, f2]), (b, vec![f3])]
        );
    }
}
