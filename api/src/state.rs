use std::sync::Arc;

use crate::accept::Acceptor;
use crate::auth::Keys;
use crate::key_cache::KeyCache;
use crate::rate::{McpLimits, TriggerLimits};
use floq_shared::Config;
use floq_shared::audit;
use floq_shared::crypto::Keyring;
use floq_shared::db;
use floq_shared::queue::Publisher;

#[derive(Clone)]
pub struct AppState {
    pub pool: db::Pool,
    pub config: Arc<Config>,
    pub keys: Arc<Keys>,
    pub key_cache: Arc<KeyCache>,
    pub acceptor: Acceptor,
    pub audit: audit::Writer,
    /// Encrypts credential data, secret KV values and webhook signing secrets;
    /// the API decrypts only the last (to verify a signed call and show it once).
    pub keyring: Arc<Keyring>,
    pub trigger_limits: Arc<TriggerLimits>,
    /// Requests to `/mcp`, per API key and per company.
    pub mcp_limits: Arc<McpLimits>,
    /// Broadcasts cancels to the workers (the control exchange); runs are published by the acceptor.
    pub publisher: Arc<Publisher>,
    /// The OpenID Connect client of single sign-on (discovery and key sets cached).
    pub oidc: Arc<crate::oidc::Oidc>,
    /// OAuth2 integration links: the provider registry and the token client the callback uses.
    pub oauth: Arc<OAuth>,
    /// The enabled plugins (`FLOQ_PLUGINS`): their hooks and node types.
    pub plugins: floq_shared::plugin::Plugins,
    /// The origin (`scheme://host[:port]`) of `FLOQ_PUBLIC_URL`, computed once:
    /// the console's own pages, so always allowed to write with a cookie.
    pub public_origin: Arc<str>,
    /// Fires when the API shuts down: long-lived answers (run event streams) end with it, so draining never waits
    /// on them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// What the connect flow needs: the registry, and a client whose calls go
/// through the egress policy (each provider's token endpoint trusted).
pub struct OAuth {
    pub registry: floq_shared::oauth::Registry,
    pub http: reqwest::Client,
    pub egress: floq_shared::egress::Policy,
}
