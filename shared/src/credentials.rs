//! Integrations' credentials: the one home of the `credentials` table's
//! statements, for the API (which seals data before it gets here), the
//! worker's vault (which opens it for one node) and key rotation. Tenant
//! statements run in the caller's tenant transaction and name the company
//! explicitly; rotation's run in the `KeyRotation` duty's transaction. It
//! never encrypts or decrypts (the caller holds the keyring), never returns
//! sealed data to a listing, and never writes grants (see [`crate::access`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::Viewer;
use crate::db::{StoreError, Tx};
use crate::ids::{CompanyId, CredentialId, UserId};

/// All a read ever shows of a credential.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Credential {
    pub id: CredentialId,
    pub name: String,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub fields: Vec<String>,
    pub hint: String,
    /// Where its secrets may be sent; empty: anywhere the egress policy allows.
    pub allowed_origins: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// An `oauth2` credential's link (filled by [`with_links`]); never a token.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<crate::oauth::links::Status>,
}

/// Fills in the link status of the `oauth2` credentials among `items`.
pub async fn with_links(tx: &mut Tx, company_id: CompanyId, items: &mut [Credential]) -> Result<(), StoreError> {
    let ids: Vec<CredentialId> = items.iter().filter(|c| c.kind == "oauth2").map(|c| c.id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut found = crate::oauth::links::statuses(tx, company_id, &ids).await?;
    for c in items.iter_mut().filter(|c| c.kind == "oauth2") {
        c.oauth = Some(found.remove(&c.id).unwrap_or_default());
    }
    Ok(())
}

const COLUMNS: &str = "id, name, type, fields, hint, allowed_origins, created_at, updated_at";

/// One page of the credentials `viewer` may see, by name (unique per
/// company), then id, after `(name, id)`.
pub async fn page(
    tx: &mut Tx,
    company_id: CompanyId,
    viewer: Viewer,
    after: (&str, CredentialId),
    limit: i64,
) -> Result<Vec<Credential>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM credentials
          WHERE company_id = $1 AND (name, id) > ($2, $3)
            AND ($4 OR floq_access($5, 'integration', id, NULL) >= 1)
          ORDER BY name, id LIMIT $6"
    )))
    .bind(company_id)
    .bind(after.0)
    .bind(after.1)
    .bind(viewer.admin)
    .bind(viewer.user_id)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn find(tx: &mut Tx, company_id: CompanyId, id: CredentialId) -> Result<Option<Credential>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM credentials WHERE company_id = $1 AND id = $2"
    )))
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Data sealed by the caller, with what a read may show of it.
pub struct Sealed {
    pub data: Vec<u8>,
    /// The key that sealed it.
    pub key_id: String,
    pub fields: Vec<String>,
    pub hint: String,
}

/// A credential to store; its id is chosen by the caller, who bound the seal to it.
pub struct NewCredential<'a> {
    pub id: CredentialId,
    pub name: &'a str,
    pub kind: &'a str,
    pub sealed: Sealed,
    pub created_by: UserId,
    pub allowed_origins: Vec<String>,
    /// An `oauth2` credential's public part ([`OAuthClient`]).
    pub oauth_client: Option<serde_json::Value>,
}

/// Stores a credential; `None` when the company has one by that name.
pub async fn create(
    tx: &mut Tx,
    company_id: CompanyId,
    new: NewCredential<'_>,
) -> Result<Option<Credential>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO credentials (id, company_id, name, type, data, key_id, fields, hint, created_by, allowed_origins,
                                  oauth_client)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(new.id)
    .bind(company_id)
    .bind(new.name)
    .bind(new.kind)
    .bind(new.sealed.data)
    .bind(new.sealed.key_id)
    .bind(new.sealed.fields)
    .bind(new.sealed.hint)
    .bind(new.created_by)
    .bind(new.allowed_origins)
    .bind(new.oauth_client)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Whether another of the company's credentials than `id` has this name.
pub async fn name_taken(tx: &mut Tx, company_id: CompanyId, name: &str, id: CredentialId) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM credentials WHERE company_id = $1 AND name = $2 AND id <> $3)")
        .bind(company_id)
        .bind(name)
        .bind(id)
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// What an update changes; `None` keeps a part as it is.
pub struct Change<'a> {
    pub name: Option<&'a str>,
    pub sealed: Option<Sealed>,
    pub allowed_origins: Option<Vec<String>>,
    /// Replaces the public part with the data (`sealed`), when that changes.
    pub oauth_client: Option<serde_json::Value>,
}

