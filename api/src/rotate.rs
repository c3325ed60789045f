//! `floq-api admin rotate-keys`: re-encrypts every credential, secret KV
//! value, single sign-on client secret, OAuth2 link token and webhook
//! signing secret ([`crate::webhook_secret::rekey`]) still
//! sealed by an older key under the primary one, in small
//! batches, each its own transaction with its rows locked. The system keeps
//! serving meanwhile (new writes already use the primary key); a stopped
//! rotation resumes where it left off, since it only looks for rows whose
//! key id is not the primary's.

use serde::Serialize;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::crypto::Keyring;
use floq_shared::ids::CompanyId;
use floq_shared::{credentials, db, kv, oauth, secrets};

#[derive(Debug, Default, Serialize)]
pub struct Rotated {
    pub primary_key: String,
    pub credentials: u64,
    pub kv_secrets: u64,
    pub webhook_secrets: u64,
    pub sso_secrets: u64,
    /// OAuth2 links whose access and refresh tokens were resealed.
    pub oauth_links: u64,
    /// Values no configured key can open (left as they are, and listed).
    pub undecryptable: Vec<String>,
}

pub async fn rotate(pool: &db::Pool, keyring: &Keyring, batch: i64) -> anyhow::Result<Rotated> {
    let mut out = Rotated {
        primary_key: keyring.primary_id(),
        ..Default::default()
    };
    out.credentials = rotate_credentials(pool, keyring, batch, &mut out.undecryptable).await?;
    out.kv_secrets = rotate_kv(pool, keyring, batch, &mut out.undecryptable).await?;
    out.webhook_secrets = crate::webhook_secret::rekey(pool, keyring, batch, &mut out.undecryptable).await?;
    out.sso_secrets = rotate_sso(pool, keyring, batch, &mut out.undecryptable).await?;
    out.oauth_links = rotate_oauth_links(pool, keyring, batch, &mut out.undecryptable).await?;
    Ok(out)
}

fn rekeyed(company_id: CompanyId, resource: &str, id: &str, keyring: &Keyring) -> Entry {
    Entry::new(company_id.as_uuid(), Actor::system("rotate-keys"), "secret.rekey")
        .resource(resource, id)
        .details(serde_json::json!({"key_id": keyring.primary_id()}))
}

async fn rotate_credentials(
    pool: &db::Pool,
    keyring: &Keyring,
    batch: i64,
    undecryptable: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let mut skipped = Vec::new();
    let mut moved = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::KeyRotation).await?;
        let rows = credentials::stale(&mut tx, &keyring.primary_id(), &skipped, batch).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let id = row.id.to_string();
            let binding = secrets::credential_binding(row.company_id.as_uuid(), &id);
            let Ok(plaintext) = keyring.decrypt(&row.data, binding) else {
                undecryptable.push(format!("credentials:{id}"));
                skipped.push(row.id);
                continue;
            };
            let resealed = keyring.encrypt(&plaintext, binding);
            credentials::reseal(&mut tx, row.company_id, row.id, &resealed, &keyring.primary_id()).await?;
            audit::append(&mut tx, &[rekeyed(row.company_id, "credential", &id, keyring)]).await?;
            moved += 1;
        }
        db::commit(tx).await?;
    }
    Ok(moved)
}

async fn rotate_oauth_links(
    pool: &db::Pool,
    keyring: &Keyring,
    batch: i64,
    undecryptable: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let mut skipped = Vec::new();
    let mut moved = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::KeyRotation).await?;
        let rows = oauth::links::stale(&mut tx, &keyring.primary_id(), &skipped, batch).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let id = row.credential_id.to_string();
            let company = row.company_id.as_uuid();
            let access = keyring.decrypt(&row.access_token, oauth::access_token_binding(company, &id));
            let refresh = row
                .refresh_token
                .as_ref()
                .map(|r| keyring.decrypt(r, oauth::refresh_token_binding(company, &id)))
                .transpose();
            let (Ok(access), Ok(refresh)) = (access, refresh) else {
                undecryptable.push(format!("oauth_links:{id}"));
                skipped.push(row.credential_id);
                continue;
            };
            let access = keyring.encrypt(&access, oauth::access_token_binding(company, &id));
            let refresh = refresh.map(|r| keyring.encrypt(&r, oauth::refresh_token_binding(company, &id)));
            oauth::links::reseal(
                &mut tx,
                row.company_id,
                row.credential_id,
                &access,
                refresh.as_deref(),
                &keyring.primary_id(),
            )
            .await?;
            audit::append(&mut tx, &[rekeyed(row.company_id, "oauth_link", &id, keyring)]).await?;
            moved += 1;
        }
        db::commit(tx).await?;
    }
    Ok(moved)
}

async fn rotate_kv(
    pool: &db::Pool,
    keyring: &Keyring,
    batch: i64,
    undecryptable: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let mut skipped = Vec::new();
    let mut moved = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::KeyRotation).await?;
        let rows = kv::stale_secrets(&mut tx, &keyring.primary_id(), &skipped, batch).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let binding = secrets::kv_binding(row.company_id.as_uuid(), &row.key);
            let Ok(plaintext) = keyring.decrypt(&row.sealed, binding) else {
                undecryptable.push(format!("kv:{}/{}", row.company_id, row.key));
                skipped.push((row.company_id, row.key));
                continue;
            };
            let resealed = keyring.encrypt(&plaintext, binding);
            kv::reseal_secret(&mut tx, row.company_id, &row.key, &resealed, &keyring.primary_id()).await?;
            audit::append(&mut tx, &[rekeyed(row.company_id, "kv", &row.key, keyring)]).await?;
            moved += 1;
        }
        db::commit(tx).await?;
    }
    Ok(moved)
}

async fn rotate_sso(
    pool: &db::Pool,
    keyring: &Keyring,
    batch: i64,
    undecryptable: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let mut skipped = Vec::new();
    let mut moved = 0;
    loop {
        let mut tx = db::duty_tx(pool, db::Duty::KeyRotation).await?;
        let rows = floq_shared::sso::stale_secrets(&mut tx, &keyring.primary_id(), &skipped, batch).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let id = row.id.to_string();
            let binding = secrets::sso_binding(row.company_id.as_uuid(), &id);
            let Ok(plaintext) = keyring.decrypt(&row.client_secret, binding) else {
                undecryptable.push(format!("sso_connections:{id}"));
                skipped.push(row.id);
                continue;
            };
            let resealed = keyring.encrypt(&plaintext, binding);
            floq_shared::sso::reseal_secret(&mut tx, row.id, &resealed, &keyring.primary_id()).await?;
            audit::append(&mut tx, &[rekeyed(row.company_id, "sso_connection", &id, keyring)]).await?;
            moved += 1;
        }
        db::commit(tx).await?;
    }
    Ok(moved)
}
