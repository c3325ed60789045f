//! End-to-end tests: api + worker + scheduler in-process, real PostgreSQL
//! and RabbitMQ, one database and queue prefix per test.

mod audit;
mod flows;
mod grants;
mod identity;
mod limits;
mod nodes;
mod resilience;
mod retention;
mod runs;
mod schedules;
mod secrets;
mod tenancy;
mod webhooks;
