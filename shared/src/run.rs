//! The vocabulary of runs and their steps, as types: what the `runs.status`,
//! `runs.trigger` and `run_steps.status` columns may hold. Each enum lists
//! exactly the values its column's CHECK constraint allows (a test compares
//! them against the live schema), so SQL and Rust cannot drift apart.

/// Declares a text enum whose values are a column's CHECK list: `ALL`,
/// `as_str`, `Display`, `FromStr`, serde and sqlx as snake_case text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type)]
        #[serde(rename_all = "snake_case")]
        #[sqlx(type_name = "text", rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in the order the schema lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::run::UnknownValue;
            fn from_str(s: &str) -> Result<Self, $crate::run::UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::run::UnknownValue {
                        kind: stringify!($name),
                        allowed: &[$($text),+],
                    }),
                }
            }
        }
    };
}

pub(crate) use text_enum;

text_enum! {
    /// Where a run is in its life. `queued` and `running` are the only
    /// states a run leaves; the others are final.
    RunStatus {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

text_enum! {
    /// How one node of a run ended (nodes on a branch not taken are skipped).
    StepStatus {
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
        /// Running when its run was cancelled or passed its deadline, and interrupted.
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// What started a run.
    Trigger {
        Api => "api",
        Webhook => "webhook",
        Cron => "cron",
        /// An MCP client's `tools/call` (docs/mcp.md).
        Mcp => "mcp",
    }
}

/// A value none of an enum's variants spells; names the ones allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {kind}: expected one of {}", allowed.join(", "))]
pub struct UnknownValue {
    pub kind: &'static str,
    pub allowed: &'static [&'static str],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_through_text_and_json() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in StepStatus::ALL {
            assert_eq!(s.as_str().parse::<StepStatus>(), Ok(*s));
        }
        for t in Trigger::ALL {
            assert_eq!(t.as_str().parse::<Trigger>(), Ok(*t));
        }
        let err = "done".parse::<RunStatus>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a RunStatus: expected one of queued, running, succeeded, failed, cancelled"
        );
    }

    #[test]
    fn only_queued_and_running_are_unfinished() {
        let unfinished: Vec<_> = RunStatus::ALL.iter().filter(|s| !s.is_final()).collect();
        assert_eq!(unfinished, [&RunStatus::Queued, &RunStatus::Running]);
    }
}
