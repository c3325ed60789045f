//! Access tokens of `oauth2` credentials, refreshed just in time.
//!
//! A node gets a token that stays valid for at least [`SKEW`]; an expired or
//! nearly expired one, or one the API refused (`401`), is refreshed first.
//! Refreshing is single-flight per credential:
//!
//! * within this worker, callers queue on one async lock per credential and
//!   re-read the link when they get it, so the first refreshes and the rest
//!   read its result;
//! * across workers, the refresher takes a lease on the link's row (a short
//!   transaction of its own) and holds no connection while it calls the
//!   provider; the others poll the row until its generation moves on and
//!   read the new token.
//!
//! The new access token, the rotated refresh token and the expiry are stored
//! in one statement that also checks the refresher still holds the lease at
//! the generation it refreshed from (a stale writer stores nothing), with its
//! audit entry, in one commit; only then is the token used. A refused
//! refresh token (`invalid_grant`) marks the link `needs_reconnect`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::nodes::{NodeEnv, NodeError, RunCtx};
use floq_shared::audit::{self, Actor, Entry, Outcome};
use floq_shared::db;
use floq_shared::ids::{CompanyId, CredentialId};
use floq_shared::oauth::{self, Provider, Registry, links, token};
use floq_shared::telemetry::METRICS;

/// A token is refreshed when it has less than this left.
pub const SKEW: Duration = Duration::from_secs(60);
/// How long a refresh lease lasts: past the token call's own timeout (10 s),
/// so a live holder never loses it; a dead holder's lapses.
const LEASE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

pub const REFRESH_FAILED: &str = "credential_refresh_failed";

/// The token service of one worker.
pub struct Tokens {
    pub registry: Registry,
    /// This worker's id: the holder a lease names.
    holder: Uuid,
    locks: Mutex<HashMap<Uuid, Weak<tokio::sync::Mutex<()>>>>,
}

/// What a credential's data says about its client.
pub struct Client<'a> {
    pub provider: &'a Provider,
    pub id: &'a str,
    pub secret: &'a str,
}

/// A usable access token and the generation of the link it came from.
pub struct Access {
    pub token: Zeroizing<String>,
    pub generation: i64,
}

/// Who is asking: for tenancy and the audit trail.
pub struct Asker<'a> {
    pub run: &'a RunCtx,
    pub node: &'a str,
    pub credential: Uuid,
}

fn failed(message: impl Into<String>) -> NodeError {
    NodeError::new(REFRESH_FAILED, message)
}

fn unavailable() -> NodeError {
    NodeError::new("secret_unavailable", "the credential's tokens could not be read")
}

