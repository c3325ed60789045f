//! Roles and capabilities: the one table that says which role may do what.
//! Handlers declare the capability they need in their signature
//! (`Authorized<FlowEdit>`), so none can be reached without the check.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

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

pub const ROLES: [&str; 8] = [
    "admin",
    "flow_editor",
    "flow_executor",
    "audit_viewer",
    "integration_manager",
    "analytics_viewer",
    "viewer",
    "none",
];

/// The capability table (also in docs/authorization.md).
pub fn role_grants(role: &str, cap: Capability) -> bool {
    use Capability::*;
    match role {
        "admin" => true,
        "flow_editor" => matches!(
            cap,
            FlowRead | FlowEdit | FlowExecute | RunRead | IntegrationRead | KvRead | KvWrite
        ),
        "flow_executor" => matches!(cap, FlowRead | FlowExecute | RunRead | IntegrationRead | KvRead),
        "integration_manager" => matches!(cap, IntegrationRead | IntegrationManage | KvRead | KvWrite),
        "viewer" | "analytics_viewer" => matches!(cap, FlowRead | RunRead | IntegrationRead | KvRead),
        "audit_viewer" => matches!(cap, AuditRead),
        _ => false,
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
        if !principal.roles.iter().any(|r| role_grants(r, C::CAP)) {
            tracing::info!(
                user.id = %principal.user_id,
                company.id = %principal.company_id,
                capability = C::CAP.name(),
                "permission denied"
            );
            return Err(ApiError::forbidden(C::CAP.name()));
        }
        Ok(Self {
            principal,
            _cap: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_grants_nothing_and_admin_everything() {
        for cap in [
            Capability::FlowRead,
            Capability::FlowEdit,
            Capability::FlowExecute,
            Capability::RunRead,
        ] {
            assert!(!role_grants("none", cap));
            assert!(role_grants("admin", cap));
        }
        assert!(!role_grants("viewer", Capability::FlowExecute));
        assert!(role_grants("flow_executor", Capability::FlowExecute));
        assert!(!role_grants("flow_executor", Capability::FlowEdit));
    }
}
