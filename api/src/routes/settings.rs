//! `/api/v1/settings/retention`: how long the company keeps audit entries
//! and runs. Admin only. The scheduler enforces it; minimums keep an admin
//! (or a stolen admin key) from erasing the audit trail.

use axum::Json;
use axum::extract::State;
use floq_shared::db::StoreError;
use serde::{Deserialize, Serialize};
use validator::{Validate, ValidationError, ValidationErrors};

use crate::audit;
use crate::authz::{Authorized, SettingsManage};
use crate::error::ApiResult;
use crate::extract::{ValidJson, invalid_body};
use crate::state::AppState;
use floq_shared::{Config, db, retention};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, update))
}

/// A company's retention settings, within the ranges the operator allows.
// Floors below the ranges shown are the operator's (`FLOQ_AUDIT_MIN_AGE_DAYS`, `FLOQ_AUDIT_MIN_ENTRIES`).
#[derive(Clone, Debug, Deserialize, Serialize, Validate, sqlx::FromRow, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[validate(range(min = 1, max = 36_500))]
    #[schema(minimum = 1, maximum = 36_500)]
    audit_max_age_days: i32,
    #[validate(range(min = 1))]
    #[schema(minimum = 1)]
    audit_max_entries: i64,
    #[validate(range(min = 1, max = 36_500))]
    #[schema(minimum = 1, maximum = 36_500)]
    runs_max_age_days: i32,
}

impl Retention {
    /// What a company keeps until its admin says otherwise.
    const DEFAULT: Retention = Retention {
        audit_max_age_days: retention::DEFAULT_AUDIT_MAX_AGE_DAYS,
        audit_max_entries: retention::DEFAULT_AUDIT_MAX_ENTRIES,
        runs_max_age_days: retention::DEFAULT_RUNS_MAX_AGE_DAYS,
    };

    /// The floors an operator configured (`FLOQ_AUDIT_MIN_AGE_DAYS`, `FLOQ_AUDIT_MIN_ENTRIES`).
    fn check_minimums(&self, config: &Config) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if i64::from(self.audit_max_age_days) < i64::from(config.audit_min_age_days) {
            let message = format!("must be at least {} days", config.audit_min_age_days);
            errors.add(
                "audit_max_age_days",
                ValidationError::new("minimum").with_message(message.into()),
            );
        }
        if u64::try_from(self.audit_max_entries).unwrap_or(0) < config.audit_min_entries {
            let message = format!("must be at least {} entries", config.audit_min_entries);
            errors.add(
                "audit_max_entries",
                ValidationError::new("minimum").with_message(message.into()),
            );
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

async fn current(tx: &mut db::Tx) -> Result<Retention, StoreError> {
    let stored: Option<Retention> =
        sqlx::query_as("SELECT audit_max_age_days, audit_max_entries, runs_max_age_days FROM company_settings")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(stored.unwrap_or(Retention::DEFAULT))
}

/// How long the company keeps audit entries and runs.
#[utoipa::path(get, operation_id = "settings_show", path = "/api/v1/settings/retention", tag = "settings",
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "The retention in force", body = Retention)))]
async fn show(State(state): State<AppState>, auth: Authorized<SettingsManage>) -> ApiResult<Json<Retention>> {
    let mut tx = db::tenant_tx(&state.pool, auth.principal.company_id).await?;
    let retention = current(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(retention))
}

#[utoipa::path(put, operation_id = "settings_update", path = "/api/v1/settings/retention", tag = "settings", request_body = Retention,
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "The retention now in force", body = Retention)))]
async fn update(
    State(state): State<AppState>,
    auth: Authorized<SettingsManage>,
    ValidJson(body): ValidJson<Retention>,
) -> ApiResult<Json<Retention>> {
    body.check_minimums(&state.config).map_err(invalid_body)?;
    let company_id = auth.principal.company_id;
    let mut tx = db::tenant_tx(&state.pool, company_id).await?;
    let before = current(&mut tx).await?;
    sqlx::query(
        "INSERT INTO company_settings (company_id, audit_max_age_days, audit_max_entries, runs_max_age_days)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (company_id) DO UPDATE SET audit_max_age_days = excluded.audit_max_age_days,
             audit_max_entries = excluded.audit_max_entries, runs_max_age_days = excluded.runs_max_age_days,
             updated_at = now()",
    )
    .bind(company_id)
    .bind(body.audit_max_age_days)
    .bind(body.audit_max_entries)
    .bind(body.runs_max_age_days)
    .execute(&mut *tx)
    .await?;
    let entry = auth
        .principal
        .audit("settings.retention_update", "settings", "retention");
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&body))]).await?;
    tx.commit().await?;
    Ok(Json(body))
}
