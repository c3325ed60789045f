//! `kv_get` and `kv_set`: the company's plain KV values. Secret values stay
//! out of reach here: nodes get them only through `{"$secret": key}`.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult};
use floq_shared::audit::{self, Actor, Entry};
use floq_shared::kv::KvKey;
use floq_shared::{db, secrets};

fn key(params: &Value) -> Result<String, NodeError> {
    params
        .get("key")
        .and_then(Value::as_str)
        .and_then(KvKey::parse)
        .map(|k| k.as_str().to_string())
        .ok_or_else(|| NodeError::invalid(format!("`key`: {}", KvKey::RULE)))
}

fn storage(_: sqlx::Error) -> NodeError {
    NodeError::new("kv_unavailable", "the KV store could not be reached")
}

pub struct KvGet;

impl Node for KvGet {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let key = key(&ctx.params)?;
            let mut tx = db::tenant_tx(&ctx.env.pool, ctx.run.company_id)
                .await
                .map_err(storage)?;
            let row: Option<(Option<Value>, bool)> =
                sqlx::query_as("SELECT value, secret IS NOT NULL FROM kv WHERE key = $1")
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(storage)?;
            tx.commit().await.map_err(storage)?;
            match row {
                Some((_, true)) => Err(NodeError::new(
                    "kv_secret",
                    format!("`{key}` is secret: reference it as {{\"$secret\": \"{key}\"}}"),
                )),
                Some((value, false)) => Ok(NodeOutput::value(json!({"key": key, "found": true, "value": value}))),
                None => Ok(NodeOutput::value(json!({"key": key, "found": false, "value": null}))),
            }
        }
        .boxed()
    }
}

pub struct KvSet;

impl Node for KvSet {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, NodeResult> {
        async move {
            let key = key(&ctx.params)?;
            let value = ctx.params.get("value").cloned().unwrap_or(Value::Null);
            if value.as_str().is_some_and(|s| s.starts_with(secrets::SECRET_PREFIX)) {
                return Err(NodeError::invalid(
                    "secret values are written through the API, not by flows",
                ));
            }
            let mut tx = db::tenant_tx(&ctx.env.pool, ctx.run.company_id)
                .await
                .map_err(storage)?;
            let before: Option<(Option<Value>, bool)> =
                sqlx::query_as("SELECT value, secret IS NOT NULL FROM kv WHERE key = $1 FOR UPDATE")
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(storage)?;
            if before.as_ref().is_some_and(|(_, secret)| *secret) {
                return Err(NodeError::new(
                    "kv_secret",
                    format!("`{key}` is secret and cannot be overwritten by a flow"),
                ));
            }
            sqlx::query(
                "INSERT INTO kv (company_id, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (company_id, key) DO UPDATE SET value = excluded.value, updated_at = now()",
            )
            .bind(ctx.run.company_id)
            .bind(&key)
            .bind(&value)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            let entry = Entry::new(ctx.run.company_id, Actor::system("worker"), "kv.put")
                .resource("kv", &key)
                .details(json!({
                    "before": before.and_then(|(v, _)| v),
                    "after": value,
                    "run_id": ctx.run.run_id,
                    "flow_id": ctx.run.flow_id,
                }));
            audit::append(&mut tx, &[entry]).await.map_err(storage)?;
            tx.commit().await.map_err(storage)?;
            Ok(NodeOutput::value(json!({"key": key})))
        }
        .boxed()
    }
}
