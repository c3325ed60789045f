//! The KV store: what a key may be, and the one home of the `kv` table's
//! statements. The API's routes, the `kv_get`/`kv_set` nodes and the node
//! catalog's schema all take the key rule from here; every statement runs in
//! the caller's tenant transaction (row-level security) and names the
//! company explicitly where it writes.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{StoreError, Tx};

/// A KV key: 1-128 ASCII letters, digits, `_`, `.` or `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvKey(String);

impl KvKey {
    pub const MAX_LEN: usize = 128;
    /// The same rule as a JSON Schema pattern (the node catalog's `key` params).
    pub const PATTERN: &'static str = "^[A-Za-z0-9_.-]{1,128}$";
    /// What a refused key is told.
    pub const RULE: &'static str = "keys are 1-128 letters, digits, '_', '.' or '-'";

    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        ok.then(|| Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored value as its company sees it: the value, or only that a secret is there.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Entry {
    /// What grants on a secret value name (`entity_type: "secret"`).
    pub id: Uuid,
    pub key: String,
    /// Absent for secret values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    pub secret: bool,
    /// For secret values: where they may be sent; empty: anywhere the egress policy allows.
    pub allowed_origins: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, key, value, secret IS NOT NULL AS secret, allowed_origins, updated_at";

/// One page by key, after `(key, id)`: one range of the primary key `(company_id, key)`.
pub async fn page(tx: &mut Tx, company_id: Uuid, after: (&str, Uuid), limit: i64) -> Result<Vec<Entry>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM kv WHERE company_id = $1 AND (key, id) > ($2, $3) ORDER BY key, id LIMIT $4"
    )))
    .bind(company_id)
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn find(tx: &mut Tx, key: &KvKey) -> Result<Option<Entry>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM kv WHERE key = $1")))
        .bind(key.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// A value to store: plain, or sealed (with the key that sealed it).
pub struct Put<'a> {
    pub company_id: Uuid,
    pub key: &'a KvKey,
    pub plain: Option<Value>,
    pub sealed: Option<(Vec<u8>, String)>,
    /// For a sealed value; `None` keeps what a replaced secret was bound to.
    pub allowed_origins: Option<Vec<String>>,
}

pub async fn put(tx: &mut Tx, put: Put<'_>) -> Result<Entry, StoreError> {
    let (sealed, key_id) = put.sealed.unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO kv (company_id, key, value, secret, key_id, allowed_origins)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'))
         ON CONFLICT (company_id, key) DO UPDATE
            SET value = excluded.value, secret = excluded.secret, key_id = excluded.key_id,
                -- Replacing a secret keeps its binding unless the request names one; a plain value has none.
                allowed_origins = CASE WHEN excluded.secret IS NULL THEN '{{}}'
                                       ELSE COALESCE($6, kv.allowed_origins) END,
                updated_at = now()
         RETURNING {COLUMNS}"
    )))
    .bind(put.company_id)
    .bind(put.key.as_str())
    .bind(put.plain)
    .bind(sealed)
    .bind(key_id)
    .bind(put.allowed_origins)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn delete(tx: &mut Tx, key: &KvKey) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM kv WHERE key = $1")
        .bind(key.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What a flow sees of a key (`kv_get`, and `kv_set` before it writes).
#[derive(Debug, PartialEq)]
pub enum Plain {
    Missing,
    /// A secret: flows reach it only by reference.
    Secret,
    Value(Option<Value>),
}

/// Reads a key for a flow; `lock` holds its row until the transaction ends.
pub async fn plain(tx: &mut Tx, key: &KvKey, lock: bool) -> Result<Plain, StoreError> {
    let sql = if lock {
        "SELECT value, secret IS NOT NULL FROM kv WHERE key = $1 FOR UPDATE"
    } else {
        "SELECT value, secret IS NOT NULL FROM kv WHERE key = $1"
    };
    let row: Option<(Option<Value>, bool)> = sqlx::query_as(sql).bind(key.as_str()).fetch_optional(&mut **tx).await?;
    Ok(match row {
        None => Plain::Missing,
        Some((_, true)) => Plain::Secret,
        Some((value, false)) => Plain::Value(value),
    })
}

/// Writes a plain value for a flow (never over a secret: the caller checks with [`plain`] first).
pub async fn set_plain(tx: &mut Tx, company_id: Uuid, key: &KvKey, value: &Value) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO kv (company_id, key, value) VALUES ($1, $2, $3)
         ON CONFLICT (company_id, key) DO UPDATE SET value = excluded.value, updated_at = now()
         WHERE kv.secret IS NULL",
    )
    .bind(company_id)
    .bind(key.as_str())
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The company's plain values by key, as a flow's `$vars` (secrets never:
/// they stay sealed), at most `limit` of them in key order (one range of the
/// primary key `(company_id, key)`).
pub async fn plain_values(
    tx: &mut Tx,
    company_id: crate::ids::CompanyId,
    limit: i64,
) -> Result<serde_json::Map<String, Value>, StoreError> {
    let rows: Vec<(String, Value)> =
        sqlx::query_as("SELECT key, value FROM kv WHERE company_id = $1 AND value IS NOT NULL ORDER BY key LIMIT $2")
            .bind(company_id)
            .bind(limit)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows.into_iter().collect())
}

