//! Immutable flow versions, compiled once per worker and shared by its runs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use uuid::Uuid;

use floq_shared::db;
use floq_shared::flow::{Compiled, FlowDefinition, NodeKind};

const MAX_ENTRIES: usize = 10_000;

pub struct CompiledNode {
    pub id: String,
    pub kind: NodeKind,
    pub params: Compiled,
}

/// A version ready to execute: nodes with parsed templates and the edges as index lists.
pub struct CompiledFlow {
    pub nodes: Vec<CompiledNode>,
    /// Per node: (parent index, port the edge leaves from).
    pub incoming: Vec<Vec<(usize, Option<String>)>>,
    pub is_sink: Vec<bool>,
}

impl CompiledFlow {
    pub fn compile(def: &FlowDefinition) -> anyhow::Result<Self> {
        let index: HashMap<&str, usize> = def.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let mut nodes = Vec::with_capacity(def.nodes.len());
        for n in &def.nodes {
            let kind = NodeKind::parse(&n.kind).ok_or_else(|| anyhow::anyhow!("unknown node type `{}`", n.kind))?;
            let params =
                Compiled::compile(&n.params).map_err(|(at, e)| anyhow::anyhow!("node `{}` param {at}: {e}", n.id))?;
            nodes.push(CompiledNode {
                id: n.id.clone(),
                kind,
                params,
            });
        }
        let mut incoming = vec![Vec::new(); nodes.len()];
        let mut is_sink = vec![true; nodes.len()];
        for e in &def.edges {
            let (Some(&from), Some(&to)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) else {
                anyhow::bail!("edge {} -> {} names a missing node", e.from, e.to);
            };
            incoming[to].push((from, e.port.clone()));
            is_sink[from] = false;
        }
        Ok(Self {
            nodes,
            incoming,
            is_sink,
        })
    }
}

#[derive(Default)]
pub struct FlowCache {
    entries: RwLock<HashMap<(Uuid, Uuid, i32), Arc<CompiledFlow>>>,
}

impl FlowCache {
    pub async fn get(
        &self,
        pool: &PgPool,
        company_id: Uuid,
        flow_id: Uuid,
        version: i32,
    ) -> anyhow::Result<Option<Arc<CompiledFlow>>> {
        let key = (company_id, flow_id, version);
        if let Some(hit) = self.entries.read().expect("cache lock").get(&key) {
            return Ok(Some(hit.clone()));
        }
        let mut tx = db::tenant_tx(pool, company_id).await?;
        let definition: Option<sqlx::types::Json<FlowDefinition>> =
            sqlx::query_scalar("SELECT definition FROM flow_versions WHERE flow_id = $1 AND version = $2")
                .bind(flow_id)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        let Some(definition) = definition else {
            return Ok(None);
        };
        let compiled = Arc::new(CompiledFlow::compile(&definition.0)?);
        let mut entries = self.entries.write().expect("cache lock");
        if entries.len() >= MAX_ENTRIES {
            // Versions are immutable, so dropping everything only costs reloads.
            entries.clear();
        }
        entries.insert(key, compiled.clone());
        Ok(Some(compiled))
    }
}
