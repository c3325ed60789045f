//! Routes, one module per resource.

use axum::Router;

use crate::state::AppState;

mod flows;
mod runs;

pub fn router() -> Router<AppState> {
    Router::new().merge(flows::router()).merge(runs::router())
}
