//! `/api/v1/node-types`: every node type with the JSON Schema of its params
//! and its output ports, for editors and clients to build forms from. Flows
//! are validated against the same schemas when saved.

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::state::AppState;
use floq_shared::flow::catalog;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/node-types", get(list))
}

/// Any signed-in caller: the catalog is the same for every company.
async fn list(_caller: Principal) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"items": catalog::all()})))
}
