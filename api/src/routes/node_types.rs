//! `/api/v1/node-types`: every node type (the built-ins and the enabled plugins') with the JSON Schema of its params
//! and its output ports, for editors and clients to build forms from. Flows
//! are validated against the same schemas when saved.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::authz::Caller;
use crate::error::ApiResult;
use crate::openapi::AnyJson;
use crate::state::AppState;

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

/// Any signed-in caller: the built-in types and those the enabled plugins add, the same for every company.
#[utoipa::path(get, operation_id = "node_types_list", path = "/api/v1/node-types", tag = "node-types",
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "The node catalog", body = NodeTypes)))]
async fn list(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"items": state.plugins.table().all()})))
}
