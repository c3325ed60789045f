//! Code shared by floq's three services: configuration, database access with
//! tenant-scoped transactions, the flow model, queue topology and envelopes,
//! and telemetry.

pub mod access;
pub mod account_tokens;
pub mod api_keys;
pub mod audit;
pub mod backlog;
pub mod batch;
pub mod config;
pub mod credentials;
pub mod cron;
pub mod crypto;
pub mod db;
pub mod egress;
pub mod email;
#[cfg(feature = "failpoints")]
pub mod failpoint;
pub mod flow;
pub mod flow_groups;
pub mod flows;
pub mod groups;
pub mod idempotency;
pub mod ids;
pub mod kv;
pub mod leader;
pub mod login_attempts;
pub mod mail;
pub mod mcp_tools;
pub mod oauth;
pub mod ops;
pub mod outbox;
pub mod parking;
pub mod pgtext;
pub mod plugin;
pub mod queue;
pub mod replies;
pub mod retention;
pub mod retry;
pub mod run;
pub mod runs;
pub mod schedules;
pub mod script;
pub mod secrets;
pub mod sessions;
pub mod signatures;
pub mod sso;
pub mod telemetry;
pub mod users;
pub mod webhooks;
pub mod workers;

pub use config::{AuditSink, Config, ConfigError, Secret};
