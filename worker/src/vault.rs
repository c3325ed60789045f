//! Just-in-time secrets: when a node that names a credential (`credential_id`)
//! or a secret KV value (`{"$secret": "key"}`) starts, its secrets are
//! decrypted for that node alone, audited and counted; when it ends, every
//! occurrence of them is scrubbed from its output and error, and the
//! plaintext is zeroized.

use std::collections::HashMap;

use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::nodes::{NodeEnv, NodeError, RunCtx, lacks_access};
use floq_shared::audit::sanitize::MASK;
use floq_shared::audit::{Actor, Entry};
use floq_shared::flow::reach::secret_ref;
use floq_shared::ids::{CompanyId, CredentialId, UserId};
use floq_shared::telemetry::METRICS;
use floq_shared::{credentials, db, kv, secrets};

/// A decrypted credential, field by field; each value is zeroized on drop.
pub struct Credential {
    pub id: Uuid,
    pub kind: String,
    /// Where it may be sent; empty: anywhere the egress policy allows. For an
    /// `oauth2` credential, its provider's `api_origins` (see [`floq_shared::oauth::token_origins`]).
    pub allowed_origins: Vec<String>,
    fields: HashMap<String, Zeroizing<String>>,
    /// An `oauth2` credential's provider and the link generation its `access_token` came from.
    oauth: Option<(floq_shared::oauth::Provider, i64)>,
    /// Secrets this node obtained after it started (a token refreshed after a `401`), scrubbed like the rest.
    late: std::sync::Mutex<Vec<Zeroizing<String>>>,
}

impl Credential {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(|v| v.as_str())
    }

    /// A new access token after the API refused this one (`401`): one refresh
    /// unless another caller already made one since.
    pub async fn refreshed(&self, env: &NodeEnv, run: &RunCtx, node_id: &str) -> Result<Zeroizing<String>, NodeError> {
        let Some((provider, generation)) = &self.oauth else {
            return Err(NodeError::invalid("only an oauth2 credential can be refreshed"));
        };
        let client = crate::oauth::Client {
            provider,
            id: self.field("client_id").unwrap_or_default(),
            secret: self.field("client_secret").unwrap_or_default(),
        };
        let asker = crate::oauth::Asker {
            run,
            node: node_id,
            credential: self.id,
        };
        let access = env.oauth.access(env, &asker, &client, Some(*generation)).await?;
        self.late
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(access.token.clone());
        Ok(access.token)
    }
}

/// What one node execution was handed, to scrub afterwards.
#[derive(Default)]
pub struct Opened {
    pub credential: Option<std::sync::Arc<Credential>>,
    /// Secret KV values this node holds that are bound to origins: `(key, origins)`.
    pub secret_origins: Vec<(String, Vec<String>)>,
    scrub: Vec<Zeroizing<String>>,
    pub audit: Vec<Entry>,
}

fn unavailable(what: &str) -> NodeError {
    NodeError::new("secret_unavailable", format!("{what} could not be read"))
}

