//! `/api/v1/node-types`: every node type with the JSON Schema of its params
//! and its output ports, for editors and clients to build forms from. Flows
//! are validated against the same schemas when saved.

use axum::Json;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::openapi::AnyJson;
use crate::state::AppState;
use floq_shared::flow::catalog;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Every node type.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation of the json! answer
struct NodeTypes {
    /// Each with its name, the JSON Schema of its params and its output ports.
    items: Vec<AnyJson>,
}

/// Any signed-in caller: the catalog is the same for every company.
#[utoipa::path(get, operation_id = "node_types_list", path = "/api/v1/node-types", tag = "node-types",
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "The node catalog", body = NodeTypes)))]
async fn list(_caller: Principal) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"items": catalog::all()})))
}