/// Applies a change, answering the credential as it is now; `None` if the
/// company has no such credential.
pub async fn update(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    change: Change<'_>,
) -> Result<Option<Credential>, StoreError> {
    let (data, key_id, fields, hint) = match change.sealed {
        Some(s) => (Some(s.data), Some(s.key_id), Some(s.fields), Some(s.hint)),
        None => (None, None, None, None),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE credentials SET name = COALESCE($3, name), data = COALESCE($4, data),
                key_id = CASE WHEN $4 IS NULL THEN key_id ELSE $5 END,
                fields = COALESCE($6, fields), hint = COALESCE($7, hint),
                allowed_origins = COALESCE($8, allowed_origins),
                oauth_client = CASE WHEN $4 IS NULL THEN oauth_client ELSE $9 END, updated_at = now()
          WHERE company_id = $1 AND id = $2 RETURNING {COLUMNS}"
    )))
    .bind(company_id)
    .bind(id)
    .bind(change.name)
    .bind(data)
    .bind(key_id)
    .bind(fields)
    .bind(hint)
    .bind(change.allowed_origins)
    .bind(change.oauth_client)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

pub async fn delete(tx: &mut Tx, company_id: CompanyId, id: CredentialId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM credentials WHERE company_id = $1 AND id = $2")
        .bind(company_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The public part of an `oauth2` credential.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct OAuthClient {
    pub provider: String,
    pub client_id: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl OAuthClient {
    /// The public part of `oauth2` credential data (the rest stays sealed).
    pub fn of_data(data: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "provider": data.get("provider"),
            "client_id": data.get("client_id"),
            "scopes": data.get("scopes").cloned().unwrap_or_else(|| serde_json::json!([])),
        })
    }
}

/// The public part of a company's `oauth2` credential and its owner's
/// allowed origins; `None` if there is no such credential of that type.
pub async fn oauth_client(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
) -> Result<Option<(OAuthClient, Vec<String>)>, StoreError> {
    let row: Option<(Option<serde_json::Value>, Vec<String>)> = sqlx::query_as(
        "SELECT oauth_client, allowed_origins FROM credentials WHERE company_id = $1 AND id = $2 AND type = 'oauth2'",
    )
    .bind(company_id)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.and_then(|(client, origins)| {
        client
            .and_then(|c| serde_json::from_value::<OAuthClient>(c).ok())
            .map(|c| (c, origins))
    }))
}

/// The sealed data of a company's `oauth2` credential: for the connect
/// callback's code exchange, the one API path that opens it.
pub async fn oauth_sealed(tx: &mut Tx, company_id: CompanyId, id: CredentialId) -> Result<Option<Vec<u8>>, StoreError> {
    sqlx::query_scalar("SELECT data FROM credentials WHERE company_id = $1 AND id = $2 AND type = 'oauth2'")
        .bind(company_id)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::from)
}

/// A credential as a run's node may open it.
#[derive(Debug, sqlx::FromRow)]
pub struct ForUse {
    #[sqlx(rename = "type")]
    pub kind: String,
    pub data: Vec<u8>,
    /// Whether the user the flow's version was deployed by may use it now
    /// (a revoked grant takes effect at the next run).
    pub usable: bool,
    pub allowed_origins: Vec<String>,
}

/// The sealed credential for a node of a run deployed by `deployed_by`;
/// `None` if the company has no such credential.
pub async fn for_use(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    deployed_by: Option<UserId>,
) -> Result<Option<ForUse>, StoreError> {
    sqlx::query_as(
        "SELECT type, data, COALESCE(floq_may_use($3, 'integration', id, NULL), false) AS usable, allowed_origins
           FROM credentials WHERE company_id = $1 AND id = $2",
    )
    .bind(company_id)
    .bind(id)
    .bind(deployed_by)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// A credential still sealed by a key other than the primary one.
#[derive(Debug, sqlx::FromRow)]
pub struct Stale {
    pub id: CredentialId,
    pub company_id: CompanyId,
    pub data: Vec<u8>,
}

/// Key rotation: up to `limit` credentials of any company not sealed by
/// `primary_key_id` (leaving out `skipped`, which no key opens), locked for
/// resealing; rows another rotation holds are passed over.
pub async fn stale(
    tx: &mut Tx,
    primary_key_id: &str,
    skipped: &[CredentialId],
    limit: i64,
) -> Result<Vec<Stale>, StoreError> {
    sqlx::query_as(
        "SELECT id, company_id, data FROM credentials
          WHERE key_id <> $1 AND NOT (id = ANY($2)) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(primary_key_id)
    .bind(skipped)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// Key rotation: stores a credential's data sealed anew by `key_id`.
pub async fn reseal(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    data: &[u8],
    key_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE credentials SET data = $3, key_id = $4 WHERE company_id = $1 AND id = $2")
        .bind(company_id)
        .bind(id)
        .bind(data)
        .bind(key_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether `user` may use the credential in a flow (`execute` on it, or
/// admin): `None` when the company holds no such credential.
pub async fn may_use(
    tx: &mut Tx,
    company_id: CompanyId,
    id: CredentialId,
    user: UserId,
) -> Result<Option<bool>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT floq_may_use($3, 'integration', id, NULL) FROM credentials WHERE company_id = $1 AND id = $2",
    )
    .bind(company_id)
    .bind(id)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?)
}
