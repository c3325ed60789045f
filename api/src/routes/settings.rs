//! `/api/v1/settings/retention`: how long the company keeps audit entries
//! and runs. Admin only. The scheduler enforces it; minimums keep an admin
//! (or a stolen admin key) from erasing the audit trail.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use validator::{Validate, ValidationError, ValidationErrors};

use crate::audit;
use crate::authz::{Authorized, SettingsManage};
use crate::error::ApiResult;
use crate::extract::{ValidJson, invalid_body};
use crate::state::AppState;
use floq_shared::ids::CompanyId;
use floq_shared::{Config, db, retention};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, update))
}

/// A company's retention settings, within the ranges the operator allows.
// Floors below the ranges shown are the operator's (`FLOQ_AUDIT_MIN_AGE_DAYS`, `FLOQ_AUDIT_MIN_ENTRIES`).
#[derive(Clone, Debug, Deserialize, Serialize, Validate, ToSchema)]
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

impl From<retention::Settings> for Retention {
    fn from(s: retention::Settings) -> Self {
        Retention {
            audit_max_age_days: s.audit_max_age_days,
            audit_max_entries: s.audit_max_entries,
            runs_max_age_days: s.runs_max_age_days,
        }
    }
}

impl From<&Retention> for retention::Settings {
    fn from(r: &Retention) -> Self {
        retention::Settings {
            audit_max_age_days: r.audit_max_age_days,
            audit_max_entries: r.audit_max_entries,
            runs_max_age_days: r.runs_max_age_days,
        }
    }
}

impl Retention {
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

/// How long the company keeps audit entries and runs.
#[utoipa::path(get, operation_id = "settings_show", path = "/api/v1/settings/retention", tag = "settings",
    security(("api_key" = ["settings:manage"]), ("session" = ["settings:manage"])),
    responses((status = 200, description = "The retention in force", body = Retention)))]
async fn show(State(state): State<AppState>, auth: Authorized<SettingsManage>) -> ApiResult<Json<Retention>> {
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let current = retention::current(&mut tx, company_id).await?;
    db::commit(tx).await?;
    Ok(Json(current.into()))
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
    let company_id = CompanyId(auth.principal.company_id);
    let mut tx = db::tenant_tx(&state.pool, company_id.0).await?;
    let before = Retention::from(retention::current(&mut tx, company_id).await?);
    retention::save(&mut tx, company_id, &(&body).into()).await?;
    let entry = auth
        .principal
        .audit("settings.retention_update", "settings", "retention");
    audit::record(&mut tx, &[entry.change(Some(&before), Some(&body))]).await?;
    db::commit(tx).await?;
    Ok(Json(body))
}
