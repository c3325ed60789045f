//! What a company keeps when its admin has not said otherwise: the API shows
//! these defaults and the scheduler enforces them.

pub const DEFAULT_AUDIT_MAX_AGE_DAYS: i32 = 365;
pub const DEFAULT_AUDIT_MAX_ENTRIES: i64 = 10_000_000;
pub const DEFAULT_RUNS_MAX_AGE_DAYS: i32 = 30;
