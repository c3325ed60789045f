//! The CHECK constraints on status, trigger, role and grant-level columns and the Rust enums
//! that name the same values must list exactly the same ones.

use floq_shared::access::{Level, Role};
use floq_shared::run::{RunStatus, StepStatus, Trigger};
use floq_tests::TestApp;

/// The quoted values of a `CHECK (col IN (...))` constraint, in order.
async fn allowed(app: &TestApp, table: &str, constraint: &str) -> Vec<String> {
    let definition: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = $1::regclass AND conname = $2",
    )
    .bind(table)
    .bind(constraint)
    .fetch_one(&app.pool)
    .await
    .unwrap_or_else(|e| panic!("{table}.{constraint}: {e}"));
    definition.split('\'').skip(1).step_by(2).map(str::to_string).collect()
}

fn names<T: Copy>(all: &[T], text: fn(T) -> &'static str) -> Vec<String> {
    all.iter().map(|v| text(*v).to_string()).collect()
}

#[tokio::test]
async fn every_value_the_schema_allows_is_a_variant_and_no_more() {
    let app = TestApp::spawn_with(floq_tests::Options {
        worker: false,
        scheduler: false,
    })
    .await;
    assert_eq!(
        allowed(&app, "runs", "runs_status_check").await,
        names(RunStatus::ALL, RunStatus::as_str)
    );
    assert_eq!(
        allowed(&app, "run_steps", "run_steps_status_check").await,
        names(StepStatus::ALL, StepStatus::as_str)
    );
    assert_eq!(
        allowed(&app, "runs", "runs_trigger_check").await,
        names(Trigger::ALL, Trigger::as_str)
    );
    assert_eq!(
        allowed(&app, "grants", "grants_level_check").await,
        names(Level::ALL, Level::as_str)
    );
    for (table, constraint) in [
        ("memberships", "memberships_roles_check"),
        ("account_tokens", "account_tokens_roles_check"),
    ] {
        assert_eq!(
            allowed(&app, table, constraint).await,
            names(Role::ALL, Role::as_str),
            "{table}"
        );
    }
    app.teardown().await;
}
