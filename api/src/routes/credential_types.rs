//! `/api/v1/credential-types`: every credential type with the JSON Schema of
//! its `data`, for the console and clients to build forms from. The schemas
//! are the ones credentials are validated with (`floq_shared::secrets`);
//! secret fields are marked `"writeOnly": true`: they are stored encrypted
//! and never returned.

use axum::Json;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::authz::{Authorized, IntegrationRead};
use crate::error::ApiResult;
use crate::openapi::{AnyJson, ErrorBody};
use crate::state::AppState;
use floq_shared::secrets;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Every credential type.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct CredentialTypes {
    /// Each `{type, schema}`: the JSON Schema of its `data`, secret fields `"writeOnly": true`.
    items: Vec<AnyJson>,
}

/// The same for every company.
#[utoipa::path(get, operation_id = "credential_types_list", path = "/api/v1/credential-types", tag = "credentials",
    security(("api_key" = ["integration:read"]), ("session" = ["integration:read"])),
    responses((status = 200, description = "The credential types", body = CredentialTypes),
        (status = 403, description = "The role lacks `integration:read`", body = ErrorBody)))]
async fn list(_auth: Authorized<IntegrationRead>) -> ApiResult<Json<Value>> {
    let items: Vec<Value> = secrets::CREDENTIAL_TYPES
        .iter()
        .filter_map(|t| secrets::credential_schema(t).map(|schema| json!({"type": t, "schema": schema})))
        .collect();
    Ok(Json(json!({"items": items})))
}