/// Decrypts what `params` refers to, replacing the definition's own
/// `{"$secret": key}` objects (at `secret_paths`, JSON pointers found when the
/// flow was compiled) with the secret text. Evaluated params are never
/// searched for references: a value that came from data stays data.
pub async fn open(
    params: &mut Value,
    secret_paths: &[(String, String)],
    node_id: &str,
    run: &RunCtx,
    env: &NodeEnv,
) -> Result<Opened, NodeError> {
    let mut opened = Opened::default();
    let mut pending: Option<Credential> = None;
    let credential_id = params.get("credential_id").and_then(Value::as_str).map(str::to_string);
    let mut refs: Vec<String> = secret_paths.iter().map(|(_, key)| key.clone()).collect();
    refs.sort();
    refs.dedup();
    if credential_id.is_none() && refs.is_empty() {
        return Ok(opened);
    }
    let mut tx = db::tenant_tx(&env.pool, run.company_id)
        .await
        .map_err(|_| unavailable("the secrets"))?;
    let company_id = CompanyId(run.company_id);
    let deployed_by = run.deployed_by.map(UserId);
    let entry = |action: &str, kind: &str, id: &str| {
        Entry::new(run.company_id, Actor::system("worker"), action)
            .resource(kind, id)
            .details(json!({"run_id": run.run_id, "flow_id": run.flow_id, "node_id": node_id}))
    };
    if let Some(raw) = credential_id {
        let id = Uuid::parse_str(&raw).map_err(|_| NodeError::invalid("`credential_id` must be a credential id"))?;
        // Under the run's company: another company's credential is simply not there.
        // The deployer must still be allowed to use it: a revoked grant takes effect at the next run.
        let credential = credentials::for_use(&mut tx, company_id, CredentialId(id), deployed_by)
            .await
            .map_err(|_| unavailable("the credential"))?;
        let credentials::ForUse {
            kind,
            data: sealed,
            usable,
            allowed_origins,
        } = credential.ok_or_else(|| NodeError::new("credential_not_found", "no such credential"))?;
        if !usable {
            return Err(lacks_access(&format!("credential {id}")));
        }
        let plaintext = env
            .keyring
            .decrypt(&sealed, secrets::credential_binding(run.company_id, &raw))
            .map_err(|_| unavailable("the credential"))?;
        // String fields are the secrets; an `oauth2` credential's `scopes` (an array) is not.
        let fields: HashMap<String, Value> =
            serde_json::from_slice(&plaintext).map_err(|_| unavailable("the credential"))?;
        let fields: HashMap<String, String> = fields
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        opened
            .scrub
            .extend(secrets::scrub_values(&kind, &pairs).into_iter().map(Zeroizing::new));
        METRICS.secret_decryptions.with_label_values(&["credential"]).inc();
        opened.audit.push(entry("credential.decrypt", "credential", &raw));
        pending = Some(Credential {
            id,
            kind,
            allowed_origins,
            fields: fields.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect(),
            oauth: None,
            late: Default::default(),
        });
    }
    let mut values = HashMap::new();
    for key in refs {
        let secret = kv::secret_for_use(&mut tx, company_id, &key, deployed_by)
            .await
            .map_err(|_| unavailable("a secret"))?;
        let kv::SecretForUse {
            sealed,
            usable,
            allowed_origins,
        } = secret.ok_or_else(|| NodeError::new("secret_not_found", format!("no secret KV value `{key}`")))?;
        if !usable {
            return Err(lacks_access(&format!("the secret `{key}`")));
        }
        if !allowed_origins.is_empty() {
            opened.secret_origins.push((key.clone(), allowed_origins));
        }
        let plaintext = env
            .keyring
            .decrypt(&sealed, secrets::kv_binding(run.company_id, &key))
            .map_err(|_| unavailable("a secret"))?;
        let text = Zeroizing::new(String::from_utf8(plaintext.to_vec()).map_err(|_| unavailable("a secret"))?);
        METRICS.secret_decryptions.with_label_values(&["kv"]).inc();
        opened.audit.push(entry("kv.decrypt", "kv", &key));
        opened.scrub.push(text.clone());
        values.insert(key, text);
    }
    let _ = db::commit(tx).await;
    if let Some(mut credential) = pending {
        if credential.kind == "oauth2" {
            // After the commit above: a refresh holds no transaction while it calls the provider.
            let token = oauth_token(&mut credential, node_id, run, env).await?;
            opened.scrub.push(token);
        }
        opened.credential = Some(std::sync::Arc::new(credential));
    }
    for (pointer, key) in secret_paths {
        if let (Some(slot), Some(text)) = (params.pointer_mut(pointer), values.get(key))
            && secret_ref(slot) == Some(key.as_str())
        {
            *slot = Value::String(text.to_string());
        }
    }
    opened.scrub.retain(|s| s.len() >= 4);
    Ok(opened)
}

