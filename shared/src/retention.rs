//! Retention settings: what a company keeps (the `company_settings` table,
//! read and written by its admin in a tenant transaction), the defaults the
//! API shows and the scheduler enforces when the admin has not said
//! otherwise, the retention duty's scan of every company with its settings,
//! and the cutoffs a pass derives from them. Nothing here deletes: each
//! table's trim lives with the module that owns the table.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::db::{StoreError, Tx};
use crate::ids::CompanyId;

pub const DEFAULT_AUDIT_MAX_AGE_DAYS: i32 = 365;
pub const DEFAULT_AUDIT_MAX_ENTRIES: i64 = 10_000_000;
pub const DEFAULT_RUNS_MAX_AGE_DAYS: i32 = 30;

/// How long a company keeps audit entries and runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Settings {
    pub audit_max_age_days: i32,
    pub audit_max_entries: i64,
    pub runs_max_age_days: i32,
}

impl Settings {
    /// What a company keeps until its admin says otherwise.
    pub const DEFAULT: Settings = Settings {
        audit_max_age_days: DEFAULT_AUDIT_MAX_AGE_DAYS,
        audit_max_entries: DEFAULT_AUDIT_MAX_ENTRIES,
        runs_max_age_days: DEFAULT_RUNS_MAX_AGE_DAYS,
    };
}

/// The settings in force for the transaction's company: its own, or the defaults.
pub async fn current(tx: &mut Tx, company_id: CompanyId) -> Result<Settings, StoreError> {
    let stored: Option<Settings> = sqlx::query_as(
        "SELECT audit_max_age_days, audit_max_entries, runs_max_age_days FROM company_settings
          WHERE company_id = $1",
    )
    .bind(company_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(stored.unwrap_or(Settings::DEFAULT))
}

pub async fn save(tx: &mut Tx, company_id: CompanyId, settings: &Settings) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO company_settings (company_id, audit_max_age_days, audit_max_entries, runs_max_age_days)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (company_id) DO UPDATE SET audit_max_age_days = excluded.audit_max_age_days,
             audit_max_entries = excluded.audit_max_entries, runs_max_age_days = excluded.runs_max_age_days,
             updated_at = now()",
    )
    .bind(company_id)
    .bind(settings.audit_max_age_days)
    .bind(settings.audit_max_entries)
    .bind(settings.runs_max_age_days)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A company and its settings, absent where it never set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Company {
    pub id: CompanyId,
    pub audit_max_age_days: Option<i32>,
    pub audit_max_entries: Option<i64>,
    pub runs_max_age_days: Option<i32>,
}

/// Every company with whatever settings it stored (the retention duty).
pub async fn companies(tx: &mut Tx) -> Result<Vec<Company>, StoreError> {
    sqlx::query_as(
        "SELECT c.id, s.audit_max_age_days, s.audit_max_entries, s.runs_max_age_days
           FROM companies c LEFT JOIN company_settings s ON s.company_id = c.id",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from)
}

/// What one pass keeps of a company.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Audit entries before this go.
    pub audit_cutoff: DateTime<Utc>,
    /// Entries beyond the newest this many go.
    pub audit_keep: i64,
    /// Finished runs queued before this go.
    pub runs_cutoff: DateTime<Utc>,
}

impl Company {
    /// The cutoffs in force at `now`, defaults filling what the company never set.
    pub fn plan(&self, now: DateTime<Utc>) -> Plan {
        let audit_days = self.audit_max_age_days.unwrap_or(DEFAULT_AUDIT_MAX_AGE_DAYS);
        let run_days = self.runs_max_age_days.unwrap_or(DEFAULT_RUNS_MAX_AGE_DAYS);
        Plan {
            audit_cutoff: now - Duration::days(audit_days.into()),
            audit_keep: self.audit_max_entries.unwrap_or(DEFAULT_AUDIT_MAX_ENTRIES),
            runs_cutoff: now - Duration::days(run_days.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_pass_cuts_where_the_company_said_and_at_the_defaults_elsewhere() {
        let now = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().to_utc();
        let never_set = Company {
            id: CompanyId(Uuid::now_v7()),
            audit_max_age_days: None,
            audit_max_entries: None,
            runs_max_age_days: None,
        };
        assert_eq!(
            never_set.plan(now),
            Plan {
                audit_cutoff: now - Duration::days(365),
                audit_keep: 10_000_000,
                runs_cutoff: now - Duration::days(30),
            }
        );
        let set = Company {
            audit_max_age_days: Some(90),
            audit_max_entries: Some(1_000),
            runs_max_age_days: Some(7),
            ..never_set
        };
        let plan = set.plan(now);
        assert_eq!(plan.audit_cutoff.to_rfc3339(), "2025-12-01T12:00:00+00:00");
        assert_eq!(plan.audit_keep, 1_000);
        assert_eq!(plan.runs_cutoff.to_rfc3339(), "2026-02-22T12:00:00+00:00");
        // A company that set only some values gets the defaults for the rest.
        let partly = Company {
            audit_max_entries: Some(5),
            ..never_set
        };
        assert_eq!(
            partly.plan(now),
            Plan {
                audit_keep: 5,
                ..never_set.plan(now)
            }
        );
    }
}
