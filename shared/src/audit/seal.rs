//! Seals audit entries into one hash chain per company, after the fact and
//! in order, so that writers never contend on a chain head.
//!
//! Entry ids come from a sequence and may commit out of order, so entries are
//! sealed by the id of the transaction that wrote them: every transaction
//! below the snapshot's xmin has ended, so nothing older can still appear.
//! A seal stores the previous hash and `sha256(prev_hash || entry)`, where
//! the entry is `floq_audit_json(..)::text` (see migrations/0007), rendered
//! here from the columns (`canonical`) to spare the database the work.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::canonical::{self, EntryRow};
use crate::config::AuditSink;
use crate::db;
use crate::telemetry::METRICS;

pub const GENESIS: [u8; 32] = [0; 32];

/// Seals up to about `limit` entries; returns how many it sealed (0 when
/// another sealer holds the lock).
pub async fn seal_pending(pool: &PgPool, sink: Option<&AuditSink>, limit: i64) -> anyhow::Result<usize> {
    let mut tx = db::duty_tx(pool, db::Duty::AuditSeal).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('floq.audit.seal'))")
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let (low, high): (i64, i64) = sqlx::query_as(
        "SELECT watermark, pg_snapshot_xmin(pg_current_snapshot())::text::bigint
           FROM audit_seal_state FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await?;
    // Rows are picked first and read after, so only the batch's details are printed.
    let pending = format!("SELECT {} FROM", canonical::COLUMNS);
    let mut rows: Vec<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{pending} (SELECT * FROM audit_log WHERE xact >= $1 AND xact < $2 ORDER BY xact, id LIMIT $3) a
         ORDER BY xact, id"
    )))
    .bind(low)
    .bind(high)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut watermark = high;
    if rows.len() as i64 == limit
        && let (Some(first), Some(last)) = (rows.first().map(|r| r.xact), rows.last().map(|r| r.xact))
    {
        if first == last {
            // One transaction fills the batch: seal all of it, however large.
            rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{pending} audit_log a WHERE xact = $1 ORDER BY id"
            )))
            .bind(last)
            .fetch_all(&mut *tx)
            .await?;
            watermark = last + 1;
        } else {
            // Whole transactions only: the last one may continue past the limit.
            rows.retain(|r| r.xact < last);
            watermark = last;
        }
    }
    if rows.is_empty() && watermark == low {
        record_lag(&mut tx, low).await?;
        return Ok(0);
    }

    let companies: Vec<Uuid> = {
        let mut c: Vec<Uuid> = rows.iter().map(|r| r.company_id).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let mut heads: HashMap<Uuid, (i64, Vec<u8>)> = sqlx::query_as::<_, (Uuid, i64, Vec<u8>)>(
        "SELECT company_id, seq, hash FROM audit_chain_heads WHERE company_id = ANY($1)",
    )
    .bind(&companies)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(c, seq, hash)| (c, (seq, hash)))
    .collect();

    let n = rows.len();
    let (mut ids, mut cos, mut seqs, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut lines = String::new();
    for row in &rows {
        let head = heads.entry(row.company_id).or_insert_with(|| (0, GENESIS.to_vec()));
        let entry = row.render();
        let hash = link(&head.1, &entry);
        let seq = head.0 + 1;
        if sink.is_some() {
            lines.push_str(&format!(
                "{{\"seq\":{seq},\"hash\":\"{}\",\"entry\":{}}}\n",
                hex::encode(hash),
                entry
            ));
        }
        ids.push(row.id);
        cos.push(row.company_id);
        seqs.push(seq);
        prevs.push(std::mem::replace(&mut head.1, hash.to_vec()));
        hashes.push(hash.to_vec());
        head.0 = seq;
    }
    if n > 0 {
        sqlx::query(
            "INSERT INTO audit_seals (entry_id, company_id, seq, prev_hash, hash)
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::bytea[], $5::bytea[])",
        )
        .bind(&ids)
        .bind(&cos)
        .bind(&seqs)
        .bind(&prevs)
        .bind(&hashes)
        .execute(&mut *tx)
        .await?;
        let (hc, hs, hh): (Vec<Uuid>, Vec<i64>, Vec<Vec<u8>>) =
            heads
                .into_iter()
                .map(|(c, (s, h))| (c, s, h))
                .fold(Default::default(), |mut acc, (c, s, h)| {
                    acc.0.push(c);
                    acc.1.push(s);
                    acc.2.push(h);
                    acc
                });
        sqlx::query(
            "INSERT INTO audit_chain_heads (company_id, seq, hash)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bytea[])
             ON CONFLICT (company_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(&hc)
        .bind(&hs)
        .bind(&hh)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE audit_seal_state SET watermark = $1")
        .bind(watermark)
        .execute(&mut *tx)
        .await?;
    if let Some(sink) = sink
        && !lines.is_empty()
    {
        sink.write(&lines).await?;
    }
    record_lag(&mut tx, watermark).await?;
    tx.commit().await?;
    METRICS.audit_sealed.inc_by(n as u64);
    Ok(n)
}

/// `floq_audit_seal_lag_seconds`: how old the oldest entry the next pass starts from is.
async fn record_lag(tx: &mut db::Tx, watermark: i64) -> sqlx::Result<()> {
    let lag: f64 = sqlx::query_scalar(
        "SELECT COALESCE(extract(epoch FROM now() - min(at)), 0)::float8 FROM audit_log WHERE xact >= $1",
    )
    .bind(watermark)
    .fetch_one(&mut **tx)
    .await?;
    METRICS.audit_seal_lag.set(lag.max(0.0));
    Ok(())
}

/// One link of the chain; `floq_audit_verify()` computes the same in SQL.
pub fn link(prev: &[u8], entry: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(entry.as_bytes());
    h.finalize().into()
}
