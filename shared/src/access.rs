//! The vocabulary of who may do what: a member's [`Role`] in a company and a
//! grant's [`Level`] on one entity. Each lists exactly the values its
//! column's CHECK constraint allows (a test compares them with the schema);
//! which capabilities a role holds is the API's table (`authz`).

use crate::run::text_enum;

text_enum! {
    /// A member's role in a company (`memberships.roles`, an invitation's roles).
    Role {
        Admin => "admin",
        FlowEditor => "flow_editor",
        FlowExecutor => "flow_executor",
        AuditViewer => "audit_viewer",
        IntegrationManager => "integration_manager",
        AnalyticsViewer => "analytics_viewer",
        Viewer => "viewer",
        /// A member with no capability (what a new membership holds until an admin chooses).
        None => "none",
    }
}

text_enum! {
    /// How far a grant reaches on one flow, flow group, credential or secret;
    /// each level includes the ones before it.
    Level {
        View => "view",
        Execute => "execute",
        Edit => "edit",
    }
}

impl Level {
    /// The number SQL's `floq_access()` answers for this level (0 is no access).
    pub fn rank(self) -> i32 {
        match self {
            Level::View => 1,
            Level::Execute => 2,
            Level::Edit => 3,
        }
    }
}

impl PartialOrd for Level {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Level {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_include_the_ones_before_them() {
        assert!(Level::View < Level::Execute && Level::Execute < Level::Edit);
        assert_eq!(Level::ALL.iter().map(|l| l.rank()).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn roles_round_trip_through_text() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
        }
        assert!("owner".parse::<Role>().is_err());
    }
}