// Secret values for the worker's vault and for key rotation (`shared::credentials` is the other half).

/// A secret value as a run's node may open it.
#[derive(Debug, sqlx::FromRow)]
pub struct SecretForUse {
    pub sealed: Vec<u8>,
    /// Whether the user the flow's version was deployed by may use it now.
    pub usable: bool,
    pub allowed_origins: Vec<String>,
}

/// The sealed secret at `key` for a run deployed by `deployed_by`; `None` if
/// the company has no secret there (a plain value is no secret).
pub async fn secret_for_use(
    tx: &mut Tx,
    company_id: crate::ids::CompanyId,
    key: &str,
    deployed_by: Option<crate::ids::UserId>,
) -> Result<Option<SecretForUse>, StoreError> {
    sqlx::query_as(
        "SELECT secret AS sealed, COALESCE(floq_may_use($3, 'secret', id, NULL), false) AS usable, allowed_origins
           FROM kv WHERE company_id = $1 AND key = $2 AND secret IS NOT NULL",
    )
    .bind(company_id)
    .bind(key)
    .bind(deployed_by)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A secret value still sealed by a key other than the primary one.
#[derive(Debug, sqlx::FromRow)]
pub struct StaleSecret {
    pub company_id: crate::ids::CompanyId,
    pub key: String,
    pub sealed: Vec<u8>,
}

/// Key rotation: up to `limit` secret values of any company not sealed by
/// `primary_key_id` (leaving out `skipped`, which no key opens), locked for
/// resealing; rows another rotation holds are passed over.
pub async fn stale_secrets(
    tx: &mut Tx,
    primary_key_id: &str,
    skipped: &[(crate::ids::CompanyId, String)],
    limit: i64,
) -> Result<Vec<StaleSecret>, StoreError> {
    let skipped: Vec<String> = skipped
        .iter()
        .map(|(company, key)| format!("{company}/{key}"))
        .collect();
    sqlx::query_as(
        "SELECT company_id, key, secret AS sealed FROM kv
          WHERE key_id <> $1 AND NOT (company_id::text || '/' || key = ANY($2))
          ORDER BY company_id, key LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(primary_key_id)
    .bind(skipped)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Key rotation: stores a secret value sealed anew by `key_id`.
pub async fn reseal_secret(
    tx: &mut Tx,
    company_id: crate::ids::CompanyId,
    key: &str,
    sealed: &[u8],
    key_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE kv SET secret = $3, key_id = $4 WHERE company_id = $1 AND key = $2")
        .bind(company_id)
        .bind(key)
        .bind(sealed)
        .bind(key_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether `user` may use the secret value under `key` in a flow
/// (`execute` on it, or admin): `None` when the company holds no secret there.
pub async fn may_use_secret(
    tx: &mut Tx,
    company_id: crate::ids::CompanyId,
    key: &str,
    user: crate::ids::UserId,
) -> Result<Option<bool>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT floq_may_use($3, 'secret', id, NULL) FROM kv WHERE company_id = $1 AND key = $2 AND secret IS NOT NULL",
    )
    .bind(company_id)
    .bind(key)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_and_its_pattern_agree() {
        let pattern = regex::Regex::new(KvKey::PATTERN).unwrap();
        let long = "k".repeat(129);
        for raw in [
            "a",
            "partner.header-1_x",
            "",
            "with space",
            "ümlaut",
            "a/b",
            &long,
            &long[..128],
        ] {
            assert_eq!(KvKey::parse(raw).is_some(), pattern.is_match(raw), "{raw:?}");
        }
    }
}
