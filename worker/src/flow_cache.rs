//! Immutable flow versions, compiled once per worker and shared by its runs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::nodes::{Implementations, Node};
use floq_shared::db;
use floq_shared::flow::reach;
use floq_shared::flow::validate::without;
use floq_shared::flow::{CompiledParams, FlowDefinition, NodeKind, NodeSpec, RetryPolicy};
use floq_shared::flows;
use floq_shared::ids::UserId;

const MAX_ENTRIES: usize = 10_000;

pub struct CompiledNode {
    pub id: String,
    pub spec: &'static NodeSpec,
    pub implementation: Arc<dyn Node>,
    pub params: CompiledParams,
    /// Params taken literally (a code body, a loop's sub-flow), merged in after evaluation.
    pub raw: Vec<(String, Value)>,
    pub retry: Option<RetryPolicy>,
    pub timeout: Option<Duration>,
    /// A loop's body, compiled with its flow.
    pub body: Option<Arc<CompiledFlow>>,
    /// Where the definition itself references secrets: (JSON pointer into params, key).
    pub secrets: Vec<(String, String)>,
}

/// A version ready to execute: nodes with parsed templates and the edges as index lists.
pub struct CompiledFlow {
    pub nodes: Vec<CompiledNode>,
    /// Per node: (parent index, port the edge leaves from).
    pub incoming: Vec<Vec<(usize, Option<String>)>>,
    pub is_sink: Vec<bool>,
    /// Whether any template or script may read `$vars`.
    pub reads_vars: bool,
    /// Who deployed this version: what it reaches (credentials, sub-flows,
    /// secrets) must stay usable by them. `None` for versions deployed before
    /// this was recorded, which therefore reach nothing.
    pub deployed_by: Option<Uuid>,
    /// `deadline_ms`: how long a run of this flow may take from its first start.
    pub deadline: Option<Duration>,
}

impl CompiledFlow {
    pub fn compile(def: &FlowDefinition, nodes_known: &Implementations) -> anyhow::Result<Self> {
        let index: HashMap<&str, usize> = def.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let mut nodes = Vec::with_capacity(def.nodes.len());
        for n in &def.nodes {
            let unknown = || anyhow::anyhow!("unknown node type `{}`", n.kind);
            let (spec, implementation) = nodes_known.get(&n.kind).ok_or_else(unknown)?;
            let params = CompiledParams::compile(&without(&n.params, spec.raw_params))
                .map_err(|(at, e)| anyhow::anyhow!("node `{}` param {at}: {e}", n.id))?;
            let raw: Vec<(String, Value)> = spec
                .raw_params
                .iter()
                .filter_map(|k| n.params.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            let body = match n.params.get("flow") {
                Some(sub) if spec.kind == NodeKind::LOOP => {
                    let sub: FlowDefinition = serde_json::from_value(sub.clone())?;
                    Some(Arc::new(CompiledFlow::compile(&sub, nodes_known)?))
                }
                _ => None,
            };
            nodes.push(CompiledNode {
                id: n.id.clone(),
                spec,
                implementation,
                params,
                raw,
                retry: n.retry.clone(),
                timeout: n.timeout_ms.map(Duration::from_millis),
                body,
                secrets: reach::secret_paths(spec.kind, &n.params),
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
        // Loop bodies share their run's `$vars`, so a mention anywhere counts.
        let reads_vars = serde_json::to_string(&def.nodes).is_ok_and(|text| text.contains("$vars"));
        Ok(Self {
            nodes,
            incoming,
            is_sink,
            reads_vars,
            deployed_by: None,
            deadline: def.deadline_ms.map(Duration::from_millis),
        })
    }
}

pub struct FlowCache {
    entries: RwLock<HashMap<(Uuid, Uuid, i32), Arc<CompiledFlow>>>,
    nodes: Implementations,
}

impl FlowCache {
    pub fn new(nodes: Implementations) -> Self {
        Self {
            entries: RwLock::default(),
            nodes,
        }
    }

    pub async fn get(
        &self,
        pool: &db::Pool,
        company_id: Uuid,
        flow_id: Uuid,
        version: i32,
    ) -> anyhow::Result<Option<Arc<CompiledFlow>>> {
        let key = (company_id, flow_id, version);
        if let Some(hit) = self.entries.read().expect("cache lock").get(&key) {
            return Ok(Some(hit.clone()));
        }
        let mut tx = db::tenant_tx(pool, company_id).await?;
        let found = flows::version(&mut tx, company_id.into(), flow_id.into(), version).await?;
        db::commit(tx).await?;
        let Some(found) = found else {
            return Ok(None);
        };
        let mut compiled = CompiledFlow::compile(&found.definition, &self.nodes)?;
        compiled.deployed_by = found.deployed_by.map(UserId::as_uuid);
        let compiled = Arc::new(compiled);
        let mut entries = self.entries.write().expect("cache lock");
        if entries.len() >= MAX_ENTRIES {
            // Versions are immutable, so dropping everything only costs reloads.
            entries.clear();
        }
        entries.insert(key, compiled.clone());
        Ok(Some(compiled))
    }
}
