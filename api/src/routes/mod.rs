//! Routes, one module per resource.

use axum::Router;

use crate::state::AppState;

mod api_keys;
mod auth;
mod flows;
mod groups;
mod runs;
mod users;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(auth::router())
        .merge(api_keys::router())
        .merge(users::router())
        .merge(groups::router())
        .merge(flows::router())
        .merge(runs::router())
}
