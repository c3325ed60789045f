//! Who may do what: the vocabulary (a member's [`Role`] in a company, a
//! grant's [`Subject`], [`Entity`] and [`Level`]; each lists exactly the
//! values its column's CHECK constraint allows), the one rule that turns what
//! a user holds on an entity into allow / forbidden / hidden ([`decide`]),
//! and the store of the `grants` table ([`grants`], re-exported here), which
//! also owns every `floq_access()` reading and the "does this grant target
//! exist in the company" lookups on other tables.
//!
//! It never decides which capabilities a role holds (the API's `authz`), and
//! never answers HTTP: the API turns a [`Verdict`] into `404` / `403`.

use crate::run::text_enum;

mod grants;
pub use grants::*;

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

impl Level {
    /// The level a `floq_access()` answer stands for; `None` for 0 (no access).
    pub fn from_rank(rank: i32) -> Option<Level> {
        Level::ALL.iter().copied().filter(|l| l.rank() <= rank).max()
    }
}

text_enum! {
    /// Who a grant is given to (`grants.subject_type`).
    Subject {
        User => "user",
        Group => "group",
    }
}

text_enum! {
    /// What a grant is on (`grants.entity_type`); a credential is an `integration`,
    /// a secret KV value a `secret`.
    Entity {
        Flow => "flow",
        FlowGroup => "flow_group",
        Integration => "integration",
        Secret => "secret",
    }
}

/// What a user holds on one entity, as the store read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The entity is not in the company (or is deleted).
    Missing,
    /// It exists; the strongest level the user holds on it, if any.
    Held(Option<Level>),
}

/// The answer to "may this caller act at this level?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Nothing to find: answered like another company's id, and not a denial.
    Missing,
    /// It exists but the caller holds nothing on it: answered like a missing
    /// entity (so ids do not leak), yet audited as a denial.
    Hidden,
    /// Visible, but below the level needed.
    Forbidden,
}

/// Admins reach every entity of their company, but only one that exists
/// there; anyone else needs `need` or more, and holding less than `view`
/// leaves the entity hidden.
pub fn decide(reach: Reach, admin: bool, need: Level) -> Verdict {
    match reach {
        Reach::Missing => Verdict::Missing,
        Reach::Held(_) if admin => Verdict::Allow,
        Reach::Held(Some(held)) if held >= need => Verdict::Allow,
        Reach::Held(Some(_)) => Verdict::Forbidden,
        Reach::Held(None) => Verdict::Hidden,
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
    fn ranks_name_their_levels() {
        assert_eq!(Level::from_rank(0), None);
        assert_eq!(Level::from_rank(-1), None);
        for level in Level::ALL {
            assert_eq!(Level::from_rank(level.rank()), Some(*level));
        }
    }

    #[test]
    fn a_level_at_or_above_the_need_allows() {
        for held in Level::ALL {
            for need in Level::ALL {
                let verdict = decide(Reach::Held(Some(*held)), false, *need);
                let expected = if held >= need {
                    Verdict::Allow
                } else {
                    Verdict::Forbidden
                };
                assert_eq!(verdict, expected, "{held} for {need}");
            }
        }
    }

    #[test]
    fn holding_nothing_hides_and_a_missing_entity_is_missing_even_for_admins() {
        for need in Level::ALL {
            assert_eq!(decide(Reach::Held(None), false, *need), Verdict::Hidden);
            assert_eq!(decide(Reach::Missing, false, *need), Verdict::Missing);
            assert_eq!(decide(Reach::Missing, true, *need), Verdict::Missing);
        }
    }

    #[test]
    fn admins_need_no_grant_on_what_exists() {
        for need in Level::ALL {
            assert_eq!(decide(Reach::Held(None), true, *need), Verdict::Allow);
            assert_eq!(decide(Reach::Held(Some(Level::View)), true, *need), Verdict::Allow);
        }
    }

    #[test]
    fn subjects_and_entities_spell_what_the_api_accepts() {
        assert_eq!(
            Subject::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            ["user", "group"]
        );
        assert_eq!(
            Entity::ALL.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            ["flow", "flow_group", "integration", "secret"]
        );
    }

    #[test]
    fn roles_round_trip_through_text() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
        }
        assert!("owner".parse::<Role>().is_err());
    }
}