/// Puts a usable access token into an `oauth2` credential (refreshing it if
/// needed) and narrows where it may go to its provider's `api_origins`.
async fn oauth_token(
    credential: &mut Credential,
    node_id: &str,
    run: &RunCtx,
    env: &NodeEnv,
) -> Result<Zeroizing<String>, NodeError> {
    let invalid = |what: &str| NodeError::new("credential_invalid", format!("the oauth2 credential {what}"));
    let provider_id = credential
        .field("provider")
        .ok_or_else(|| invalid("names no provider"))?;
    let provider = env
        .oauth
        .registry
        .get(provider_id)
        .ok_or_else(|| invalid("names a provider that is not registered"))?
        .clone();
    // Checked before any refresh: an empty list means "anywhere" to the nodes, and a token goes only where its
    // provider (or, for a provider without fixed API origins, the credential) says.
    let origins = floq_shared::oauth::token_origins(&provider, &credential.allowed_origins);
    if origins.is_empty() {
        return Err(invalid(
            "may not send its token anywhere: its allowed_origins name none of the provider's API origins              (or, for a provider without fixed API origins such as Salesforce, name none at all)",
        ));
    }
    let access = {
        let client = crate::oauth::Client {
            provider: &provider,
            id: credential.field("client_id").unwrap_or_default(),
            secret: credential.field("client_secret").unwrap_or_default(),
        };
        let asker = crate::oauth::Asker {
            run,
            node: node_id,
            credential: credential.id,
        };
        env.oauth.access(env, &asker, &client, None).await?
    };
    credential.allowed_origins = origins;
    credential.fields.insert("access_token".into(), access.token.clone());
    credential.oauth = Some((provider, access.generation));
    Ok(access.token)
}

impl Opened {
    pub fn is_empty(&self) -> bool {
        self.scrub.is_empty()
    }

    /// Masks every occurrence of a secret this node was handed, in the common encodings it travels in (see
    /// [`secrets::encoded_forms`]), in object keys as well as values.
    pub fn scrub_value(&self, v: &mut Value) {
        scrub_in(v, &self.needles());
    }

    pub fn scrub_text(&self, text: &str) -> Option<String> {
        mask(text, &self.needles())
    }

    /// Every form of every secret, longest first across all of them: a longer form (or a longer secret holding a
    /// shorter one) is masked whole before anything inside it.
    fn needles(&self) -> Vec<Zeroizing<String>> {
        let late: Vec<Zeroizing<String>> = self
            .credential
            .as_ref()
            .map(|c| c.late.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
            .unwrap_or_default();
        let mut needles: Vec<Zeroizing<String>> = self
            .scrub
            .iter()
            .chain(late.iter())
            .flat_map(|s| secrets::encoded_forms(s))
            .map(Zeroizing::new)
            .collect();
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.as_str().cmp(b.as_str())));
        needles.dedup();
        needles
    }
}

fn scrub_in(v: &mut Value, needles: &[Zeroizing<String>]) {
    match v {
        Value::String(s) => {
            if let Some(clean) = mask(s, needles) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| scrub_in(i, needles)),
        Value::Object(map) => {
            map.values_mut().for_each(|i| scrub_in(i, needles));
            if map.keys().any(|k| needles.iter().any(|n| k.contains(n.as_str()))) {
                // Keys are rebuilt in order; two keys masked to the same text keep both values apart.
                let entries = std::mem::take(map);
                for (key, value) in entries {
                    let mut key = mask(&key, needles).unwrap_or(key);
                    if map.contains_key(&key) {
                        let base = key.clone();
                        let mut n = 2;
                        while map.contains_key(&key) {
                            key = format!("{base}#{n}");
                            n += 1;
                        }
                    }
                    map.insert(key, value);
                }
            }
        }
        _ => {}
    }
}

fn mask(text: &str, needles: &[Zeroizing<String>]) -> Option<String> {
    let hit = needles.iter().any(|s| text.contains(s.as_str()));
    hit.then(|| {
        needles
            .iter()
            .fold(text.to_string(), |acc, secret| acc.replace(secret.as_str(), MASK))
    })
}
