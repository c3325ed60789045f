//! Roles and capabilities: the one table that says which role may do what.
//! Handlers declare the capability they need in their signature
//! (`Authorized<FlowEdit>`), so none can be reached without the check.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    FlowRead,
    FlowEdit,
    FlowExecute,
    RunRead,
    UserManage,
    AccessManage,
    AuditRead,
    SettingsManage,
}

impl Capability {
    pub const ALL: [Capability; 8] = [
        Capability::FlowRead,
        Capability::FlowEdit,
        Capability::FlowExecute,
        Capability::RunRead,
        Capability::UserManage,
        Capability::AccessManage,
        Capability::AuditRead,
        Capability::SettingsManage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::FlowRead => "flow:read",
            Capability::FlowEdit => "flow:edit",
            Capability::FlowExecute => "flow:execute",
            Capability::RunRead => "run:read",
            Capability::UserManage => "user:manage",
            Capability::AccessManage => "access:manage",
            Capability::AuditRead => "audit:read",
            Capability::SettingsManage => "settings:manage",
        }
    }
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
        "flow_editor" => matches!(cap, FlowRead | FlowEdit | FlowExecute | RunRead),
        "flow_executor" => matches!(cap, FlowRead | FlowExecute | RunRead),
        "viewer" | "analytics_viewer" => matches!(cap, FlowRead | RunRead),
        "audit_viewer" => matches!(cap, AuditRead),
        _ => false,
    }
}

pub trait Cap: Send + Sync + 'static {
    const CAP: Capability;
}

macro_rules! capabilities {
    ($($name:ident),*) => {$(
        pub struct $name;
        impl Cap for $name {
            const CAP: Capability = Capability::$name;
        }
    )*};
}
capabilities!(
    FlowRead,
    FlowEdit,
    FlowExecute,
    RunRead,
    UserManage,
    AccessManage,
    AuditRead,
    SettingsManage
);

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