impl Tokens {
    pub fn new(registry: Registry, holder: Uuid) -> Self {
        Self {
            registry,
            holder,
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn lock_for(&self, id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = locks.get(&id).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, w| w.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(id, Arc::downgrade(&lock));
        lock
    }

    /// A token valid for at least [`SKEW`]; `rejected`: the generation whose
    /// token the API just refused (a `401`), which is refreshed even if it has not expired.
    pub async fn access(
        &self,
        env: &NodeEnv,
        asker: &Asker<'_>,
        client: &Client<'_>,
        rejected: Option<i64>,
    ) -> Result<Access, NodeError> {
        let link = read(env, asker).await?;
        if let Some(access) = usable(env, asker, client, &link, rejected)? {
            return Ok(access);
        }
        let lock = self.lock_for(asker.credential);
        let _turn = lock.lock().await;
        // Whoever held the lock before us may have refreshed already.
        let link = read(env, asker).await?;
        if let Some(access) = usable(env, asker, client, &link, rejected)? {
            return Ok(access);
        }
        self.refresh_shared(env, asker, client, link, rejected).await
    }

    /// Takes the lease and refreshes, or waits for the worker that holds it.
    async fn refresh_shared(
        &self,
        env: &NodeEnv,
        asker: &Asker<'_>,
        client: &Client<'_>,
        mut link: links::Link,
        rejected: Option<i64>,
    ) -> Result<Access, NodeError> {
        let company = CompanyId(asker.run.company_id);
        let id = CredentialId(asker.credential);
        let give_up = tokio::time::Instant::now() + LEASE + Duration::from_secs(5);
        loop {
            if let Some(access) = usable(env, asker, client, &link, rejected)? {
                return Ok(access);
            }
            if !link.leased {
                let mut tx = db::tenant_tx(&env.pool, asker.run.company_id)
                    .await
                    .map_err(|_| unavailable())?;
                let took = links::take_lease(&mut tx, company, id, self.holder, link.generation, LEASE)
                    .await
                    .map_err(|_| unavailable())?;
                db::commit(tx).await.map_err(|_| unavailable())?;
                if took {
                    return self.refresh_holding(env, asker, client, link).await;
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(failed("another refresh of this credential did not finish in time"));
            }
            tokio::time::sleep(POLL).await;
            link = read(env, asker).await?;
        }
    }

    /// Refreshes while holding the lease: no transaction is open during the call.
    async fn refresh_holding(
        &self,
        env: &NodeEnv,
        asker: &Asker<'_>,
        client: &Client<'_>,
        link: links::Link,
    ) -> Result<Access, NodeError> {
        let company = CompanyId(asker.run.company_id);
        let id = CredentialId(asker.credential);
        let id_text = asker.credential.to_string();
        let refresh_token = match &link.refresh_token {
            Some(sealed) => Some(
                env.keyring
                    .decrypt(sealed, oauth::refresh_token_binding(asker.run.company_id, &id_text))
                    .map_err(|_| unavailable())?,
            ),
            None => None,
        };
        let outcome = match &refresh_token {
            None => Err(token::TokenError::InvalidGrant("no_refresh_token".into())),
            Some(rt) => {
                let rt = std::str::from_utf8(rt).map_err(|_| unavailable())?;
                token::request(
                    &env.http,
                    &env.egress,
                    client.provider,
                    token::Client {
                        id: client.id,
                        secret: client.secret,
                    },
                    token::Grant::Refresh { refresh_token: rt },
                )
                .await
            }
        };
        let entry = |outcome_kind: Outcome, details: serde_json::Value| {
            Entry::new(
                asker.run.company_id,
                Actor::system("worker"),
                "credential.oauth_refresh",
            )
            .resource("credential", asker.credential)
            .outcome(outcome_kind)
            .details(details)
        };
        let where_ = json!({"run_id": asker.run.run_id, "flow_id": asker.run.flow_id, "node_id": asker.node});
        let mut tx = db::tenant_tx(&env.pool, asker.run.company_id)
            .await
            .map_err(|_| unavailable())?;
        match outcome {
            Ok(tokens) => {
                let expires_at = tokens
                    .expires_in
                    .map(|s| link.now + chrono::Duration::seconds(s.max(0)));
                let kept = refresh_token.as_ref().map(|r| r.as_slice());
                let refresh_plain = tokens.refresh_token.as_ref().map(|r| r.as_bytes()).or(kept);
                let sealed = links::SealedTokens {
                    access_token: env.keyring.encrypt(
                        tokens.access_token.as_bytes(),
                        oauth::access_token_binding(asker.run.company_id, &id_text),
                    ),
                    refresh_token: refresh_plain.map(|r| {
                        env.keyring
                            .encrypt(r, oauth::refresh_token_binding(asker.run.company_id, &id_text))
                    }),
                    key_id: env.keyring.primary_id(),
                    expires_at,
                    scopes: tokens.scopes.clone().unwrap_or_default(),
                };
                let stored = links::store_refreshed(&mut tx, company, id, self.holder, link.generation, sealed)
                    .await
                    .map_err(|_| unavailable())?;
                let Some(generation) = stored else {
                    // Our lease lapsed and another refresh moved on: what we got is never used.
                    let _ = db::commit(tx).await;
                    METRICS.oauth_refreshes.with_label_values(&["stale"]).inc();
                    return Err(failed("the refresh lost its lease to another worker; retry the run"));
                };
                let mut details = where_;
                details["generation"] = generation.into();
                details["rotated"] = tokens.refresh_token.is_some().into();
                audit::append(&mut tx, &[entry(Outcome::Success, details)])
                    .await
                    .map_err(|_| unavailable())?;
                // Committed before anyone uses the token.
                db::commit(tx).await.map_err(|_| unavailable())?;
                METRICS.oauth_refreshes.with_label_values(&["refreshed"]).inc();
                Ok(Access {
                    token: tokens.access_token,
                    generation,
                })
            }
            Err(token::TokenError::InvalidGrant(code)) => {
                links::mark_needs_reconnect(&mut tx, company, id, self.holder, link.generation)
                    .await
                    .map_err(|_| unavailable())?;
                let mut details = where_;
                details["reason"] = code.clone().into();
                details["needs_reconnect"] = true.into();
                audit::append(&mut tx, &[entry(Outcome::Failure, details)])
                    .await
                    .map_err(|_| unavailable())?;
                db::commit(tx).await.map_err(|_| unavailable())?;
                METRICS.oauth_refreshes.with_label_values(&["invalid_grant"]).inc();
                Err(failed(format!(
                    "the provider refused the refresh token ({code}): the credential needs to be connected again"
                )))
            }
            Err(e) => {
                links::release(&mut tx, company, id, self.holder)
                    .await
                    .map_err(|_| unavailable())?;
                let mut details = where_;
                details["reason"] = e.to_string().into();
                audit::append(&mut tx, &[entry(Outcome::Failure, details)])
                    .await
                    .map_err(|_| unavailable())?;
                db::commit(tx).await.map_err(|_| unavailable())?;
                METRICS.oauth_refreshes.with_label_values(&["failed"]).inc();
                Err(failed(format!("the token could not be refreshed: {e}")))
            }
        }
    }
}

/// The link, read in a short transaction of its own.
async fn read(env: &NodeEnv, asker: &Asker<'_>) -> Result<links::Link, NodeError> {
    let mut tx = db::tenant_tx(&env.pool, asker.run.company_id)
        .await
        .map_err(|_| unavailable())?;
    let link = links::find(&mut tx, CompanyId(asker.run.company_id), CredentialId(asker.credential))
        .await
        .map_err(|_| unavailable())?;
    db::commit(tx).await.map_err(|_| unavailable())?;
    link.ok_or_else(not_connected)
}

fn not_connected() -> NodeError {
    NodeError::new(
        "credential_not_connected",
        "the oauth2 credential is not connected: connect it (POST /api/v1/credentials/{id}/oauth/authorize)",
    )
}

/// The link's token if it can be used as it is; an error if the link cannot be used at all.
fn usable(
    env: &NodeEnv,
    asker: &Asker<'_>,
    client: &Client<'_>,
    link: &links::Link,
    rejected: Option<i64>,
) -> Result<Option<Access>, NodeError> {
    if link.provider != client.provider.id {
        // Connected under another provider than the credential names now: its tokens must not travel.
        return Err(not_connected());
    }
    if link.needs_reconnect {
        return Err(failed(
            "the provider refused the refresh token earlier: the credential needs to be connected again",
        ));
    }
    let fresh = link
        .expires_at
        .is_none_or(|at| at > link.now + chrono::Duration::from_std(SKEW).unwrap_or_default());
    if !fresh || rejected == Some(link.generation) {
        return Ok(None);
    }
    let plain = env
        .keyring
        .decrypt(
            &link.access_token,
            oauth::access_token_binding(asker.run.company_id, &asker.credential.to_string()),
        )
        .map_err(|_| unavailable())?;
    let token = Zeroizing::new(String::from_utf8(plain.to_vec()).map_err(|_| unavailable())?);
    Ok(Some(Access {
        token,
        generation: link.generation,
    }))
}
