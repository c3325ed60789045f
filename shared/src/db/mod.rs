//! PostgreSQL access: the pool, migrations, and the one way to open a
//! transaction that touches tenant data.
//!
//! Every tenant-scoped transaction switches to `floq_app` (no `BYPASSRLS`) and
//! sets `app.company_id`, in the same round trip as `BEGIN`. Code outside this
//! module never issues `SET ROLE` or touches `app.company_id` itself.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

use crate::config::Config;

mod error;
pub use error::{Fault, StoreError, fake};

/// The pool every service holds.
pub type Pool = PgPool;

pub type Tx = Transaction<'static, Postgres>;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub async fn connect(config: &Config) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(config.database_url.expose())?.application_name("floq");
    PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(StoreError::from)
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it
/// migrates, so replicas starting together apply each migration once.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Opens a transaction scoped to one company, under row-level security.
pub async fn tenant_tx(pool: &PgPool, company_id: Uuid) -> Result<Tx, StoreError> {
    // A Uuid formats as 36 hex digits and dashes, so it is safe to inline; inlining
    // lets BEGIN, the role switch and the tenant travel in one simple-query round trip.
    pool.begin_with(AssertSqlSafe(format!(
        "BEGIN; SET LOCAL ROLE floq_app; SELECT set_config('app.company_id', '{company_id}', true)"
    )))
    .await
    .map_err(StoreError::from)
}

/// Opens a transaction under row-level security with no tenant yet: it sees no
/// tenant rows until [`set_tenant`] is called. Batched writers use it to serve
/// several companies in turn inside one commit.
pub async fn multi_tenant_tx(pool: &PgPool) -> Result<Tx, StoreError> {
    pool.begin_with("BEGIN; SET LOCAL ROLE floq_app")
        .await
        .map_err(StoreError::from)
}

/// Switches the tenant of a transaction opened by [`multi_tenant_tx`] or [`tenant_tx`].
pub async fn set_tenant(tx: &mut Tx, company_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("SELECT set_config('app.company_id', $1, true)")
        .bind(company_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A cross-tenant duty. Each is its own PostgreSQL role (migration 0022)
/// whose policies admit exactly that duty's rows, so a bug in one path can
/// reach only what that duty needs. None can read runs, steps, credentials
/// or KV except [`Duty::KeyRotation`] (credentials and KV, to re-encrypt them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duty {
    /// The scheduler's outbox sweep: any company's pending run messages.
    OutboxSweep,
    /// Batched audit appends for many companies (append only).
    AuditAppend,
    /// Sealing the audit hash chains.
    AuditSeal,
    /// Audit retention and trimming rows that are dead on their own clock.
    Retention,
    /// Finding due schedules (firing one is tenant work).
    CronDue,
    /// A webhook by its token (anonymous): keyed by [`Lookup::Hash`].
    WebhookLookup,
    /// A session by its cookie (anonymous) or by its id: keyed.
    SessionLookup,
    /// An identity by e-mail or id for sign-in and enrolment, read only: keyed.
    SignIn,
    /// A session for an identity whose password was checked: keyed by its id.
    SessionIssue,
    /// A password-reset link for an identity: keyed by its id.
    ResetIssue,
    /// Spending a mailed link (anonymous): keyed by the token, then the identity.
    Accounts,
    /// Re-encrypting every company's secrets (operator CLI).
    KeyRotation,
    /// Identity repair from the operator CLI.
    Operator,
    /// A worker's own heartbeat row (its lease).
    WorkerLease,
    /// The scheduler's reaper: reads leases and finds lost runs by id only.
    Reaper,
    /// Single sign-on (anonymous): a connection by id, a verified domain, a
    /// state by its hash, an identity by its subject's hash: keyed.
    Sso,
}

impl Duty {
    pub const ALL: [Duty; 16] = [
        Duty::OutboxSweep,
        Duty::AuditAppend,
        Duty::AuditSeal,
        Duty::Retention,
        Duty::CronDue,
        Duty::WebhookLookup,
        Duty::SessionLookup,
        Duty::SignIn,
        Duty::SessionIssue,
        Duty::ResetIssue,
        Duty::Accounts,
        Duty::KeyRotation,
        Duty::Operator,
        Duty::WorkerLease,
        Duty::Reaper,
        Duty::Sso,
    ];

    pub fn role(self) -> &'static str {
        match self {
            Duty::OutboxSweep => "floq_outbox",
            Duty::AuditAppend => "floq_audit_writer",
            Duty::AuditSeal => "floq_sealer",
            Duty::Retention => "floq_retention",
            Duty::CronDue => "floq_cron",
            Duty::WebhookLookup => "floq_webhook_lookup",
            Duty::SessionLookup => "floq_session_lookup",
            Duty::SignIn => "floq_signin",
            Duty::SessionIssue => "floq_session_issue",
            Duty::ResetIssue => "floq_reset_issue",
            Duty::Accounts => "floq_accounts",
            Duty::KeyRotation => "floq_key_rotation",
            Duty::Operator => "floq_operator",
            Duty::WorkerLease => "floq_lease",
            Duty::Reaper => "floq_reaper",
            Duty::Sso => "floq_sso",
        }
    }
}

