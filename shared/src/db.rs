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

pub type Tx = Transaction<'static, Postgres>;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub async fn connect(config: &Config) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(config.database_url.expose())?.application_name("floq");
    PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it
/// migrates, so replicas starting together apply each migration once.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Opens a transaction scoped to one company, under row-level security.
pub async fn tenant_tx(pool: &PgPool, company_id: Uuid) -> Result<Tx, sqlx::Error> {
    // A Uuid formats as 36 hex digits and dashes, so it is safe to inline; inlining
    // lets BEGIN, the role switch and the tenant travel in one simple-query round trip.
    pool.begin_with(AssertSqlSafe(format!(
        "BEGIN; SET LOCAL ROLE floq_app; SELECT set_config('app.company_id', '{company_id}', true)"
    )))
    .await
}

/// Opens a transaction under row-level security with no tenant yet: it sees no
/// tenant rows until [`set_tenant`] is called. Batched writers use it to serve
/// several companies in turn inside one commit.
pub async fn multi_tenant_tx(pool: &PgPool) -> Result<Tx, sqlx::Error> {
    pool.begin_with("BEGIN; SET LOCAL ROLE floq_app").await
}

/// Switches the tenant of a transaction opened by [`multi_tenant_tx`] or [`tenant_tx`].
pub async fn set_tenant(tx: &mut Tx, company_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('app.company_id', $1, true)")
        .bind(company_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Opens a transaction as `floq_system`, which sees only what its explicit
/// cross-tenant policies allow (the scheduler's duties).
pub async fn system_tx(pool: &PgPool) -> Result<Tx, sqlx::Error> {
    pool.begin_with("BEGIN; SET LOCAL ROLE floq_system").await
}

/// The request field a unique constraint (or unique index) protects, for a
/// `409` that names it. Constraints not listed protect nothing a client
/// chooses (random tokens, internal keys) and name no field.
pub fn unique_field(constraint: &str) -> Option<&'static str> {
    Some(match constraint {
        "users_email_key" => "email",
        "groups_company_id_name_key" | "flow_groups_company_id_name_key" | "credentials_company_id_name_key" => "name",
        "kv_pkey" => "key",
        "memberships_pkey" | "group_members_pkey" => "user_id",
        "idempotency_keys_pkey" => "Idempotency-Key",
        c if c.starts_with("grants_company_id_subject_type") => "grant",
        _ => return None,
    })
}
