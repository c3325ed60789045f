//! `floq-api admin rotate-keys`: re-encrypts every credential, secret KV
//! value and webhook signing secret ([`crate::webhook_secret::rekey`]) still
//! sealed by an older key under the primary one, in small
//! batches, each its own transaction with its rows locked. The system keeps
//! serving meanwhile (new writes already use the primary key); a stopped
//! rotation resumes where it left off, since it only looks for rows whose
//! key id is not the primary's.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use floq_shared::audit::{self, Actor, Entry};
use floq_shared::crypto::Keyring;
use floq_shared::{db, secrets};

#[derive(Debug, Default, Serialize)]
pub struct Rotated {
    pub primary_key: String,
    pub credentials: u64,
    pub kv_secrets: u64,
    pub webhook_secrets: u64,
    /// Values no configured key can open (left as they are, and listed).
    pub undecryptable: Vec<String>,
}

struct Table {
    name: &'static str,
    select: &'static str,
    update: &'static str,
}

const CREDENTIALS: Table = Table {
    name: "credentials",
    select: "SELECT id::text, company_id, data FROM credentials
              WHERE key_id <> $1 AND NOT (id::text = ANY($2)) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
    update: "UPDATE credentials SET data = $3, key_id = $4 WHERE id::text = $1 AND company_id = $2",
};

const KV: Table = Table {
    name: "kv",
    select: "SELECT key, company_id, secret FROM kv
              WHERE key_id <> $1 AND NOT (company_id::text || '/' || key = ANY($2))
              ORDER BY company_id, key LIMIT $3 FOR UPDATE SKIP LOCKED",
    update: "UPDATE kv SET secret = $3, key_id = $4 WHERE key = $1 AND company_id = $2",
};

pub async fn rotate(pool: &PgPool, keyring: &Keyring, batch: i64) -> anyhow::Result<Rotated> {
    let mut out = Rotated {
        primary_key: keyring.primary_id(),
        ..Default::default()
    };
    for table in [CREDENTIALS, KV] {
        let mut skipped: Vec<String> = Vec::new();
        loop {
            let mut tx = db::duty_tx(pool, db::Duty::KeyRotation).await?;
            let rows: Vec<(String, Uuid, Vec<u8>)> = sqlx::query_as(table.select)
                .bind(keyring.primary_id())
                .bind(&skipped)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
            if rows.is_empty() {
                break;
            }
            let mut moved = 0;
            for (row_id, company_id, sealed) in rows {
                let binding = match table.name {
                    "credentials" => secrets::credential_binding(company_id, &row_id),
                    _ => secrets::kv_binding(company_id, &row_id),
                };
                let Ok(plaintext) = keyring.decrypt(&sealed, binding) else {
                    let marker = match table.name {
                        "credentials" => row_id.clone(),
                        _ => format!("{company_id}/{row_id}"),
                    };
                    out.undecryptable.push(format!("{}:{marker}", table.name));
                    skipped.push(marker);
                    continue;
                };
                let resealed = keyring.encrypt(&plaintext, binding);
                sqlx::query(table.update)
                    .bind(&row_id)
                    .bind(company_id)
                    .bind(resealed)
                    .bind(keyring.primary_id())
                    .execute(&mut *tx)
                    .await?;
                let entry = Entry::new(company_id, Actor::system("rotate-keys"), "secret.rekey")
                    .resource(if table.name == "kv" { "kv" } else { "credential" }, &row_id)
                    .details(serde_json::json!({"key_id": keyring.primary_id()}));
                audit::append(&mut tx, &[entry]).await?;
                moved += 1;
            }
            tx.commit().await?;
            match table.name {
                "credentials" => out.credentials += moved,
                _ => out.kv_secrets += moved,
            }
        }
    }
    out.webhook_secrets = crate::webhook_secret::rekey(pool, keyring, batch, &mut out.undecryptable).await?;
    Ok(out)
}
