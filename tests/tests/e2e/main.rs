//! End-to-end tests: api + worker + scheduler in-process, real PostgreSQL
//! and RabbitMQ, one database and queue prefix per test.

mod accounts;
mod admin_cli;
mod audit;
mod audit_filters;
mod backpressure;
mod cancel;
mod checkpoints;
mod db_errors;
mod duties;
mod egress;
mod fairness;
mod flows;
mod grants;
mod identity;
mod limits;
mod mcp;
mod nodes;
mod openapi;
mod paging;
mod poison;
mod reach;
mod readme;
mod reaping;
mod resilience;
mod retention;
mod retries;
mod runs;
mod schedules;
mod secrets;
mod tenancy;
mod trimming;
mod vocabulary;
mod webhook_safety;
mod webhook_secrets;
mod webhooks;
