//! Roles and capabilities: the one table that says which role may do what.
//! Handlers declare the capability they need in their signature
//! (`Authorized<FlowEdit>`), so none can be reached without the check.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
pub use floq_shared::access::Role;

use axum::http::StatusCode;
use floq_shared::plugin::{Access, Verdict};
use serde_json::json;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Declares the capabilities once: the enum, its names, and a marker type
/// per capability for `Authorized<…>`.
macro_rules! capabilities {
    ($($cap:ident => $name:literal),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Capability {
            $($cap),*
        }

        impl Capability {
            pub const ALL: &[Capability] = &[$(Capability::$cap),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Capability::$cap => $name),*
                }
            }
        }

        $(
            pub struct $cap;
            impl Cap for $cap {
                const CAP: Capability = Capability::$cap;
            }
        )*
    };
}

capabilities! {
    FlowRead => "flow:read",
    FlowEdit => "flow:edit",
    FlowExecute => "flow:execute",
    RunRead => "run:read",
    UserManage => "user:manage",
    AccessManage => "access:manage",
    AuditRead => "audit:read",
    SettingsManage => "settings:manage",
    IntegrationRead => "integration:read",
    IntegrationManage => "integration:manage",
    KvRead => "kv:read",
    KvWrite => "kv:write",
}

/// The capability table (also in docs/authorization.md). Every role has its
/// arm, so a new role does not compile until it is given its capabilities.
pub fn role_grants(role: Role, cap: Capability) -> bool {
    use Capability::*;
    match role {
        Role::Admin => true,
        Role::FlowEditor => matches!(
            cap,
            FlowRead | FlowEdit | FlowExecute | RunRead | IntegrationRead | KvRead | KvWrite
        ),
        Role::FlowExecutor => matches!(cap, FlowRead | FlowExecute | RunRead | IntegrationRead | KvRead),
        Role::IntegrationManager => matches!(cap, IntegrationRead | IntegrationManage | KvRead | KvWrite),
        Role::Viewer | Role::AnalyticsViewer => matches!(cap, FlowRead | RunRead | IntegrationRead | KvRead),
        Role::AuditViewer => matches!(cap, AuditRead),
        Role::None => false,
    }
}

pub trait Cap: Send + Sync + 'static {
    const CAP: Capability;
}

/// An authenticated caller proven to hold capability `C` in its company.
pub struct Authorized<C: Cap> {
    pub principal: Principal,
    _cap: PhantomData<C>,
}

impl<C: Cap> FromRequestParts<AppState> for Authorized<C> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if !principal.roles.iter().any(|r| role_grants(*r, C::CAP)) {
            tracing::info!(
                user.id = %principal.user_id,
                company.id = %principal.company_id,
                capability = C::CAP.name(),
                "permission denied"
            );
            return Err(ApiError::forbidden(C::CAP.name()));
        }
        plugins_authorize(state, &principal, C::CAP.name(), &parts.method, parts.uri.path()).await?;
        Ok(Self {
            principal,
            _cap: PhantomData,
        })
    }
}

/// A signed-in caller acting on their own account (`/auth/me`, their API
/// keys): no role needed, but the plugins' `on_authorize` still applies,
/// with the capability `account`.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        plugins_authorize(state, &principal, "account", &parts.method, parts.uri.path()).await?;
        Ok(Self(principal))
    }
}

/// The plugins' `on_authorize` hooks, after floq's own check allowed the
/// request: every one runs (once per request), any deny wins, and a hook
/// that errors is a deny. A deny is a `403` naming the plugin, audited as
/// `authz.denied` like a role's.
pub async fn plugins_authorize(
    state: &AppState,
    principal: &Principal,
    capability: &str,
    method: &axum::http::Method,
    path: &str,
) -> Result<(), ApiError> {
    if state.plugins.is_empty() || !principal.request.first_authorization() {
        return Ok(());
    }
    let access = Access {
        user_id: principal.user_id,
        company_id: principal.company_id,
        roles: &principal.roles,
        capability,
        method,
        path,
        client_ip: principal.request.client_ip,
    };
    for plugin in state.plugins.iter() {
        let reason = match plugin.on_authorize(&access).await {
            Ok(Verdict::Allow) => continue,
            Ok(Verdict::Deny(reason)) => reason,
            Err(e) => {
                tracing::warn!(plugin = plugin.name(), error = %e, "on_authorize failed: denying");
                "the access check could not decide".to_string()
            }
        };
        tracing::info!(
            user.id = %principal.user_id,
            company.id = %principal.company_id,
            capability,
            plugin = plugin.name(),
            reason,
            "denied by a plugin"
        );
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "plugin_denied",
            format!("refused by the `{}` policy: {reason}", plugin.name()),
        )
        .with_details(json!({"plugin": plugin.name(), "capability": capability}))
        .denied(capability, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_grants_nothing_and_admin_everything() {
        for &cap in Capability::ALL {
            assert!(!role_grants(Role::None, cap));
            assert!(role_grants(Role::Admin, cap));
        }
        assert!(!role_grants(Role::Viewer, Capability::FlowExecute));
        assert!(role_grants(Role::FlowExecutor, Capability::FlowExecute));
        assert!(!role_grants(Role::FlowExecutor, Capability::FlowEdit));
    }
}