/// What a keyed duty's transaction looks up; its role sees only matching rows.
#[derive(Clone, Copy, Debug)]
pub enum Lookup<'a> {
    /// A token's SHA-256.
    Hash(&'a [u8]),
    Id(Uuid),
    Email(&'a str),
    /// An e-mail domain (lower case).
    Domain(&'a str),
}

/// Opens a transaction as the duty's role (see [`Duty`]).
pub async fn duty_tx(pool: &PgPool, duty: Duty) -> Result<Tx, StoreError> {
    pool.begin_with(AssertSqlSafe(format!("BEGIN; SET LOCAL ROLE {}", duty.role())))
        .await
        .map_err(StoreError::from)
}

/// Opens a keyed duty's transaction looking up `key`.
pub async fn lookup_tx(pool: &PgPool, duty: Duty, key: Lookup<'_>) -> Result<Tx, StoreError> {
    match key {
        // Hex digits and a hyphenated uuid are safe to inline, which keeps
        // BEGIN, the role and the key in one round trip on the anonymous paths.
        Lookup::Hash(hash) => pool
            .begin_with(AssertSqlSafe(format!(
                "BEGIN; SET LOCAL ROLE {}; SELECT set_config('floq.lookup', '{}', true)",
                duty.role(),
                hex::encode(hash)
            )))
            .await
            .map_err(StoreError::from),
        Lookup::Id(id) => pool
            .begin_with(AssertSqlSafe(format!(
                "BEGIN; SET LOCAL ROLE {}; SELECT set_config('floq.lookup', '{id}', true)",
                duty.role()
            )))
            .await
            .map_err(StoreError::from),
        Lookup::Email(_) | Lookup::Domain(_) => {
            let mut tx = duty_tx(pool, duty).await?;
            set_lookup(&mut tx, key).await?;
            Ok(tx)
        }
    }
}

/// Changes what a keyed duty's transaction looks up (a link's identity once
/// its token is spent, say).
pub async fn set_lookup(tx: &mut Tx, key: Lookup<'_>) -> Result<(), StoreError> {
    let value = match key {
        Lookup::Hash(hash) => hex::encode(hash),
        Lookup::Id(id) => id.to_string(),
        // Policies compare lower(email) with lower(floq_lookup()).
        Lookup::Email(email) => email.trim().to_string(),
        Lookup::Domain(domain) => domain.trim().to_ascii_lowercase(),
    };
    sqlx::query("SELECT set_config('floq.lookup', $1, true)")
        .bind(value)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Switches a duty's transaction to tenant work as `floq_app` for one company
/// (accepting an invitation writes the membership and revokes API keys so).
pub async fn become_tenant(tx: &mut Tx, company_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("SET LOCAL ROLE floq_app").execute(&mut **tx).await?;
    set_tenant(tx, company_id).await
}

/// Switches a tenant (or duty) transaction to a keyed duty looking up `key`
/// (single sign-on binds the identity it just created as `floq_sso`).
pub async fn become_duty(tx: &mut Tx, duty: Duty, key: Lookup<'_>) -> Result<(), StoreError> {
    sqlx::query(AssertSqlSafe(format!("SET LOCAL ROLE {}", duty.role())))
        .execute(&mut **tx)
        .await?;
    set_lookup(tx, key).await
}

/// Commits a transaction opened here.
pub async fn commit(tx: Tx) -> Result<(), StoreError> {
    Ok(tx.commit().await?)
}
