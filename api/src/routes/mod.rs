//! Routes, one module per resource. Each module's `router()` registers its
//! handlers with `routes!(…)`: the route and its OpenAPI operation come from
//! the handler's one `#[utoipa::path]` annotation (see [`crate::openapi`]).

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

mod api_keys;
mod audit;
mod auth;
mod credential_types;
mod credentials;
mod flow_groups;
mod flow_versions;
mod flows;
mod grants;
mod groups;
mod kv;
mod mcp;
mod mcp_tools;
mod node_types;
pub(crate) mod oauth;
mod retries;
mod run_events;
mod runs;
mod schedules;
mod settings;
mod sso;
mod sso_login;
mod users;
mod webhooks;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(crate::openapi::serve))
        .merge(auth::router())
        .merge(api_keys::router())
        .merge(users::router())
        .merge(groups::router())
        .merge(grants::router())
        .merge(flow_groups::router())
        .merge(flows::router())
        .merge(flow_versions::router())
        .merge(runs::router())
        .merge(run_events::router())
        .merge(retries::router())
        .merge(audit::router())
        .merge(credentials::router())
        .merge(credential_types::router())
        .merge(kv::router())
        .merge(oauth::router())
        .merge(node_types::router())
        .merge(settings::router())
        .merge(sso::router())
        .merge(sso_login::router())
        .merge(schedules::router())
        .merge(webhooks::router())
        .merge(mcp_tools::router())
        .merge(mcp::router())
}
