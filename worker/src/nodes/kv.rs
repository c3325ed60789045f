//! `kv_get` and `kv_set`: the company's plain KV values. Secret values stay
//! out of reach here: nodes get them only through `{"$secret": key}`.

use floq_shared::db::StoreError;
use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{Value, json};

use super::{Node, NodeCtx, NodeError, NodeOutput, NodeResult};
use floq_shared::audit::{self, Actor, Entry};
use floq_shared::kv::{self, KvKey, Plain};
use floq_shared::{db, secrets};

fn key(params: &Value) -> Result<KvKey, NodeError> {
    params
        .get("key")
        .and_then(Value::as_str)
        .and_then(KvKey::parse)
        .ok_or_else(|| NodeError::invalid(format!("`key`: {}", KvKey::RULE)))
}

fn storage(_: StoreError) -> NodeError {
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
            let found = kv::plain(&mut tx, &key, false).await.map_err(storage)?;
            db::commit(tx).await.map_err(storage)?;
            match found {
                Plain::Secret => Err(NodeError::new(
                    "kv_secret",
                    format!("`{key}` is secret: reference it as {{\"$secret\": \"{key}\"}}"),
                )),
                Plain::Value(value) => Ok(NodeOutput::value(
                    json!({"key": key.as_str(), "found": true, "value": value}),
                )),
                Plain::Missing => Ok(NodeOutput::value(
                    json!({"key": key.as_str(), "found": false, "value": null}),
                )),
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
            let before = match kv::plain(&mut tx, &key, true).await.map_err(storage)? {
                Plain::Secret => {
                    return Err(NodeError::new(
                        "kv_secret",
                        format!("`{key}` is secret and cannot be overwritten by a flow"),
                    ));
                }
                Plain::Value(value) => value,
                Plain::Missing => None,
            };
            kv::set_plain(&mut tx, ctx.run.company_id, &key, &value)
                .await
                .map_err(storage)?;
            let entry = Entry::new(ctx.run.company_id, Actor::system("worker"), "kv.put")
                .resource("kv", key.as_str())
                .details(json!({
                    "before": before,
                    "after": value,
                    "run_id": ctx.run.run_id,
                    "flow_id": ctx.run.flow_id,
                }));
            audit::append(&mut tx, &[entry]).await.map_err(storage)?;
            db::commit(tx).await.map_err(storage)?;
            Ok(NodeOutput::value(json!({"key": key.as_str()})))
        }
        .boxed()
    }
}
