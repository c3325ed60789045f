//! Every API endpoint and what guards it. `identity::every_route_is_in_the_endpoint_table`
//! fails when a route is added without an entry here, so the permission tests
//! (which iterate this table) cannot forget an endpoint.

use floq_api::authz::Capability;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Guard {
    /// No credential needed (signing in).
    Public,
    /// Any authenticated caller; what they reach is limited by ownership.
    Authenticated,
    /// A role holding this capability.
    Role(Capability),
}

/// (method, path with `{placeholders}` naming test fixtures, guard).
pub const ENDPOINTS: &[(&str, &str, Guard)] = &[
    ("POST", "/api/v1/auth/login", Guard::Public),
    // The mailed token in the body is the credential.
    ("POST", "/api/v1/auth/password-reset", Guard::Public),
    ("POST", "/api/v1/auth/accept", Guard::Public),
    // The token in the path is the webhook's credential.
    ("GET", "/hooks/{hook}", Guard::Public),
    ("POST", "/hooks/{hook}", Guard::Public),
    ("PUT", "/hooks/{hook}", Guard::Public),
    ("POST", "/api/v1/auth/logout", Guard::Authenticated),
    ("GET", "/api/v1/auth/me", Guard::Authenticated),
    ("POST", "/api/v1/auth/switch-company", Guard::Authenticated),
    ("GET", "/api/v1/api-keys", Guard::Authenticated),
    ("POST", "/api/v1/api-keys", Guard::Authenticated),
    ("DELETE", "/api/v1/api-keys/{key}", Guard::Authenticated),
    ("GET", "/api/v1/users", Guard::Role(Capability::UserManage)),
    ("POST", "/api/v1/users", Guard::Role(Capability::UserManage)),
    ("GET", "/api/v1/users/{user}", Guard::Role(Capability::UserManage)),
    ("PATCH", "/api/v1/users/{user}", Guard::Role(Capability::UserManage)),
    ("DELETE", "/api/v1/users/{user}", Guard::Role(Capability::UserManage)),
    ("GET", "/api/v1/invitations", Guard::Role(Capability::UserManage)),
    (
        "DELETE",
        "/api/v1/invitations/{invitation}",
        Guard::Role(Capability::UserManage),
    ),
    ("GET", "/api/v1/groups", Guard::Role(Capability::UserManage)),
    ("POST", "/api/v1/groups", Guard::Role(Capability::UserManage)),
    (
        "POST",
        "/api/v1/groups/{group}/members/{user}",
        Guard::Role(Capability::UserManage),
    ),
    (
        "DELETE",
        "/api/v1/groups/{group}/members/{user}",
        Guard::Role(Capability::UserManage),
    ),
    ("GET", "/api/v1/grants", Guard::Role(Capability::AccessManage)),
    ("POST", "/api/v1/grants", Guard::Role(Capability::AccessManage)),
    (
        "DELETE",
        "/api/v1/grants/{grant}",
        Guard::Role(Capability::AccessManage),
    ),
    ("GET", "/api/v1/flow-groups", Guard::Role(Capability::FlowRead)),
    ("POST", "/api/v1/flow-groups", Guard::Role(Capability::FlowEdit)),
    ("GET", "/api/v1/flow-groups/{folder}", Guard::Role(Capability::FlowRead)),
    ("PUT", "/api/v1/flow-groups/{folder}", Guard::Role(Capability::FlowEdit)),
    (
        "DELETE",
        "/api/v1/flow-groups/{folder}",
        Guard::Role(Capability::FlowEdit),
    ),
    ("GET", "/api/v1/flows", Guard::Role(Capability::FlowRead)),
    ("POST", "/api/v1/flows", Guard::Role(Capability::FlowEdit)),
    ("GET", "/api/v1/flows/{flow}", Guard::Role(Capability::FlowRead)),
    ("PUT", "/api/v1/flows/{flow}", Guard::Role(Capability::FlowEdit)),
    ("DELETE", "/api/v1/flows/{flow}", Guard::Role(Capability::FlowEdit)),
    ("POST", "/api/v1/flows/{flow}/deploy", Guard::Role(Capability::FlowEdit)),
    (
        "POST",
        "/api/v1/flows/{flow}/runs",
        Guard::Role(Capability::FlowExecute),
    ),
    ("GET", "/api/v1/runs", Guard::Role(Capability::RunRead)),
    ("GET", "/api/v1/runs/{run}", Guard::Role(Capability::RunRead)),
    ("GET", "/api/v1/node-types", Guard::Authenticated),
    (
        "GET",
        "/api/v1/flows/{flow}/schedules",
        Guard::Role(Capability::FlowRead),
    ),
    (
        "POST",
        "/api/v1/flows/{flow}/schedules",
        Guard::Role(Capability::FlowEdit),
    ),
    (
        "DELETE",
        "/api/v1/flows/{flow}/schedules/{schedule}",
        Guard::Role(Capability::FlowEdit),
    ),
    ("GET", "/api/v1/flows/{flow}/webhook", Guard::Role(Capability::FlowEdit)),
    ("PUT", "/api/v1/flows/{flow}/webhook", Guard::Role(Capability::FlowEdit)),
    (
        "DELETE",
        "/api/v1/flows/{flow}/webhook",
        Guard::Role(Capability::FlowEdit),
    ),
    (
        "POST",
        "/api/v1/flows/{flow}/webhook/rotate",
        Guard::Role(Capability::FlowEdit),
    ),
    ("GET", "/api/v1/credentials", Guard::Role(Capability::IntegrationRead)),
    (
        "POST",
        "/api/v1/credentials",
        Guard::Role(Capability::IntegrationManage),
    ),
    (
        "GET",
        "/api/v1/credentials/{credential}",
        Guard::Role(Capability::IntegrationRead),
    ),
    (
        "PUT",
        "/api/v1/credentials/{credential}",
        Guard::Role(Capability::IntegrationManage),
    ),
    (
        "DELETE",
        "/api/v1/credentials/{credential}",
        Guard::Role(Capability::IntegrationManage),
    ),
    ("GET", "/api/v1/kv", Guard::Role(Capability::KvRead)),
    ("GET", "/api/v1/kv/{kv}", Guard::Role(Capability::KvRead)),
    ("PUT", "/api/v1/kv/{kv}", Guard::Role(Capability::KvWrite)),
    ("DELETE", "/api/v1/kv/{kv}", Guard::Role(Capability::KvWrite)),
    ("GET", "/api/v1/audit", Guard::Role(Capability::AuditRead)),
    ("GET", "/api/v1/audit/verify", Guard::Role(Capability::AuditRead)),
    ("GET", "/api/v1/audit/export", Guard::Role(Capability::AuditRead)),
    (
        "GET",
        "/api/v1/settings/retention",
        Guard::Role(Capability::SettingsManage),
    ),
    (
        "PUT",
        "/api/v1/settings/retention",
        Guard::Role(Capability::SettingsManage),
    ),
];

/// `/a/{x}/b/{y}` → `/a/{}/b/{}`, to compare table paths with route declarations.
pub fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// The (method, path shape) of every `.route(…)` in the API's route modules.
pub fn declared_routes() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src/routes");
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("api/src/routes exists") {
        let source = std::fs::read_to_string(entry.expect("dir entry").path()).expect("readable");
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call runs to its matching parenthesis.
            let (mut depth, mut end) = (1, 0);
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let call = &rest[..end];
            let path = call.split('"').nth(1).expect("route path literal");
            for method in ["get", "post", "put", "patch", "delete"] {
                let declared = call
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                if declared {
                    routes.push((method.to_uppercase(), shape(path)));
                }
            }
        }
    }
    routes
}
